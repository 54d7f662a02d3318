"""Meshes and point sets for the inside-mesh labeller tests, in NumPy only (the GPU machines have
no trimesh): analytic solids, the shared real meshes from ``<repo>/../shared/data/meshes`` (or
``<repo>/shared/data/meshes``, where a device run carries them; skipping when absent), and sampled
query points."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

_REPO = Path(__file__).resolve().parents[2]
MESH_DIR = next((d for d in (_REPO.parent / "shared" / "data" / "meshes", _REPO / "shared" / "data" / "meshes")
                 if d.is_dir()), _REPO.parent / "shared" / "data" / "meshes")


def subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every face into four at its edge midpoints (shared midpoints merged)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    mid = len(vertices) + inverse.reshape(3, -1)  # midpoint index of edges 01, 12, 20 per face
    v = np.concatenate([vertices, vertices[unique].mean(1)])
    a, b, c = faces.T
    f = np.stack([np.stack([a, mid[0], mid[2]], 1), np.stack([mid[0], b, mid[1]], 1),
                  np.stack([mid[2], mid[1], c], 1), np.stack([mid[0], mid[1], mid[2]], 1)], 1).reshape(-1, 3)
    return v, f


def icosphere(subdivisions: int = 2, center=(0.0, 0.0, 0.0), radius: float = 1.0):
    """Closed outward-oriented icosphere: (vertices (V,3) float64, faces (F,3) int64)."""
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
                  [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    for _ in range(subdivisions):
        v, f = subdivide(v, f)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return v * radius + np.asarray(center, dtype=np.float64), f


def unit_box(subdivisions: int = 3):
    """Closed box [0, 1]^3, outward faces, vertices on a 1 / 2^subdivisions grid."""
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                  [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int64)
    for _ in range(subdivisions):
        v, f = subdivide(v, f)
    return v, f


def load_mesh(name: str):
    """(vertices (V,3) float64, faces (F,3) int64) of a shared OBJ mesh; skips when absent."""
    path = MESH_DIR / name
    if not path.is_file():
        pytest.skip(f"shared test meshes not found at {MESH_DIR} (needs ../shared/data/meshes next to the repo)")
    vertices, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            vertices.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            idx = [int(p.split("/")[0]) for p in parts[1:]]
            idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]  # fan triangulation
    return np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def box_points(vertices: np.ndarray, n: int, seed: int, pad: float = 0.1) -> np.ndarray:
    """(n, 3) uniform points in the mesh's bounding box padded by ``pad`` of its extent per side."""
    lo, hi = vertices.min(0), vertices.max(0)
    margin = pad * (hi - lo)
    return np.random.default_rng(seed).uniform(lo - margin, hi + margin, size=(n, 3))


def near_surface_points(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int,
                        sigma: float = 0.01) -> np.ndarray:
    """(n, 3) area-weighted surface samples moved along the face normal by N(0, sigma * largest extent)."""
    rng = np.random.default_rng(seed)
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    area = np.linalg.norm(normal, axis=1)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random((2, n, 1))
    flip = (r1 + r2) > 1
    r1, r2 = np.where(flip, 1 - r1, r1), np.where(flip, 1 - r2, r2)
    samples = a[face] + r1 * (b[face] - a[face]) + r2 * (c[face] - a[face])
    unit = normal[face] / np.maximum(area[face], 1e-300)[:, None]
    scale = sigma * float((vertices.max(0) - vertices.min(0)).max())
    return samples + rng.normal(0.0, scale, size=(n, 1)) * unit


def as_torch(*arrays):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def needle(n: int = 4000):
    """An open thin tube 1e4 long and 1e-2 wide with about n faces: the longest grid shapes."""
    k = n // 2
    t = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    rings = [np.stack([np.full(8, x), 1e-2 * np.cos(t), 1e-2 * np.sin(t)], 1) for x in np.linspace(0, 1e4, k // 8 + 1)]
    v = np.concatenate(rings)
    f = []
    for r in range(len(rings) - 1):
        for j in range(8):
            a, b, c, d = 8 * r + j, 8 * r + (j + 1) % 8, 8 * (r + 1) + j, 8 * (r + 1) + (j + 1) % 8
            f += [[a, b, d], [a, d, c]]
    return v, np.asarray(f, dtype=np.int64)


def flat_sheet(n: int = 20):
    """An axis-aligned open square sheet z = 0.5 on an n x n grid (zero extent along z)."""
    g = np.linspace(0, 1, n + 1)
    x, y = np.meshgrid(g, g, indexing="ij")
    v = np.stack([x.ravel(), y.ravel(), np.full(x.size, 0.5)], 1)
    i = np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]
    f = np.concatenate([np.stack([i, i + n + 1, i + n + 2], -1).reshape(-1, 3),
                        np.stack([i, i + n + 2, i + 1], -1).reshape(-1, 3)])
    return v, f.astype(np.int64)


def degenerate_mix():
    """A box with repeated-index, collinear and duplicated faces added (listed or not per axis)."""
    v, f = unit_box(2)
    extra = np.array([[0, 0, 1], [3, 3, 3], [0, 1, 1]], dtype=np.int64)
    line = np.array([[2.0, 2.0, 2.0], [3.0, 3.0, 3.0], [4.0, 4.0, 4.0]])  # collinear
    return np.concatenate([v, line]), np.concatenate([f, extra, len(v) + np.array([[0, 1, 2]]), f[:5]])


def holey_sphere(fraction: float = 0.1, seed: int = 0):
    """Icosphere (5,120 faces) with a random fraction of its faces removed: many small holes."""
    v, f = icosphere(4)
    keep = np.random.default_rng(seed).random(len(f)) >= fraction
    return v, f[keep]


def triangle_soup(n: int = 600, seed: int = 1):
    """n small random triangles, unconnected: every edge is a boundary edge."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1, 1, size=(n, 1, 3))
    v = (centres + 0.08 * rng.normal(size=(n, 3, 3))).reshape(-1, 3)
    return v, np.arange(3 * n, dtype=np.int64).reshape(n, 3)


def doubled_open_hemisphere():
    """An open hemisphere listed twice (boundary multiplicity 2) plus one flipped face."""
    v, f = icosphere(3)
    f = f[v[f].mean(1)[:, 2] < 0.1]
    return v, np.concatenate([f, f, f[:1, ::-1]])
