"""Sphere sampling, sphere meshes and area-weighted surface sampling."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def sample_sphere(shape: tuple[int, ...], radius: float, *, device=None, dtype=torch.float32,
                  generator: torch.Generator | None = None) -> Tensor:
    """Points uniform on the sphere of ``radius``: shape + (3,) (normalised Gaussians, as the authors)."""
    z = torch.randn(*shape, 3, device=device, dtype=dtype, generator=generator)
    return z * (radius / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1e-12))


def unit_icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (10 * 4^k + 2, 3) on the unit sphere and outward faces of a k-times subdivided icosahedron."""
    g = (1 + 5**0.5) / 2
    v = np.array(
        [
            [-1, g, 0],
            [1, g, 0],
            [-1, -g, 0],
            [1, -g, 0],
            [0, -1, g],
            [0, 1, g],
            [0, -1, -g],
            [0, 1, -g],
            [g, 0, -1],
            [g, 0, 1],
            [-g, 0, -1],
            [-g, 0, 1],
        ],
        dtype=np.float64,
    )
    f = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ],
        dtype=np.int64,
    )
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = len(v) + inverse.reshape(3, -1)  # midpoint vertex of edges (a,b), (b,c), (c,a) per face
        v = np.concatenate([v, (v[unique[:, 0]] + v[unique[:, 1]]) / 2])
        a, b, c = f.T
        ab, bc, ca = mid
        f = np.concatenate(
            [np.stack(x, axis=1) for x in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))]
        )
    return v / np.linalg.norm(v, axis=1, keepdims=True), f



def merged_vertex_ids(vertices: np.ndarray) -> np.ndarray:
    """(V,) int64: the same id for coincident vertices (exact equality), ids 0..U-1."""
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    order = np.lexsort(v.T[::-1])
    first = np.ones(len(v), dtype=bool)
    first[1:] = (v[order[1:]] != v[order[:-1]]).any(1)
    ids = np.empty(len(v), dtype=np.int64)
    ids[order] = np.cumsum(first) - 1
    return ids


def mesh_components(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Connected component (F,) int of every face, faces joined by shared (coincident) vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = merged_vertex_ids(vertices)
    f = ids[faces]
    n = int(ids.max()) + 1 if len(ids) else 0
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1][f[:, 0]]


def orient_components(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, int]:
    """``faces`` (F, 3) with every connected component whose signed volume is negative reversed, so that
    normals point outward; returns (faces, number of components reversed).

    The signed volume is taken about each component's centroid: exact for closed components, and the
    sign of the enclosed side for nearly closed (open) ones.
    """
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return faces, 0
    comp = mesh_components(vertices, faces)
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    centre = np.stack([np.bincount(comp, tri[:, :, k].mean(1)) / np.bincount(comp) for k in range(3)], 1)[comp]
    a, b, c = (tri[:, k] - centre for k in range(3))
    volume = np.bincount(comp, np.einsum("ij,ij->i", a, np.cross(b, c)))
    flip = (volume < 0)[comp]
    if flip.any():
        faces = faces.copy()
        faces[flip] = faces[flip][:, ::-1]
    return faces, int((volume < 0).sum())


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces`` (F, 3) oriented so that every connected component's normals point outward."""
    return orient_components(vertices, faces)[0]


def icosphere(min_vertices: int, radius: float, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Unit icosphere scaled to ``radius`` with at least ``min_vertices`` vertices (10 * 4^k + 2).

    Returns vertices (V, 3) and outward-oriented faces (F, 3) int64.
    """
    k = 0
    while 10 * 4 ** k + 2 < min_vertices:
        k += 1
    v, f = unit_icosphere(k)
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
    if not bool(torch.isfinite(areas).all() and areas.sum() > 0):
        raise ValueError("cannot sample the surface: the mesh has zero total area or non-finite vertices")
    face = torch.multinomial(areas, n, replacement=True, generator=generator)
    u = torch.rand(n, 2, dtype=vertices.dtype, device=vertices.device, generator=generator)
    flip = u.sum(-1) > 1
    u = torch.where(flip[:, None], 1 - u, u)
    tri = vertices[faces[face]]
    points = tri[:, 0] + u[:, :1] * (tri[:, 1] - tri[:, 0]) + u[:, 1:] * (tri[:, 2] - tri[:, 0])
    return points, normals[face], face
