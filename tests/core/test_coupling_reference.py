"""The npkernels coupling ops' reference: conventions, naive agreement, round trip, validation."""
import math

import pytest
import torch
from torch import nn

from npkernels import Affine, CouplingWeights, coupling_forward, coupling_inverse, implicit_union
from npkernels.coupling import naive
from helpers import random_inputs, tiny_network, weights_of


def test_golden_single_layer_hand_computed():
    """One layer, hand-set weights: checks the exp(+s) world->sphere convention, the mask, the
    projection input m*x, the [C, p] order, the rigid map (x - T) R^T and the scale."""
    net = tiny_network(cond_dims=1, hidden=1, proj=1, layers=1)
    layer = net.layers[0]
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        layer.mask.copy_(torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3))  # z is transformed
        proj = net.projection.proj
        proj[0].weight[0] = torch.tensor([1.0, 0.5, 5.0])  # p = relu(x + y/2 + 5 z), z masked out
        proj[2].weight.fill_(1.0)
        for m, scale in ((layer.map_s, 0.5), (layer.map_t, 2.0)):
            m[0].weight.copy_(torch.tensor([[1.0, 1.0]]))  # h1 = relu(C + p)
            m[2].weight.fill_(1.0)
            m[4].weight.copy_(torch.tensor([[0.0], [0.0], [scale]]))
    cond = torch.tensor([[[0.25]]])
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    affine = Affine(torch.tensor([[[2.0, 2.0, 2.0]]]), R.view(1, 1, 3, 3), torch.tensor([[[0.0, 0.0, 1.0]]]))
    x = torch.tensor([[[0.5, 0.0, 2.0]]])
    # rigid: (x - T) R^T = (0.5, 0, 1) R^T = (0, 0.5, 1); * sigma -> (0, 1, 2)
    # projection of m*x = (0, 1, 0): p = relu(0 + 0.5 + 0) = 0.5 (unmasked it would be 10.5)
    # h = relu(C + p) = 0.75; s = 0.5 * 0.75 = 0.375; t = 2 * 0.75 = 1.5; z' = z exp(s) + t
    expected = torch.tensor([0.0, 1.0, 2.0 * math.exp(0.375) + 1.5])
    w = weights_of(net)
    out = coupling_inverse(x, cond, w, affine)
    assert out.shape == (1, 1, 1, 3)
    torch.testing.assert_close(out[0, 0, 0], expected)
    torch.testing.assert_close(naive.coupling_inverse(x, cond, w, affine)[0, 0, 0], expected)
    torch.testing.assert_close(coupling_forward(out, cond, w, affine)[0, 0, 0], x[0, 0])


@pytest.mark.parametrize("B,N,M", [(1, 1, 1), (2, 7, 3), (3, 33, 5), (1, 0, 2)])
def test_efficient_matches_naive_and_round_trips(B, N, M):
    net = tiny_network()
    w = weights_of(net)
    x, cond, affine = random_inputs(B, N, M)
    z = coupling_inverse(x, cond, w, affine)
    assert z.shape == (B, N, M, 3)
    torch.testing.assert_close(z, naive.coupling_inverse(x, cond, w, affine), rtol=1e-5, atol=1e-5)
    back = coupling_forward(z, cond, w, affine)
    torch.testing.assert_close(back, naive.coupling_forward(z, cond, w, affine), rtol=1e-5, atol=1e-5)
    if N:
        assert (back - x[:, :, None]).abs().max() < 1e-5
    # expanded (B, N, M, 3) input gives the same as the shared (B, N, 3) one
    torch.testing.assert_close(coupling_inverse(x[:, :, None].expand(B, N, M, 3), cond, w, affine), z)


def test_full_width_round_trip_float32():
    w = weights_of(tiny_network(cond_dims=512, hidden=256, proj=128))
    x, cond, affine = random_inputs(2, 50, 6, cond_dims=512)
    z = coupling_inverse(x, cond, w, affine)
    assert (coupling_forward(z, cond, w, affine) - x[:, :, None]).abs().max() < 1e-5


def test_owner_selects_one_primitive_and_log_det_signs():
    w = weights_of(tiny_network(dtype=torch.float64))
    x, cond, affine = random_inputs(2, 9, 4, dtype=torch.float64)
    z, ld_inv = coupling_inverse(x, cond, w, affine, return_log_det=True)
    owner = torch.randint(0, 4, (2, 9))
    zo = coupling_inverse(x, cond, w, affine, owner=owner)
    torch.testing.assert_close(zo, z.gather(2, owner[..., None, None].expand(-1, -1, 1, 3)).squeeze(2))
    _, ld_fwd = coupling_forward(z, cond, w, affine, return_log_det=True)
    torch.testing.assert_close(ld_fwd, -ld_inv)


def test_implicit_union_is_min_of_norms():
    w = weights_of(tiny_network())
    x, cond, affine = random_inputs(2, 40, 3)
    u = implicit_union(x, cond, w, affine, radius=0.3, per_primitive=True)
    g = torch.linalg.vector_norm(coupling_inverse(x, cond, w, affine), dim=-1) - 0.3
    torch.testing.assert_close(u.per_primitive, g)
    torch.testing.assert_close(u.value, g.min(-1).values)
    assert torch.equal(u.argmin, g.argmin(-1))
    assert implicit_union(x, cond, w, affine, radius=0.3).per_primitive is None


def test_implicit_union_chunked_no_grad_equals_full():
    from npkernels.implicit import reference

    w = weights_of(tiny_network())
    x, cond, affine = random_inputs(1, 100, 3)
    with torch.no_grad():
        full = reference.implicit_union(x, cond, w, affine, per_primitive=True, chunk_rows=10 ** 9)
        chunked = reference.implicit_union(x, cond, w, affine, per_primitive=True, chunk_rows=7)
    torch.testing.assert_close(chunked.per_primitive, full.per_primitive)


def test_input_validation_messages():
    net = tiny_network()
    w = weights_of(net)
    x, cond, affine = random_inputs(2, 5, 3)
    with pytest.raises(ValueError, match="x must be"):
        coupling_inverse(x[:1], cond, w, affine)
    with pytest.raises(ValueError, match="features"):
        coupling_inverse(x, cond[..., :4], w, affine)
    with pytest.raises(ValueError, match="affine.rotation"):
        coupling_inverse(x, cond, w, affine._replace(rotation=affine.rotation[:, :, :2]))
    with pytest.raises(TypeError, match="floating"):
        coupling_inverse(x.long(), cond, w, affine)
    with pytest.raises(TypeError, match="CouplingWeights"):
        coupling_inverse(x, cond, {"w": 1}, affine)
    with pytest.raises(ValueError, match="owner"):
        coupling_inverse(x, cond, w, affine, owner=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        coupling_inverse(x, cond, w, affine, backend="cuda")
    with pytest.raises(ValueError, match="radius"):
        implicit_union(x, cond, w, affine, radius=0.0)


def test_weights_from_module_rejects_other_layouts():
    net = tiny_network()
    net.layers[1].map_s[5] = nn.Hardtanh(-5, 5)
    with pytest.raises(ValueError, match="Hardtanh"):
        CouplingWeights.from_module(net)
    with pytest.raises(ValueError, match="layers"):
        CouplingWeights.from_module(nn.Linear(3, 3))


def test_weights_are_views_not_copies():
    net = tiny_network()
    w = weights_of(net)
    assert w.layers[0].s_w1.data_ptr() == net.layers[0].map_s[0].weight.data_ptr()
    assert w.proj_w1.data_ptr() == net.projection.proj[0].weight.data_ptr()
