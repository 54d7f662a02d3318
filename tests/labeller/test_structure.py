"""The labeller's acceleration structure (``npkernels._C.inside_mesh_structure``): the grid against
a brute-force conservative rasterisation, the CPU build against the device's count / scan / fill /
sort algorithm run on the host, and the boundary-edge hierarchy's invariants and remainder bound."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from labeller_helpers import (
    degenerate_mix,
    doubled_open_hemisphere,
    flat_sheet,
    holey_sphere,
    icosphere,
    load_mesh,
    needle,
    triangle_soup,
    unit_box,
)

from npkernels.inside_mesh import reference as ref

LATTICE = 1 << 30
MAX_LOG2_SIDE = 11


def _lattice(v: np.ndarray) -> np.ndarray:
    origin, scale = ref.lattice_frame(torch.from_numpy(v))
    return ref.quantize(torch.from_numpy(v), origin, scale).clamp(0, LATTICE).numpy()


def _clamp_log2(x: float) -> int:
    if not x > 1.0:
        return 0
    mant, e = math.frexp(x)
    return min(e if mant >= 0.70710678118654757 else e - 1, MAX_LOG2_SIDE)


def _grid_shape(n_listed: int, eu: float, ev: float) -> tuple[int, int]:
    n_target = max(1.0, n_listed / 4.0)
    lg_u = _clamp_log2(math.sqrt(n_target * eu / ev) if eu > 0 and ev > 0 else (n_target if eu > 0 else 1.0))
    return lg_u, _clamp_log2(n_target / 2.0 ** lg_u)


def _brute_force_cells(lat: np.ndarray, faces: np.ndarray, a: int, lg_u: int, lg_v: int):
    """(cell * F + face) codes of every (cell, face) whose closed lattice rectangle meets the closed
    projected face, by testing all four rectangle corners against each edge; and the listed mask."""
    iu, iv = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
    u, v = lat[faces][..., iu].astype(np.int64), lat[faces][..., iv].astype(np.int64)
    d = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (v[:, 1] - v[:, 0]) * (u[:, 2] - u[:, 0])
    listed = np.nonzero(d != 0)[0]
    su, sv = 1 << lg_u, 1 << lg_v
    shift_u, shift_v = 30 - lg_u, 30 - lg_v
    cu0, cu1 = np.minimum(u[listed].min(1) >> shift_u, su - 1), np.minimum(u[listed].max(1) >> shift_u, su - 1)
    cv0, cv1 = np.minimum(v[listed].min(1) >> shift_v, sv - 1), np.minimum(v[listed].max(1) >> shift_v, sv - 1)
    nu, nv = cu1 - cu0 + 1, cv1 - cv0 + 1
    count = nu * nv
    face = np.repeat(listed, count)
    k = np.repeat(np.arange(len(listed)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    cu, cv = cu0[k] + local % nu[k], cv0[k] + local // nu[k]
    ulo, vlo = cu << shift_u, cv << shift_v
    uhi = np.where(cu == su - 1, LATTICE, ((cu + 1) << shift_u) - 1)
    vhi = np.where(cv == sv - 1, LATTICE, ((cv + 1) << shift_v) - 1)
    sd = np.sign(d[face])
    meets = np.ones(len(face), dtype=bool)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        pu, pv, qu, qv = u[face, i], v[face, i], u[face, j], v[face, j]
        best = np.full(len(face), np.iinfo(np.int64).min)
        for xu, xv in ((ulo, vlo), (ulo, vhi), (uhi, vlo), (uhi, vhi)):
            best = np.maximum(best, sd * ((qu - pu) * (xv - pv) - (qv - pv) * (xu - pu)))
        meets &= best >= 0
    cell = cv * su + cu
    return np.sort(cell[meets] * len(faces) + face[meets]), listed


def _cell_contents(s: dict, a: int, n_faces: int):
    """(cell * F + face) codes of the built grid of axis a, sorted; checks the lists' key order."""
    side_u, side_v = s["grid"][a, 2:].tolist()
    base = int(s["cell_offset"][a])
    offsets = s["cells"][base:base + side_u * side_v + 1].numpy()
    keys = s["keys"][offsets[0]:offsets[-1]].numpy()
    cell = np.repeat(np.arange(side_u * side_v), np.diff(offsets))
    same_cell = cell[1:] == cell[:-1]
    assert (np.diff(keys)[same_cell] > 0).all(), "cell lists not in ascending key order"
    unused = s["cells"][base + side_u * side_v:base + int(s["cell_offset"][1] - s["cell_offset"][0])]
    assert (unused == offsets[-1]).all(), "slots past the grid must be empty"
    return np.sort(cell * n_faces + (keys & 0xFFFFFFFF)), keys


