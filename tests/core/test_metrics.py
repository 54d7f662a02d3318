"""Metrics on analytic shapes."""
import pytest
import torch
import torch.nn.functional as F

from neural_parts.metrics import point_cloud_metrics, sample_union_surface, weighted_iou
from neural_parts.models import NeuralParts


def test_iou_of_two_boxes_analytic():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 200_000, 3, generator=g)
    a = (x < 0.5).all(-1)  # [0, .5]^3, volume 1/8
    b = (x[..., 0] < 0.25) & (x[..., 1:] < 0.5).all(-1)  # half of a
    assert weighted_iou(b, a).item() == pytest.approx(0.5, abs=0.01)
    assert weighted_iou(a, a).item() == 1.0
    empty = torch.zeros_like(a)
    assert weighted_iou(empty, empty).item() == 1.0
    assert weighted_iou(a, empty).item() == 0.0


def test_iou_importance_weights_are_unbiased():
    """Equal sampling (half inside, half outside) with weights 2 n_in / N and 2 n_out / N."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400_000, 3, generator=g)
    target = (x < 0.5).all(-1)
    pred_all = (x[:, 0] < 0.25) & (x[:, 1:] < 0.5).all(-1) | (x > 0.9).all(-1)
    n_in = int(target.sum())
    inside, outside = torch.nonzero(target).flatten(), torch.nonzero(~target).flatten()
    pick = torch.cat([inside[torch.randint(len(inside), (20000,), generator=g)],
                      outside[torch.randint(len(outside), (20000,), generator=g)]])
    w = torch.where(target[pick], 2 * n_in / len(x), 2 * (len(x) - n_in) / len(x))
    exact = weighted_iou(pred_all[None], target[None]).item()
    estimate = weighted_iou(pred_all[pick][None], target[pick][None], w[None]).item()
    assert estimate == pytest.approx(exact, abs=0.01)


def _sphere(n, radius, seed):
    p = F.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return p * radius, p


def test_chamfer_fscore_normals_on_concentric_spheres():
    p1, n1 = _sphere(20_000, 1.0, 0)
    p2, n2 = _sphere(20_000, 1.1, 1)
    m = point_cloud_metrics(p2[None], p1[None], n2[None], n1[None], threshold=0.11)
    assert m["accuracy"].item() == pytest.approx(0.1, abs=0.005)
    assert m["completeness"].item() == pytest.approx(0.1, abs=0.005)
    assert m["chamfer_l1"].item() == pytest.approx(0.1, abs=0.005)
    assert m["chamfer_l2"].item() == pytest.approx(0.01, abs=0.001)
    assert m["normal_consistency"].item() == pytest.approx(1.0, abs=1e-3)
    assert m["fscore"].item() > 0.9
    same = point_cloud_metrics(p1[None], p1[None])
    assert same["chamfer_l1"].item() == 0.0 and same["fscore"].item() == 1.0
    far = point_cloud_metrics(p1[None] + 5, p1[None])
    assert far["fscore"].item() == 0.0


def test_union_surface_points_are_outside_other_primitives():
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=3, feature_size=8, hidden_size=16, proj_dims=8, encoder="latent", n_shapes=1)
    prims = model.predict(torch.tensor([0]))
    [(points, normals)] = sample_union_surface(prims, 3000, min_vertices=600)
    assert points.shape == (3000, 3)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(3000))
    with torch.no_grad():
        g = prims.implicit(points[None], per_primitive=True).per_primitive[0].sort(-1).values
    # each point lies on one primitive's (triangulated) surface and outside every other primitive
    assert g[:, 0].abs().max() < 5e-3
    assert (g[:, 1] >= 0).all()
