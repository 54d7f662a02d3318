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