SYNTHETIC = {
    "single_triangle_flat": lambda: (np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]])),
    "single_triangle": lambda: (np.array([[0.0, 0, 0], [1, 0.2, 0.3], [0.1, 1, 0.7]]), np.array([[0, 1, 2]])),
    "box_on_cell_boundaries": lambda: unit_box(3),
    "flat_sheet": flat_sheet,
    "degenerate_faces": degenerate_mix,
    "huge_coordinates": lambda: (icosphere(2)[0] * 1e30 + 3e31, icosphere(2)[1]),
    "tiny_coordinates": lambda: (icosphere(2)[0] * 1e-30, icosphere(2)[1]),
    "far_from_origin": lambda: (icosphere(2)[0] + 1e12, icosphere(2)[1]),
    "needle": needle,
}
SHARED = ["human_smpl_template_male.obj", "chair_kenney_basic.obj", "bench_kenney.obj", "table_kenney_cross.obj",
          "car_kenney_suv.obj", "airplane_holes_open.obj"]


def _case(name: str):
    return SYNTHETIC[name]() if name in SYNTHETIC else load_mesh(name)


CASES = list(SYNTHETIC) + [pytest.param(n, marks=pytest.mark.needs_shared) for n in SHARED]


@pytest.mark.parametrize("name", CASES)
def test_grid_matches_brute_force_rasterisation(ext, name):
    """Every axis' cell lists hold exactly the faces an exhaustive conservative rasterisation finds
    (degenerate projections never listed), in key order, with the grid shape of the formula."""
    v, f = _case(name)
    s = ext.inside_mesh_structure(torch.from_numpy(v), torch.from_numpy(f))
    lat = _lattice(v)
    extent = v.max(0) - v.min(0)
    for a in range(3):
        iu, iv = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
        expected, listed = _brute_force_cells(lat, f, a, 0, 0)  # listed faces do not depend on the grid
        lg_u, lg_v = _grid_shape(len(listed), float(extent[iu]), float(extent[iv]))
        assert s["grid"][a].tolist() == [30 - lg_u, 30 - lg_v, 1 << lg_u, 1 << lg_v]
        expected, _ = _brute_force_cells(lat, f, a, lg_u, lg_v)
        got, keys = _cell_contents(s, a, len(f))
        np.testing.assert_array_equal(got, expected)
        faces = keys & 0xFFFFFFFF
        np.testing.assert_array_equal(LATTICE - (keys >> 32), lat[f[faces]][..., a].max(1))


@pytest.mark.parametrize("name", CASES)
def test_three_pass_build_equals_cpu_build(ext, name):
    """The device's algorithm (atomic count, scan, atomic fill, per-cell sort) run on the host
    builds exactly the structure of the CPU build (lists in the same order)."""
    v, f = _case(name)
    cpu = ext.inside_mesh_structure(torch.from_numpy(v), torch.from_numpy(f), three_pass=False)
    device_algorithm = ext.inside_mesh_structure(torch.from_numpy(v), torch.from_numpy(f), three_pass=True)
    assert cpu.keys() == device_algorithm.keys()
    for key in cpu:
        assert torch.equal(cpu[key], device_algorithm[key]), key


# ---------------------------------------------------------------- boundary-edge hierarchy

OPEN_SYNTHETIC = {"holey_sphere": holey_sphere, "soup": triangle_soup, "doubled_open": doubled_open_hemisphere,
                  "flat_sheet": flat_sheet}


def _walk_endpoints(s: dict):
    """Lattice tail and head (V, 3 int) and world tail and head of every half-edge of the walk."""
    walk = s["walk"].numpy()
    edge, back = walk >> 1, (walk & 1).astype(bool)
    lp, lq = s["bedge_lattice"][:, :3].numpy()[edge], s["bedge_lattice"][:, 3:].numpy()[edge]
    wp, wq = s["bedge_world"][:, :3].numpy()[edge], s["bedge_world"][:, 3:].numpy()[edge]
    b = back[:, None]
    return np.where(b, lq, lp), np.where(b, lp, lq), np.where(b, wq, wp), np.where(b, wp, wq)


def _node_items(links: np.ndarray):
    """Walk indices of every node's half-edges (left child's, then right child's) and its depth."""
    n = len(links)
    items, depth = [None] * n, np.zeros(n, np.int64)
    for i in range(n - 1, -1, -1):  # pre-order: children come after their parent
        first, count, left, right, _ = links[i]
        if left < 0:
            items[i] = np.arange(first, first + count)
        else:
            assert left > i and right > i
            items[i] = np.concatenate([items[left], items[right]])
    for i in range(n):
        if links[i, 2] >= 0:
            depth[links[i, 2]] = depth[links[i, 3]] = depth[i] + 1
    return items, depth


@pytest.mark.parametrize("name", list(OPEN_SYNTHETIC) + [pytest.param(n, marks=pytest.mark.needs_shared) for n in
                                                         ("airplane_holes_open.obj", "demosthenes_bust_open.obj",
                                                          "car_kenney_sedan.obj")])
