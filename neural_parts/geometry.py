"""Sphere sampling, sphere meshes and area-weighted surface sampling."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor


def sample_sphere(shape: tuple[int, ...], radius: float, *, device=None, dtype=torch.float32,
                  generator: torch.Generator | None = None) -> Tensor:
    """Points uniform on the sphere of ``radius``: shape + (3,) (normalised Gaussians, as the authors)."""
    z = torch.randn(*shape, 3, device=device, dtype=dtype, generator=generator)
    return z * (radius / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1e-12))


@functools.lru_cache(maxsize=8)
def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def icosphere(min_vertices: int, radius: float, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Unit icosphere scaled to ``radius`` with at least ``min_vertices`` vertices (10 * 4^k + 2).

    Returns vertices (V, 3) and outward-oriented faces (F, 3) int64.
    """
    k = 0
    while 10 * 4 ** k + 2 < min_vertices:
        k += 1
    v, f = _icosphere(k)
    return (torch.as_tensor(v * radius, dtype=dtype, device=device),
            torch.as_tensor(f, device=device))


def face_normals_areas(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Unit normals (..., F, 3) and areas (..., F) of triangles of vertices (..., V, 3)."""
    tri = vertices[..., faces, :]
    cross = torch.linalg.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    norm = torch.linalg.vector_norm(cross, dim=-1)
    return cross / norm.clamp_min(1e-20).unsqueeze(-1), 0.5 * norm


def sample_triangles(vertices: Tensor, faces: Tensor, n: int, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Sample n points uniformly by area on a mesh (V, 3), (F, 3).

    Returns points (n, 3), their face normals (n, 3) and face indices (n,).
    """
    normals, areas = face_normals_areas(vertices, faces)
    if not bool(areas.sum() > 0):
        raise ValueError("cannot sample a mesh of zero area")
    face = torch.multinomial(areas, n, replacement=True, generator=generator)
    u = torch.rand(n, 2, dtype=vertices.dtype, device=vertices.device, generator=generator)
    flip = u.sum(-1) > 1
    u = torch.where(flip[:, None], 1 - u, u)
    tri = vertices[faces[face]]
    points = tri[:, 0] + u[:, :1] * (tri[:, 1] - tri[:, 0]) + u[:, 1:] * (tri[:, 2] - tri[:, 0])
    return points, normals[face], face
