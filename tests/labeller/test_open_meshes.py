"""Open meshes: the labels decided by the boundary-edge hierarchy (csrc/inside_mesh.h,
boundary_decide) equal those of the full boundary sum (the return_winding path, the previous
implementation), on the shared open meshes and on synthetic ones with many boundary edges or many
points where |w| is close to 0.5."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from labeller_helpers import (
    box_points,
    doubled_open_hemisphere,
    flat_sheet,
    holey_sphere,
    icosphere,
    load_mesh,
    near_surface_points,
    triangle_soup,
)

from npkernels.inside_mesh import inside_mesh

OPEN_SHARED = ["airplane_holes_open.obj", "demosthenes_bust_open.obj", "hand_lowres_open.obj", "car_kenney_race.obj",
               "car_kenney_sedan.obj", "car_kenney_suv.obj", "table_kenney_cross.obj"]


def _assert_fast_equals_full(v, f, p) -> np.ndarray:
    """Labels without and with return_winding (the full sum) agree; returns w."""
    fast = inside_mesh(v, f, p, backend="extension")
    full, w = inside_mesh(v, f, p, return_winding=True, backend="extension")
    np.testing.assert_array_equal(full, np.abs(w) > 0.5)
    wrong = np.nonzero(fast != full)[0]
    assert wrong.size == 0, f"{wrong.size} of {len(p)} labels differ from the full sum, w = {w[wrong[:5]]}"
    return w


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", OPEN_SHARED)
def test_shared_open_meshes_200k_points(ext, name):
    v, f = load_mesh(name)
    p = np.concatenate([box_points(v, 100_000, seed=12), near_surface_points(v, f, 100_000, seed=13)])
    w = _assert_fast_equals_full(v, f, p)
    assert not np.array_equal(w, np.round(w))  # the boundary term was there to decide


def _bowl():
    """Open hemisphere (a bowl): the level set |w| = 0.5 runs through the box of the points."""
    v, f = icosphere(3)
    return v, f[v[f].mean(1)[:, 2] < 0.0]


def _slab_points(n: int, seed: int) -> np.ndarray:
    """Points within 1e-3 of the flat sheet z = 0.5 over [0, 1]^2: |w| just below 0.5."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-0.1, 1.1, n), rng.uniform(-0.1, 1.1, n), 0.5 + rng.uniform(-1e-3, 1e-3, n)], 1)


@pytest.mark.parametrize("name, mesh, n", [("holey_sphere", holey_sphere, 50_000), ("soup", triangle_soup, 40_000),
                                           ("doubled_open", doubled_open_hemisphere, 100_000), ("bowl", _bowl, 100_000)])
def test_synthetic_open_meshes(ext, name, mesh, n):
    v, f = mesh()
    p = np.concatenate([box_points(v, n // 2, seed=14), near_surface_points(v, f, n // 2, seed=15, sigma=0.02)])
    w = _assert_fast_equals_full(v, f, p)
    assert (np.abs(np.abs(w) - 0.5) < 0.05).any()  # hard cases present


def test_points_next_to_an_open_sheet(ext):
    """Points within 1e-3 of an open sheet: |w| within 1e-3 of 0.5 for a third of them, where the
    bounds cannot decide alone."""
    v, f = flat_sheet()
    p = _slab_points(50_000, seed=16)
    w = _assert_fast_equals_full(v, f, p)
    assert (np.abs(np.abs(w) - 0.5) < 1e-3).mean() > 0.3


def test_open_soup_matches_reference(ext):
    """Many boundary edges, no two faces sharing one: the extension (both paths) against the reference."""
    v, f = triangle_soup(200, seed=3)
    p = np.random.default_rng(17).uniform(-1.2, 1.2, size=(3000, 3))
    fast = inside_mesh(v, f, p, backend="extension")
    _, w = inside_mesh(v, f, p, return_winding=True, backend="extension")
    ref_inside, w_ref = inside_mesh(torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(p),
                                    return_winding=True, backend="reference")
    assert np.abs(w - w_ref.numpy()).max() < 1e-9
    clear = np.abs(np.abs(w_ref.numpy()) - 0.5) > 1e-9
    np.testing.assert_array_equal(fast[clear], ref_inside.numpy()[clear])


def test_points_touching_the_boundary(ext):
    """Points within a lattice unit of an open sheet's straight boundary edges (collinear chains
    whose fan area is 0) and around its corners: where the exact and the floating-point signs of an
    edge term can differ, the hierarchy defers to the edges' exact terms (m.near2)."""
    v, f = flat_sheet()
    rng = np.random.default_rng(18)
    n = 20_000
    t = rng.uniform(0.0, 1.0, n)
    offset = rng.choice([-1e-12, -3e-10, 1e-12, 3e-10, 0.0], size=(n, 2))
    side = rng.integers(0, 4, n)  # the edge x = 0, x = 1, y = 0 or y = 1
    fixed, rows = np.where(side < 2, 0, 1), np.arange(n)
    p = np.empty((n, 3))
    p[rows, fixed] = side % 2 + offset[:, 0]
    p[rows, 1 - fixed] = t
    p[:, 2] = 0.5 + offset[:, 1]
    _assert_fast_equals_full(v, f, p)