def test_boundary_tree_invariants(ext, name):
    """Half-edges: each boundary edge |k| times along sign(k), leaves partitioning the walk. Every
    node: a box holding its half-edges, a run that the chord e -> s closes into a cycle (the
    premise of the remainder bound), depth within the traversal stack."""
    v, f = OPEN_SYNTHETIC[name]() if name in OPEN_SYNTHETIC else load_mesh(name)
    s = ext.inside_mesh_structure(torch.from_numpy(v), torch.from_numpy(f))
    k, walk, links = s["bedge_k"].numpy(), s["walk"].numpy(), s["node_links"].numpy()
    geometry = s["node_geometry"].numpy()
    assert len(k) > 0 and (k != 0).all()
    np.testing.assert_array_equal(np.bincount(walk >> 1, minlength=len(k)), np.abs(k))
    np.testing.assert_array_equal(walk & 1, (k[walk >> 1] < 0).astype(walk.dtype))
    leaves = links[links[:, 2] < 0]
    covered = np.zeros(len(walk), np.int64)
    for first, count, *_ in leaves:
        covered[first:first + count] += 1
    assert (covered == 1).all()
    items, depth = _node_items(links)
    assert depth.max() + 1 <= 64
    lt, lh, wt, wh = _walk_endpoints(s)
    for i in range(len(links)):
        run = items[i]
        ends = np.concatenate([wt[run], wh[run]])
        assert (geometry[i, 0:3] <= ends.min(0)).all() and (geometry[i, 3:6] >= ends.max(0)).all()
        assert geometry[i, 12] >= 0
        flow = {}
        for t, h in zip(map(tuple, lt[run]), map(tuple, lh[run])):
            flow[t] = flow.get(t, 0) + 1
            flow[h] = flow.get(h, 0) - 1
        if links[i, 4]:  # open chain: out of s, into e
            assert np.array_equal(geometry[i, 6:9], wt[run[0]]) and np.array_equal(geometry[i, 9:12], wh[run[-1]])
            assert {key: val for key, val in flow.items() if val} == {tuple(lt[run[0]]): 1, tuple(lh[run[-1]]): -1}
        else:
            assert not any(flow.values())


def _half_angle(P, Q, p, a):
    """half_solid_angle with the floating-point sign: (..., 3) end points, (N, 1, 3) points."""
    iu, iv = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
    hand = -1 if a == 1 else 1
    x, y = P - p, Q - p
    nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    cross = x[..., iu] * y[..., iv] - x[..., iv] * y[..., iu]
    den = nx * ny - ny * x[..., a] - nx * y[..., a] + (x * y).sum(-1)
    return np.arctan2(-hand * cross, den)


@pytest.mark.parametrize("name", list(OPEN_SYNTHETIC) + [pytest.param(n, marks=pytest.mark.needs_shared) for n in
                                                         ("airplane_holes_open.obj", "hand_lowres_open.obj")])
def test_boundary_tree_remainder_bound(ext, name):
    """For every node and point whose +a ray (widened to the cone of slope 1/64) misses the node's
    box, the node's half-edge terms differ from its chord's term by at most area / (2 d^2)."""
    v, f = OPEN_SYNTHETIC[name]() if name in OPEN_SYNTHETIC else load_mesh(name)
    s = ext.inside_mesh_structure(torch.from_numpy(v), torch.from_numpy(f))
    links, geometry = s["node_links"].numpy(), s["node_geometry"].numpy()
    items, _ = _node_items(links)
    _, _, wt, wh = _walk_endpoints(s)
    lo, hi = v.min(0), v.max(0)
    rng = np.random.default_rng(2)
    points = rng.uniform(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), size=(300, 3))
    checked = 0
    for i in range(len(links)):
        box_lo, box_hi, area = geometry[i, 0:3], geometry[i, 3:6], geometry[i, 12]
        gap = np.maximum(np.maximum(box_lo - points, points - box_hi), 0.0)
        d2 = (gap ** 2).sum(1)
        run = items[i]
        for a in range(3):
            reach = box_hi[a] - points[:, a]
            side2 = d2 - gap[:, a] ** 2
            far = (reach < 0) | (side2 > reach * reach / 64 ** 2)
            if not far.any():
                continue
            p = points[far][:, None, :]
            terms = _half_angle(wt[run][None], wh[run][None], p, a).sum(1)
            chord = _half_angle(geometry[i, 6:9], geometry[i, 9:12], p[:, 0], a) if links[i, 4] else 0.0
            bound = area / (2 * d2[far])
            assert (np.abs(terms - chord) <= bound * (1 + 1e-9) + 1e-12).all(), (i, a)
            checked += int(far.sum())
    assert checked > 0
