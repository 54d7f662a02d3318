"""Inside-mesh labeller: known labels, libigl agreement, degenerate queries, errors, backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from labeller_helpers import (
    MESH_DIR,
    as_torch,
    box_points,
    degenerate_mix,
    holey_sphere,
    icosphere,
    load_mesh,
    near_surface_points,
    triangle_soup,
    unit_box,
)

from npkernels.inside_mesh import inside_mesh, inside_mesh_batch
from npkernels.inside_mesh import reference as ref

BACKENDS = ["extension", "reference"]


def _backend(request, name):
    if name == "extension":
        request.getfixturevalue("ext")  # skips when the extension cannot be built
    return name


# ---------------------------------------------------------------- analytic solids, known labels

@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_labels(request, backend):
    v, f = icosphere(3)
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    r_in = float(np.abs(np.einsum("ij,ij->i", normal / np.linalg.norm(normal, axis=1, keepdims=True),
                                  v[f[:, 0]])).min())  # distance of the closest face plane
    p = np.random.default_rng(0).uniform(-1.3, 1.3, size=(4000, 3))
    r = np.linalg.norm(p, axis=1)
    got = inside_mesh(v, f, p, backend=_backend(request, backend))
    assert got.dtype == np.bool_ and got.shape == (4000,)
    clear = (r < r_in) | (r > 1.0)
    np.testing.assert_array_equal(got[clear], r[clear] < r_in)


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_grid_including_surface_points(request, backend):
    """A grid-aligned box queried on its own grid: points on vertices, edges and faces included.

    The symbolic perturbation moves a query by (e, e^2, e^3), so a point is inside exactly when
    every coordinate lies in [0, 1): a known label for every grid point, on the surface too.
    """
    v, f = unit_box(3)
    g = np.arange(-4, 21) / 16.0
    p = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    got, w = inside_mesh(v, f, p, return_winding=True, backend=_backend(request, backend))
    expected = ((p >= 0) & (p < 1)).all(1)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(w, expected.astype(np.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torus_labels(request, backend):
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=48, minor_sections=24)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces, dtype=np.int64)
    p = np.random.default_rng(1).uniform(-1.4, 1.4, size=(4000, 3)) * np.array([1, 1, 0.3])
    tube = np.hypot(np.hypot(p[:, 0], p[:, 1]) - 1.0, p[:, 2])
    got = inside_mesh(torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(p), backend=_backend(request, backend))
    assert got.dtype == torch.bool
    clear = (tube < 0.29) | (tube > 0.31)  # the polygonal tube lies between these radii
    np.testing.assert_array_equal(got.numpy()[clear], tube[clear] < 0.29)
    assert got.numpy()[clear].any() and not got.numpy()[clear].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_parts_and_orientation(request, backend):
    """Two intersecting closed spheres: w = 2 in the overlap (inside); parity gives XOR; flipped faces w = -1."""
    v1, f1 = icosphere(2, center=(-0.4, 0, 0))
    v2, f2 = icosphere(2, center=(0.4, 0, 0))
    v, f = np.concatenate([v1, v2]), np.concatenate([f1, f2 + len(v1)])
    p = np.array([[0.0, 0, 0], [-1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.2], [3, 0, 0]])
    name = _backend(request, backend)
    inside, w = inside_mesh(v, f, p, return_winding=True, backend=name)
    np.testing.assert_array_equal(w, [2, 1, 1, 0, 0])
    np.testing.assert_array_equal(inside, [True, True, True, False, False])
    np.testing.assert_array_equal(inside_mesh(v, f, p, mode="parity", backend=name), [False, True, True, False, False])
    inside, w = inside_mesh(v, f[:, ::-1], p, return_winding=True, backend=name)
    np.testing.assert_array_equal(w, [-2, -1, -1, 0, 0])
    np.testing.assert_array_equal(inside, [True, True, True, False, False])


# ---------------------------------------------------------------- real meshes vs libigl

@pytest.mark.needs_shared
@pytest.mark.parametrize("name", ["human_smpl_template_male.obj", "bunny.obj", "chair_kenney_basic.obj",
                                  "bench_kenney.obj"])
def test_closed_meshes_match_libigl(ext, name):
    igl = pytest.importorskip("igl")
    v, f = load_mesh(name)
    p = np.concatenate([box_points(v, 15000, seed=2), near_surface_points(v, f, 15000, seed=3)])
    inside, w = inside_mesh(v, f, p, return_winding=True)
    w_igl = igl.winding_number(v, f, p)
    np.testing.assert_array_equal(inside, np.abs(w_igl) > 0.5)
    assert np.abs(w - w_igl).max() < 1e-6
    assert np.array_equal(w, np.round(w))  # closed: exact integers, no boundary term


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", ["hand_lowres_open.obj", "airplane_holes_open.obj"])
def test_meshes_with_holes_match_libigl(ext, name):
    igl = pytest.importorskip("igl")
    v, f = load_mesh(name)
    n = 4000 if name.startswith("airplane") else 10000
    p = np.concatenate([box_points(v, n, seed=4), near_surface_points(v, f, n, seed=5)])
    inside, w = inside_mesh(v, f, p, return_winding=True)
    w_igl = igl.winding_number(v, f, p)
    assert np.abs(w - w_igl).max() < 1e-6
    clear = np.abs(np.abs(w_igl) - 0.5) > 1e-6
    np.testing.assert_array_equal(inside[clear], np.abs(w_igl[clear]) > 0.5)


# ---------------------------------------------------------------- extension == reference

def _random_closed_mesh(rng, n_points: int):
    """Convex hull of random points with integer-ish coordinates (many coplanar/aligned cases)."""
    trimesh = pytest.importorskip("trimesh")
    hull = trimesh.convex.convex_hull(rng.integers(-4, 5, size=(n_points, 3)).astype(np.float64))
    return np.asarray(hull.vertices), np.asarray(hull.faces, dtype=np.int64)


def test_extension_matches_reference_random(ext):
    rng = np.random.default_rng(6)
    for trial in range(8):
        if trial % 2:
            v, f = _random_closed_mesh(rng, 30)
        else:  # open soup, with some degenerate faces
            v = rng.normal(size=(20, 3))
            f = rng.integers(0, 20, size=(25, 3))
        # grid points hit vertices, edges and faces of the integer hulls exactly
        p = np.concatenate([rng.integers(-5, 6, size=(600, 3)).astype(np.float64), rng.normal(size=(600, 3)) * 3])
        ie, we = inside_mesh(v, f, p, return_winding=True, backend="extension")
        ir, wr = inside_mesh(v, f, p, return_winding=True, backend="reference")
        if trial % 2:
            np.testing.assert_array_equal(we, wr)
            np.testing.assert_array_equal(ie, ir)
            np.testing.assert_array_equal(inside_mesh(v, f, p, mode="parity", backend="extension"), ie)
        else:
            assert np.abs(we - wr).max() < 1e-9
            clear = np.abs(np.abs(wr) - 0.5) > 1e-9
            np.testing.assert_array_equal(ie[clear], ir[clear])


def test_vertex_points_deterministic(ext):
    """Queries exactly on mesh vertices: the same label on every backend and call."""
    v, f = icosphere(2)
    v = v.astype(np.float32)
    p = np.concatenate([v, (v[f[:, 0]] + v[f[:, 1]]) / 2])
    got = inside_mesh(v, f, p, backend="extension")
    np.testing.assert_array_equal(got, inside_mesh(v, f, p, backend="reference"))
    np.testing.assert_array_equal(got, inside_mesh(v, f, p, backend="extension"))


@pytest.mark.parametrize("face_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(ext, dtype, face_dtype):
    v, f = icosphere(2)
    p = np.random.default_rng(7).uniform(-1.2, 1.2, size=(2000, 3))
    expected = inside_mesh(v, f, p)
    got = inside_mesh(v.astype(dtype), f.astype(face_dtype), p.astype(dtype))
    t = inside_mesh(*as_torch(v.astype(dtype), f.astype(face_dtype), p.astype(dtype)))
    assert t.dtype == torch.bool and t.device.type == "cpu"
    np.testing.assert_array_equal(got, expected)  # no random point lies within float32 rounding of the surface
    np.testing.assert_array_equal(t.numpy(), got)


def test_reference_chunking(monkeypatch):
    """Chunk boundaries in the reference (bounded memory) do not change the result."""
    v, f = icosphere(1)
    f = f[3:]  # open, so the boundary term is chunked too
    p = torch.from_numpy(np.random.default_rng(8).uniform(-1.2, 1.2, size=(500, 3)))
    full = ref.winding_reference(torch.from_numpy(v), torch.from_numpy(f), p)
    monkeypatch.setattr(ref, "_PAIR_BUDGET", 977)
    chunked = ref.winding_reference(torch.from_numpy(v), torch.from_numpy(f), p)
    assert torch.equal(full[0], chunked[0]) and torch.allclose(full[1], chunked[1], rtol=0, atol=1e-12)


def test_ten_million_points(ext):
    """10M points in one call (no per-point temporaries beyond the output)."""
    v, f = icosphere(2)
    p = torch.rand(10_000_000, 3, generator=torch.Generator().manual_seed(11)) * 2.6 - 1.3
    got = inside_mesh(torch.from_numpy(v), torch.from_numpy(f), p)
    r = p.double().norm(dim=1)
    clear = (r < 0.93) | (r > 1.0)  # the faces of this icosphere lie between radii 0.93 and 1
    assert got.shape == (10_000_000,) and torch.equal(got[clear], r[clear] < 0.93)


def test_batch_matches_single_calls(ext):
    v1, f1 = icosphere(2)
    v2, f2 = unit_box(1)
    rng = np.random.default_rng(9)
    pts = [torch.from_numpy(rng.uniform(-1.2, 1.2, size=(n, 3))) for n in (300, 0, 200)]
    meshes = [(v1, f1), (v2, f2), (v2, f2)]
    for backend in BACKENDS:
        out = inside_mesh_batch([torch.from_numpy(m[0]) for m in meshes], [torch.from_numpy(m[1]) for m in meshes],
                                pts, return_winding=True, backend=backend)
        for (v, f), p, (inside, w) in zip(meshes, pts, out):
            single = inside_mesh(torch.from_numpy(v), torch.from_numpy(f), p, return_winding=True, backend=backend)
            assert torch.equal(inside, single[0]) and torch.equal(w, single[1])
    assert inside_mesh_batch([], [], []) == []


# ---------------------------------------------------------------- input validation

@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_points(request, backend):
    v, f = icosphere(1)
    name = _backend(request, backend)
    got = inside_mesh(v, f, np.zeros((0, 3)), backend=name)
    assert isinstance(got, np.ndarray) and got.shape == (0,) and got.dtype == np.bool_
    inside, w = inside_mesh(*as_torch(v, f, np.zeros((0, 3))), return_winding=True, backend=name)
    assert inside.shape == (0,) and inside.dtype == torch.bool and w.dtype == torch.float64


def test_invalid_inputs():
    v, f = icosphere(1)
    p = np.zeros((4, 3))
    nan_p = p.copy()
    nan_p[2, 1] = np.nan
    inf_v = v.copy()
    inf_v[0, 0] = np.inf
    cases = [
        ((v, np.zeros((0, 3), np.int64), p), {}, "faces"),
        ((v, f, nan_p), {}, "points"),
        ((inf_v, f, p), {}, "vertices"),
        ((v, np.where(f == 0, len(v), f), p), {}, "faces"),
        ((v, np.where(f == 0, -1, f), p), {}, "faces"),
        ((v, f, p[:, :2]), {}, "points"),
        ((v[:, :2], f, p), {}, "vertices"),
        ((v, f[:, :2], p), {}, "faces"),
        ((v, f.astype(np.float64), p), {}, "faces"),
        ((v, f, p), {"mode": "odd"}, "mode"),
        ((v, f, p), {"mode": "parity", "return_winding": True}, "return_winding"),
        ((v, f, p), {"backend": "gpu"}, "backend"),
    ]
    for args, kwargs, word in cases:
        with pytest.raises(ValueError, match=word):
            inside_mesh(*args, **kwargs)


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_matches_cpu(ext):
    """One batch through the device build: closed meshes (identical labels and w), a single
    triangle, degenerate faces, and open meshes with many boundary edges (labels with and without
    return_winding, w to 1e-9); float32 and float64 points; parity mode."""
    if not ext.has_cuda():
        pytest.skip("extension built without CUDA")
    v1, f1 = icosphere(3)
    v2, f2 = unit_box(3)
    v3, f3 = degenerate_mix()
    v4, f4 = np.array([[0.0, 0, 0], [1, 0.2, 0.3], [0.1, 1, 0.7]]), np.array([[0, 1, 2]])
    v5, f5 = icosphere(2, center=(0.3, 0, 0))
    f5 = f5[5:]  # open mesh
    v6, f6 = holey_sphere()
    v7, f7 = triangle_soup()
    rng = np.random.default_rng(10)
    g = np.arange(-4, 21) / 16.0
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    meshes = [(v1, f1), (v2, f2), (v3, f3), (v4, f4), (v5, f5), (v6, f6), (v7, f7)]
    n_closed = 2
    pts = [rng.uniform(-1.3, 1.3, size=(20000, 3)), grid, grid, rng.uniform(-0.2, 1.2, size=(3000, 3))]
    pts += [rng.uniform(-1.3, 1.3, size=(n, 3)) for n in (5000, 20000, 20000)]
    for dtype in (torch.float32, torch.float64):
        cpu = inside_mesh_batch([torch.from_numpy(m[0]) for m in meshes], [torch.from_numpy(m[1]) for m in meshes],
                                [torch.from_numpy(p).to(dtype) for p in pts], return_winding=True)
        gpu = inside_mesh_batch([torch.from_numpy(m[0]).cuda() for m in meshes],
                                [torch.from_numpy(m[1]).cuda() for m in meshes],
                                [torch.from_numpy(p).to(dtype).cuda() for p in pts], return_winding=True)
        labels = inside_mesh_batch([torch.from_numpy(m[0]).cuda() for m in meshes],
                                   [torch.from_numpy(m[1]).cuda() for m in meshes],
                                   [torch.from_numpy(p).to(dtype).cuda() for p in pts])
        for i, ((ic, wc), (ig, wg), il) in enumerate(zip(cpu, gpu, labels)):
            assert ig.device.type == "cuda" and torch.equal(il, ig)
            if i < n_closed:  # closed: identical labels and winding numbers
                assert torch.equal(ic, ig.cpu()) and torch.equal(wc, wg.cpu())
            else:
                clear = (wc.abs() - 0.5).abs() > 1e-9
                assert torch.equal(ic[clear], ig.cpu()[clear])
                assert (wc - wg.cpu()).abs().max() < 1e-9
    parity_cpu = inside_mesh_batch([m[0] for m in meshes], [m[1] for m in meshes], pts, mode="parity")
    parity_gpu = inside_mesh_batch([torch.from_numpy(m[0]).cuda() for m in meshes],
                                   [torch.from_numpy(m[1]).cuda() for m in meshes],
                                   [torch.from_numpy(p).cuda() for p in pts], mode="parity")
    for pc, pg in zip(parity_cpu, parity_gpu):
        np.testing.assert_array_equal(pc, pg.cpu().numpy())


@pytest.mark.cuda
@pytest.mark.needs_shared
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_matches_cpu_on_shared_meshes(ext):
    """Every shared mesh, 1M points each (uniform in the padded box, plus points near the surface):
    the CUDA labeller's labels equal the CPU labeller's, and so do the winding numbers (to 1e-9 where
    an open mesh makes them fractional)."""
    if not ext.has_cuda():
        pytest.skip("extension built without CUDA")
    names = sorted(p.name for p in MESH_DIR.glob("*.obj"))
    if not names:
        pytest.skip(f"shared test meshes not found at {MESH_DIR}")
    meshes = [load_mesh(name) for name in names]
    points = [np.concatenate([box_points(v, 900_000, seed=i), near_surface_points(v, f, 100_000, seed=i)])
              for i, (v, f) in enumerate(meshes)]
    cpu = inside_mesh_batch([m[0] for m in meshes], [m[1] for m in meshes], points, return_winding=True)
    gpu = inside_mesh_batch([torch.from_numpy(m[0]).cuda() for m in meshes],
                            [torch.from_numpy(m[1]).cuda() for m in meshes],
                            [torch.from_numpy(p).cuda() for p in points], return_winding=True)
    for name, (ic, wc), (ig, wg) in zip(names, cpu, gpu):
        assert ig.device.type == "cuda"
        labels = ig.cpu().numpy()
        assert np.array_equal(labels, ic), f"{name}: {int((labels != ic).sum())} labels differ"
        assert np.abs(wg.cpu().numpy() - wc).max() <= 1e-9, name


def test_env_backend_reference_forces_the_reference_labeller(monkeypatch):
    """NPKERNELS_BACKEND=reference applies to the labeller too (one dispatch vocabulary)."""
    import importlib

    labeller = importlib.import_module("npkernels.inside_mesh")  # the module (the package attribute is the op)

    calls = []
    real = labeller.winding_reference
    monkeypatch.setattr(labeller, "winding_reference", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(labeller, "get_ext", lambda: pytest.fail("the extension was used"))
    monkeypatch.setenv("NPKERNELS_BACKEND", "reference")
    v, f = unit_box(1)
    got = inside_mesh(v, f, np.array([[0.5, 0.5, 0.5], [2.0, 0.5, 0.5]]))
    assert got.tolist() == [True, False] and calls == [1]
    with pytest.raises(ValueError, match="backend for inside_mesh must be one of"):
        inside_mesh(v, f, np.zeros((1, 3)), backend="triton")
