"""A full training step on CPU: encoder + model + the five losses + backward + optimizer."""
import torch
import torch.nn.functional as F

from neural_parts.models import NeuralParts
from neural_parts.config import LossConfig
from neural_parts.objective import compute_losses


def test_full_training_step_updates_every_trained_parameter():
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=3, feature_size=16, hidden_size=32, proj_dims=16, freeze_bn=False)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {"volume_points": torch.rand(2, 256, 3) - 0.5, "volume_labels": (torch.rand(2, 256) > 0.7).float(),
             "volume_weights": torch.rand(2, 256) + 0.5, "surface_points": torch.rand(2, 64, 3) - 0.5,
             "surface_normals": F.normalize(torch.randn(2, 64, 3), dim=-1)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = compute_losses(model(torch.randn(2, 3, 64, 64)), batch, LossConfig(n_points_on_sphere=32))
    optimizer.zero_grad()
    out["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    assert torch.isfinite(out["total"])
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
