"""npkernels.knn / chamfer reference: exactness vs float64, ties, masks, KD-tree path, gradients."""
import pytest
import torch

from npkernels import chamfer, knn, nearest
from npkernels.knn import reference


def _brute64(q, c):
    d = ((q.double()[:, :, None] - c.double()[:, None]) ** 2).sum(-1)
    return d.min(-1)


@pytest.mark.parametrize("N,P", [(1, 1), (17, 5), (130, 257), (0, 4), (3, 0)])
def test_knn_matches_float64_brute_force(N, P):
    g = torch.Generator().manual_seed(N * 1000 + P)
    x, y = torch.randn(2, N, 3, generator=g), torch.randn(2, P, 3, generator=g)
    r = knn(x, y)
    assert r.dist_xy.shape == (2, N) and r.idx_yx.shape == (2, P)
    if N and P:
        d, i = _brute64(x, y)
        assert torch.equal(r.idx_xy, i)
        torch.testing.assert_close(r.dist_xy.double(), d, rtol=1e-5, atol=1e-7)
    if not P:
        assert (r.idx_xy == -1).all() and torch.isinf(r.dist_xy).all()


@pytest.mark.parametrize("masked", [False, True])
def test_nearest_is_the_first_half_of_knn(masked):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 3, generator=g, requires_grad=True)
    y = torch.randn(2, 25, 3, generator=g, requires_grad=True)
    xm, ym = (torch.rand(2, 40, generator=g) > 0.3, torch.rand(2, 25, generator=g) > 0.5) if masked else (None, None)
    dist, idx = nearest(x, y, x_mask=xm, y_mask=ym)
    both = knn(x, y, x_mask=xm, y_mask=ym)
    assert torch.equal(idx, both.idx_xy) and torch.equal(dist, both.dist_xy)
    gx, gy = torch.autograd.grad(dist.sum(), (x, y))
    hx, hy = torch.autograd.grad(both.dist_xy.sum(), (x, y))
    assert torch.equal(gx, hx) and torch.equal(gy, hy)
    with pytest.raises(ValueError, match="NaN"):
        nearest(x.detach().clone().index_fill_(1, torch.tensor([2]), float("nan")), y)


def test_kdtree_path_agrees_with_brute_force(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1500, 3, generator=g), torch.rand(1, 900, 3, generator=g)
    tree = knn(x, y)  # 1.35e6 pairs -> KD-tree on CPU
    monkeypatch.setattr(reference, "KDTREE_MIN_PAIRS", 10 ** 12)
    brute = knn(x, y)
    assert torch.equal(tree.idx_xy, brute.idx_xy) and torch.equal(tree.idx_yx, brute.idx_yx)


def test_ties_go_to_lowest_index_on_both_paths(monkeypatch):
    x = torch.zeros(1, 1, 3)
    y = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]]])
    assert knn(x, y).idx_xy.item() == 0
    y2 = torch.tensor([[[5.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]]])
    assert knn(x, y2).idx_xy.item() == 1
    monkeypatch.setattr(reference, "KDTREE_MIN_PAIRS", 0)
    assert knn(x, y2).idx_xy.item() == 1


def test_masks_exclude_queries_and_candidates():
    x = torch.tensor([[[0.0, 0, 0], [10.0, 0, 0]]])
    y = torch.tensor([[[0.1, 0, 0], [9.0, 0, 0]]])
    r = knn(x, y, y_mask=torch.tensor([[False, True]]))
    assert r.idx_xy.tolist() == [[1, 1]]
    assert r.idx_yx.tolist() == [[-1, 1]] and r.dist_yx[0, 0].item() == 0.0
    none = knn(x, y, y_mask=torch.zeros(1, 2, dtype=torch.bool))
    assert (none.idx_xy == -1).all() and torch.isinf(none.dist_xy).all()
    a, b = chamfer(x, y, x_mask=torch.tensor([[True, False]]))
    assert a.item() == pytest.approx(0.1) and b.item() == pytest.approx((0.1 + 9.0) / 2)


