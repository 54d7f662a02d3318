"""Tiled nearest-neighbour kernel (npkernels.knn._triton) against the reference: indices, distances,
gradients, masks (none / all False / all True / partial), ties to the lowest index, empty clouds."""

from __future__ import annotations

import pytest
import torch

from npkernels._dispatch import interpreter_enabled
from npkernels.knn import reference

pytestmark = pytest.mark.triton

kn = pytest.importorskip("npkernels.knn._triton", reason="Triton is not importable")

if not (torch.cuda.is_available() or interpreter_enabled()):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)


def _clouds(B, N, P, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.rand(B, N, 3, generator=gen).requires_grad_(),
        torch.rand(B, P, 3, generator=gen).requires_grad_(),
    )


def _masks(kind, B, N, P, seed=0):
    gen = torch.Generator().manual_seed(seed + 7)
    if kind == "none":
        return None, None
    if kind == "all-true":
        return torch.ones(B, N, dtype=torch.bool), torch.ones(B, P, dtype=torch.bool)
    if kind == "all-false":
        return torch.zeros(B, N, dtype=torch.bool), torch.zeros(B, P, dtype=torch.bool)
    if kind == "y-all-false":
        return torch.rand(B, N, generator=gen) > 0.3, torch.zeros(B, P, dtype=torch.bool)
    return torch.rand(B, N, generator=gen) > 0.3, torch.rand(B, P, generator=gen) > 0.5


def _check(x, y, xm, ym):
    out = kn.knn(x, y, x_mask=xm, y_mask=ym)
    ref = reference.knn(x, y, x_mask=xm, y_mask=ym)
    for name in ("idx_xy", "idx_yx"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), msg=name)
    for name in ("dist_xy", "dist_yx"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=0, msg=name)
    return out, ref


SIZES = [(1, 1, 1), (2, 130, 70), (1, 0, 5), (2, 5, 0), (1, 300, 257)]


@pytest.mark.parametrize("B,N,P", SIZES, ids=[f"B{b}-N{n}-P{p}" for b, n, p in SIZES])
def test_matches_reference(B, N, P):
    x, y = _clouds(B, N, P)
    out, ref = _check(x, y, None, None)

    def loss(r):
        finite = [torch.where(torch.isfinite(d), d, 0.0) for d in (r.dist_xy, r.dist_yx)]
        return (finite[0] * torch.arange(N)).sum() + finite[1].sum()

    if N and P:
        gx = torch.autograd.grad(loss(out), (x, y))
        gr = torch.autograd.grad(loss(ref), (x, y))
        for a, b in zip(gx, gr):
            torch.testing.assert_close(a, b)
        nearest = torch.gather(y, 1, out.idx_xy[..., None].expand(-1, -1, 3))
        torch.testing.assert_close(out.dist_xy, ((x - nearest) ** 2).sum(-1))


@pytest.mark.parametrize("kind", ["none", "partial", "y-all-false"])
def test_nearest_one_direction(kind):
    """x -> y tiles only: the same indices, distances and gradients as the reference's x -> y half."""
    x, y = _clouds(2, 70, 130, seed=4)
    xm, ym = _masks(kind, 2, 70, 130)
    dist, idx = kn.nearest(x, y, x_mask=xm, y_mask=ym)
    ref_dist, ref_idx = reference.nearest(x, y, x_mask=xm, y_mask=ym)
    torch.testing.assert_close(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, rtol=0, atol=0)
    if ym is None:
        finite = torch.where(torch.isfinite(dist), dist, 0.0)
        ref_finite = torch.where(torch.isfinite(ref_dist), ref_dist, 0.0)
        for a, b in zip(torch.autograd.grad(finite.sum(), (x, y)), torch.autograd.grad(ref_finite.sum(), (x, y))):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["none", "all-true", "all-false", "y-all-false", "partial"])
def test_masks(kind):
    x, y = _clouds(2, 90, 75, seed=1)
    xm, ym = _masks(kind, 2, 90, 75)
    out, _ = _check(x, y, xm, ym)
    if xm is not None:
        assert (out.idx_xy[~xm] == -1).all() and (out.dist_xy[~xm] == 0).all()
    if ym is not None and not ym.any():
        assert (out.idx_xy[xm] == -1).all() and torch.isinf(out.dist_xy[xm]).all()


def test_ties_go_to_lowest_index():
    """Duplicated candidates across and within the candidate tiles: the lowest index wins."""
    base = torch.rand(1, 40, 3, generator=torch.Generator().manual_seed(2))
    y = torch.cat([base, base, base[:, :5]], 1)  # copies at +40 (same tile) and +80 (next tile)
    x = torch.cat([base[:, :10], torch.rand(1, 20, 3)], 1)
    out = kn.knn(x, y)
    torch.testing.assert_close(out.idx_xy[0, :10], torch.arange(10))
    assert (out.idx_xy < 40).all()
    torch.testing.assert_close(out.idx_xy, reference.knn(x, y).idx_xy)
    xx = torch.cat([base, base], 1)  # y -> x direction: equidistant copies in x
    torch.testing.assert_close(kn.knn(base, xx).idx_yx, reference.knn(base, xx).idx_yx)


def test_chamfer_through_the_kernel():
    import npkernels

    x, y = _clouds(2, 70, 90, seed=3)
    ym = _masks("partial", 2, 70, 90)[1]
    got = npkernels.chamfer(x, y, y_mask=ym, backend="triton")
    ref = npkernels.chamfer(x, y, y_mask=ym, backend="reference")
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    for a, b in zip(torch.autograd.grad(sum(got), (x, y)), torch.autograd.grad(sum(ref), (x, y))):
        torch.testing.assert_close(a, b)
