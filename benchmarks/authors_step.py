"""The authors' training objective, formulated as their code computes it: the benchmark baseline.

Paper-formulation couplings (npkernels.coupling.naive: per-point concat, separate s and t MLPs),
every pass inside the autograd graph (also the sign-only volume pass and the boolean union test),
dense (B, S, N, M, 3) / (B, S, M, N) distance tensors, the normal loss differentiating g of all M
primitives, and the union test including each point's own primitive. Same sphere draws as
``neural_parts.objective.compute_losses`` for the same generator (volume draw first, then Chamfer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from neural_parts.geometry import sample_sphere
from neural_parts.config import LossConfig
from npkernels.coupling import naive


def authors_total_loss(model, inputs, batch, cfg: LossConfig, generator=None, maps=None) -> torch.Tensor:
    """Weighted sum of the five terms, official formulation. batch as for compute_losses.

    maps: optional (inverse, forward) replacing ``naive.coupling_inverse`` / ``coupling_forward`` in every
    pass but the normal term's, whose second order always runs them eagerly (torch.compile'd maps
    have no double backward).
    """
    inverse, forward = maps or (naive.coupling_inverse, naive.coupling_forward)
    net = model.invertible_network
    w = net.weights()
    cond = model.conditions(model.feature_extractor(inputs))
    affine = net.affine(cond)
    r, kappa, S = model.radius, cfg.sharpness, cfg.n_points_on_sphere
    B, M = cond.shape[:2]
    x = batch["volume_points"]
    p = batch["surface_points"].detach().requires_grad_(True)

    def g(points, inverse=inverse):  # (B, N, 3) -> (B, N, M), graph kept
        return torch.linalg.vector_norm(inverse(points, cond, w, affine), dim=-1) - r

    def draw():
        return sample_sphere((B, S, M), r, device=cond.device, dtype=cond.dtype, generator=generator)

    phi_true = g(x)
    y_e = forward(draw(), cond, w, affine)
    d = torch.sqrt(((x[:, None, :, None] - y_e[:, :, None]) ** 2).sum(-1)).min(1).values
    phi = d * torch.sign(phi_true)
    with torch.enable_grad():  # the normals need d g / d p even when called under no_grad
        phi_s = g(p, naive.coupling_inverse)
    y_c = forward(draw(), cond, w, affine)
    on = (g(y_c.reshape(B, S * M, 3)).view(B, S, M, M) >= 0).all(-1)

    dist = torch.sqrt(((y_c[:, :, :, None] - p[:, None, None]) ** 2).sum(-1))  # (B, S, M, Ns)
    t2p = dist.flatten(1, 2).min(1).values.mean()
    p2t = (on * dist.min(-1).values).sum() / on.numel() / on.float().mean()
    owner = (phi_s ** 2).argmin(-1, keepdim=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(phi_s.gather(-1, owner).sum(), p, create_graph=True)
    normal = (1 - (batch["surface_normals"] * grad / (grad.norm(dim=-1, keepdim=True) + 1e-12)).sum(-1)).mean()
    labels, weights = batch["volume_labels"], batch["volume_weights"]
    logits = (-kappa * phi).max(-1).values
    occupancy = (weights * F.binary_cross_entropy_with_logits(logits, labels, reduction="none")).mean()
    psi = phi + 1e6 * (1 - labels)[..., None]
    k_min = torch.topk(psi, cfg.min_n_points, dim=1, largest=False).values
    coverage = -torch.log(torch.sigmoid(-kappa * k_min) + cfg.coverage_eps).mean()
    overlap = F.relu(torch.sigmoid(-kappa * phi).sum(-1) - cfg.max_shared_points).mean()
    terms = {"chamfer": t2p + p2t, "normal": normal, "occupancy": occupancy, "coverage": coverage,
             "overlap": overlap}
    return sum(cfg.weight(k) * v for k, v in terms.items())