def test_chamfer_gradients_flow_to_both_clouds():
    x = torch.randn(2, 20, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 15, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sum(chamfer(a, b)), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: sum(chamfer(a, b, squared=True, reduction="batch")).sum(), (x, y))


def test_knn_input_errors():
    with pytest.raises(ValueError, match="batch"):
        knn(torch.zeros(1, 2, 3), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="NaN"):
        knn(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="bool"):
        knn(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), x_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="reduction"):
        chamfer(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), reduction="sum")


def _direct_means(x, y, x_query_mask, y_query_mask, squared):
    """Per batch element: mean over the masked queries of the (squared) distance to the nearest point of
    the whole other cloud, computed directly in float64."""
    d = ((x.double()[:, :, None] - y.double()[:, None]) ** 2).sum(-1)  # (B, N, P)
    d_xy, d_yx = d.min(2).values, d.min(1).values
    if not squared:
        d_xy, d_yx = d_xy.sqrt(), d_yx.sqrt()
    out = []
    for dist, mask in ((d_xy, x_query_mask), (d_yx, y_query_mask)):
        mask = torch.ones_like(dist, dtype=torch.bool) if mask is None else mask
        out.append(torch.stack([dist[b][mask[b]].mean() if mask[b].any() else dist.new_zeros(())
                                for b in range(len(dist))]))
    return out


@pytest.mark.parametrize("squared", [False, True])
def test_knn_chamfer_query_masks_apply_at_reduction(squared):
    """Query masks choose the averaged queries only: every point stays a candidate (the loss's
    primitive->target term over on-surface primitive points, target->primitive over all of them)."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(3, 30, 3, generator=g), torch.randn(3, 21, 3, generator=g)
    xq, yq = torch.rand(3, 30, generator=g) > 0.4, torch.rand(3, 21, generator=g) > 0.6
    yq[2] = False  # nothing to average in one batch element: 0
    result = knn(x, y)
    for masks in ((None, yq), (xq, None), (xq, yq)):
        want = _direct_means(x, y, *masks, squared)
        got = result.chamfer(*masks, squared=squared, reduction="batch")
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)
        mean = result.chamfer(*masks, squared=squared)  # over every averaged query of the batch
        for a, b, mask, n in zip(mean, want, masks, (30, 21)):
            counts = torch.full((3,), float(n)) if mask is None else mask.double().sum(1)
            torch.testing.assert_close(a.double(), (b * counts).sum() / counts.sum(), rtol=1e-5, atol=1e-7)
    # without query masks it is npkernels.chamfer
    for reduction in ("mean", "batch"):
        for a, b in zip(result.chamfer(squared=squared, reduction=reduction),
                        chamfer(x, y, squared=squared, reduction=reduction)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_knn_chamfer_gradient_and_errors():
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    yq = torch.tensor([[True, False] * 3 + [True]] * 2)
    assert torch.autograd.gradcheck(lambda a, b: sum(knn(a, b).chamfer(y_query_mask=yq)), (x, y))
    result = knn(x, y)
    with pytest.raises(ValueError, match=r"y_query_mask must be a bool tensor of shape \(2, 7\)"):
        result.chamfer(y_query_mask=yq[:, :3])
    with pytest.raises(ValueError, match="x_query_mask"):
        result.chamfer(x_query_mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match="reduction"):
        result.chamfer(reduction="sum")


def test_safe_sqrt_is_public_with_a_finite_gradient_at_zero():
    from npkernels import safe_sqrt

    d = torch.tensor([0.0, 4.0, 0.25], requires_grad=True)
    out = safe_sqrt(d)
    assert out.tolist() == [0.0, 2.0, 0.5]
    (grad,) = torch.autograd.grad(out.sum(), d)
    assert grad.tolist() == [0.0, 0.25, 1.0]
