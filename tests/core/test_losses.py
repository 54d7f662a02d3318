"""Each loss on a hand-computed case plus edge cases; the full objective on a tiny model."""
import math

import pytest
import torch
import torch.nn.functional as F

from neural_parts import losses
from neural_parts.models import NeuralParts
from neural_parts.config import ConfigError, LossConfig
from neural_parts.objective import compute_losses, euclidean_implicit, surface_normals


def test_chamfer_loss_hand_computed():
    target = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    prims = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]]])  # (B=1, S=1, M=2, 3)
    on = torch.tensor([[[True, False]]])
    # target->prim over all primitive points: (1 + 2) / 2; prim->target over on-surface only: 1
    assert losses.chamfer_loss(target, prims, on).item() == pytest.approx(1.5 + 1.0)
    # no on-surface point: that direction contributes 0, never NaN
    assert losses.chamfer_loss(target, prims, torch.zeros_like(on)).item() == pytest.approx(1.5)


def test_occupancy_loss_hand_computed():
    phi = torch.tensor([[[0.01, -0.002], [0.004, 0.02]]])  # (1, 2, 2)
    labels = torch.tensor([[1.0, 0.0]])
    weights = torch.tensor([[0.5, 2.0]])
    o1, o2 = 250 * 0.002, -250 * 0.004  # logits = -kappa * min_m phi
    expected = (0.5 * math.log1p(math.exp(-o1)) + 2.0 * math.log1p(math.exp(o2))) / 2
    assert losses.occupancy_loss(phi, labels, weights, 250).item() == pytest.approx(expected, rel=1e-6)


def test_normal_consistency_signed_cosine():
    n = F.normalize(torch.randn(2, 5, 3), dim=-1)
    assert losses.normal_consistency_loss(n, n).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.normal_consistency_loss(-n, n).item() == pytest.approx(2.0, abs=1e-6)


def test_coverage_loss_hand_computed_and_edges():
    phi = torch.tensor([[[0.01], [-0.004], [0.5], [-1.0]]])  # (1, 4, 1)
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    # k=2 smallest psi among inside points: -1.0 and -0.004 (the outside -1.0 would not enter)
    expected = sum(-math.log(1 / (1 + math.exp(250 * v)) + 1e-6) for v in (-1.0, -0.004)) / 2
    assert losses.coverage_loss(phi, labels, k=2).item() == pytest.approx(expected, rel=1e-5)
    # fewer inside points than k: uses those available; no inside point at all: 0, finite
    assert losses.coverage_loss(phi, labels, k=10).item() == pytest.approx(
        sum(-math.log(1 / (1 + math.exp(250 * v)) + 1e-6) for v in (0.01, -0.004, -1.0)) / 3, rel=1e-5)
    empty = losses.coverage_loss(phi, torch.zeros_like(labels), k=2)
    assert empty.item() == 0.0


def test_coverage_loss_without_floor_keeps_pulling_a_primitive_that_left_the_shape():
    """A primitive 0.2 away from every inside point: the authors' eps floor gives it no gradient (the term sits
    at -log(eps)); eps = 0 is the exact softplus, 250 * 0.2 = 50, with gradient -sharpness per point."""
    phi = torch.full((1, 3, 1), 0.2, requires_grad=True)
    labels = torch.ones(1, 3)
    floored = losses.coverage_loss(phi, labels, k=3)
    assert floored.item() == pytest.approx(-math.log(1e-6), rel=1e-4)
    assert torch.autograd.grad(floored, phi)[0].abs().max() < 1e-6
    exact = losses.coverage_loss(phi, labels, k=3, eps=0)
    assert exact.item() == pytest.approx(50.0, rel=1e-5)
    torch.testing.assert_close(torch.autograd.grad(exact, phi)[0], torch.full((1, 3, 1), 250.0 / 3))
    near = torch.tensor([[[-0.004], [0.01]]])  # where the floor does not bite, the two agree
    assert losses.coverage_loss(near, torch.ones(1, 2), k=2, eps=0).item() == pytest.approx(
        losses.coverage_loss(near, torch.ones(1, 2), k=2).item(), abs=1e-4)


def test_overlap_loss_hand_computed():
    phi = torch.tensor([[[-1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]]])
    # point 0 is inside 3 primitives: sum of sigmoids ~3 -> 3 - 1.95; point 1 inside one: 0
    assert losses.overlap_loss(phi).item() == pytest.approx((3 - 1.95) / 2, rel=1e-6)


def test_euclidean_implicit_matches_brute_force():
    torch.manual_seed(0)
    x = torch.randn(2, 30, 3)
    y = torch.randn(2, 11, 4, 3)
    sign = torch.randint(-1, 2, (2, 30, 4)).float()
    d = torch.cdist(x[:, None], y.permute(0, 2, 1, 3)).min(-1).values.permute(0, 2, 1)
    torch.testing.assert_close(euclidean_implicit(x, y, sign), d * sign)


def _sphere_model():
    """Coupling layers that are the identity (zero last layers): primitive m is the ellipsoid
    ||((x - T_m) R_m^T) * sigma_m|| = r, so its normals are known analytically."""
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=2, feature_size=8, hidden_size=16, proj_dims=8, encoder="latent", n_shapes=1)
    with torch.no_grad():
        for layer in model.invertible_network.layers:
            for m in (layer.map_s, layer.map_t):
                m[4].weight.zero_()
                m[4].bias.zero_()
    return model


def test_surface_normals_of_ellipsoids_and_second_order():
    model = _sphere_model()
    prims = model(torch.tensor([0]))
    sigma, R, T = (t.detach()[:, 0] for t in prims.affine)  # primitive 0
    pts = prims.to_world(prims.sample_sphere(20)).detach()[:, :, 0]
    normals = surface_normals(prims, pts)
    # grad ||((x - T) R^T) sigma|| is parallel to (((x - T) R^T) sigma^2) R
    expected = F.normalize(((pts - T[:, None]) @ R.transpose(-1, -2) * sigma[:, None] ** 2) @ R, dim=-1)
    torch.testing.assert_close(normals, expected, rtol=1e-4, atol=1e-4)
    losses.normal_consistency_loss(normals, expected).backward()  # second order through g
    assert model.primitive_embedding.grad is not None


def test_objective_terms_weights_and_skipping():
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=3, feature_size=8, hidden_size=16, proj_dims=8, encoder="latent", n_shapes=2)
    batch = {"volume_points": torch.rand(2, 64, 3) - 0.5, "volume_labels": (torch.rand(2, 64) > 0.5).float(),
             "volume_weights": torch.ones(2, 64), "surface_points": torch.rand(2, 32, 3) - 0.5,
             "surface_normals": F.normalize(torch.randn(2, 32, 3), dim=-1)}
    cfg = LossConfig(n_points_on_sphere=16)
    out = compute_losses(model(torch.tensor([0, 1])), batch, cfg)
    assert set(out) == {"chamfer", "normal", "occupancy", "coverage", "overlap", "total", "iou"}
    total = sum(cfg.weights[k] * out[k] for k in cfg.weights)
    torch.testing.assert_close(out["total"], total)
    chamfer_only = LossConfig(weights={"chamfer": 1.0}, n_points_on_sphere=16, union_surface=False)
    out = compute_losses(model(torch.tensor([0, 1])), batch, chamfer_only)
    assert set(out) == {"chamfer", "total"}
    with pytest.raises(ConfigError, match="unknown loss term"):
        LossConfig(weights={"edges": 1.0})
