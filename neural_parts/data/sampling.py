"""Point sampling: surface samples by area, uniform volume samples in a box, the "equal" loader sampler.

Units are those of the (normalised) mesh; boxes are (2, 3) arrays
``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``.
"""

from __future__ import annotations

import numpy as np
import torch

QMAX = 65535  # volume coordinates are stored as uint16 steps of the box


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals (F, 3) float64 of triangles; degenerate faces get (0, 0, 0)."""
    from ..geometry import face_normals_areas

    v = torch.as_tensor(np.asarray(vertices, dtype=np.float64))
    return face_normals_areas(v, torch.as_tensor(np.asarray(faces, dtype=np.int64)))[0].numpy()


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator):
    """Sample ``n`` points uniformly by area (``geometry.sample_triangles``, seeded from ``rng``).

    Returns ``(points (n, 3) float64, normals (n, 3) float64 unit face normals, face_ids (n,) int64)``,
    sorted by face id (spatially coherent, so the stored arrays compress well; loaders draw random subsets).
    """
    from ..geometry import sample_triangles

    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    v = torch.as_tensor(np.asarray(vertices, dtype=np.float64))
    points, normals, face_ids = sample_triangles(v, torch.as_tensor(np.asarray(faces, dtype=np.int64)), n, generator)
    order = torch.argsort(face_ids, stable=True)
    return points[order].numpy(), normals[order].numpy(), face_ids[order].numpy()


def morton_order(q: np.ndarray) -> np.ndarray:
    """Argsort of uint16 grid coordinates (N, 3) along a 30-bit Morton (Z-order) curve."""

    def spread(x):
        x = (x.astype(np.uint64) >> np.uint64(6)) & np.uint64(0x3FF)  # top 10 bits per axis
        out = np.zeros_like(x)
        for b in range(10):
            out |= ((x >> np.uint64(b)) & np.uint64(1)) << np.uint64(3 * b)
        return out

    code = spread(q[:, 0]) | (spread(q[:, 1]) << np.uint64(1)) | (spread(q[:, 2]) << np.uint64(2))
    return np.argsort(code, kind="stable")


def sample_volume(box: np.ndarray, n: int, rng: np.random.Generator):
    """Uniform points in ``box``, quantised first: returns ``(q (n, 3) uint16, points (n, 3) float32)``.

    ``points`` are the dequantised coordinates (what the file stores), in Morton order; label those.
    """
    q = rng.integers(0, QMAX + 1, size=(n, 3), dtype=np.uint16)
    q = q[morton_order(q)]
    return q, dequantise(q, box)


def quantise(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Points (N, 3) inside ``box`` -> uint16 grid coordinates (N, 3); outside points raise ValueError."""
    box = np.asarray(box, dtype=np.float64)
    t = (np.asarray(points, dtype=np.float64) - box[0]) / (box[1] - box[0])
    if (t < -1e-6).any() or (t > 1 + 1e-6).any():
        raise ValueError(f"volume points lie outside the box {box.tolist()}")
    return np.rint(np.clip(t, 0, 1) * QMAX).astype(np.uint16)


def dequantise(q: np.ndarray, box: np.ndarray) -> np.ndarray:
    """uint16 grid coordinates (N, 3) -> float32 points (N, 3); error vs the source <= extent / 131070."""
    box = np.asarray(box, dtype=np.float64)
    step = ((box[1] - box[0]) / QMAX).astype(np.float32)
    return q.astype(np.float32) * step + box[0].astype(np.float32)  # float32: fast, same on write/read


def draw_equal(labels: np.ndarray, k: int, rng: np.random.Generator):
    """Draw ``k`` indices (with replacement) by the authors' "equal" scheme for boolean ``labels`` (N,).

    Half the draws are inside points: p_i = 1/(2 n_in) inside, 1/(2 n_out) outside; weight w = 1/(N p_i),
    so E[w] = 1 and E[w f] is the uniform-volume mean of f. Returns ``(idx (k,), weights (k,), ok)``; ``ok``
    is False (uniform draws, w = 1) when every point is inside or every point is outside.
    """
    labels = np.asarray(labels, dtype=bool)
    n = labels.size
    inside = np.flatnonzero(labels)
    outside = np.flatnonzero(~labels)
    if len(inside) == 0 or len(outside) == 0:
        return rng.integers(0, n, size=k), np.ones(k), False
    # Each draw picks the inside set with probability 1/2, then a uniform member: p_i = 1/(2 n_in).
    from_inside = rng.random(k) < 0.5
    idx = np.where(
        from_inside,
        inside[rng.integers(0, len(inside), size=k)],
        outside[rng.integers(0, len(outside), size=k)],
    )
    w = np.where(from_inside, 2.0 * len(inside) / n, 2.0 * len(outside) / n)
    return idx, w, True
