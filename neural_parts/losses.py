"""The five Neural Parts losses (authors' code semantics), one pure function each.

Shapes: B batch, N volume points, Ns surface points, S sphere samples per primitive, M primitives.
All means run over every listed index including the batch, as in the authors' code.
Default weights (D-FAUST config): chamfer 0.3, normal 0.01, occupancy 1.0, coverage 0.01, overlap 0.1;
sharpness kappa = 250.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from npkernels import knn


def chamfer_loss(target_points: Tensor, primitive_points: Tensor, on_surface: Tensor,
                 backend: str = "auto") -> Tensor:
    """Reconstruction loss: Euclidean (not squared) Chamfer between target and predicted surface.

    L = mean_n min_{s,m} ||p_n - y_sm|| + mean_{(s,m) on surface} min_n ||y_sm - p_n||.
    The target->primitive term uses all primitive points (the authors' behaviour); the
    primitive->target term averages over points flagged ``on_surface`` only (0 if there are none).

    Args:
        target_points: (B, Ns, 3). primitive_points: (B, S, M, 3). on_surface: (B, S, M) bool.
    """
    B, S, M, _ = primitive_points.shape
    nearest = knn(target_points, primitive_points.reshape(B, S * M, 3), backend=backend)
    t2p, p2t = nearest.chamfer(y_query_mask=on_surface.reshape(B, S * M))
    return t2p + p2t


def occupancy_loss(phi_volume: Tensor, labels: Tensor, weights: Tensor, sharpness: float = 250.0) -> Tensor:
    """Weighted BCE on logits o_n = -sharpness * min_m phi[n, m] (inside = 1).

    L = mean_n w_n * BCEWithLogits(o_n, label_n). phi_volume: (B, N, M); labels, weights: (B, N).
    """
    logits = -sharpness * phi_volume.min(-1).values
    return (weights * F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")).mean()


def normal_consistency_loss(predicted_normals: Tensor, target_normals: Tensor) -> Tensor:
    """L = mean_n (1 - <n_target, n_pred>) (signed cosine); both (B, Ns, 3), n_pred unit length."""
    return (1 - (predicted_normals * target_normals).sum(-1)).mean()


def coverage_loss(phi_volume: Tensor, labels: Tensor, k: int = 10, sharpness: float = 250.0,
                  eps: float = 1e-6) -> Tensor:
    """Every primitive must contain its k most-inside target-inside points.

    psi = phi restricted to inside points (label 1); for each (b, m) take the k smallest psi over n
    and average -log(sigmoid(-sharpness * psi) + eps). Points outside the target never enter
    (explicit mask instead of the authors' +1e6 offset); with fewer than k inside points the
    available ones are used; a batch element without inside points contributes nothing.
    ``eps`` > 0 is the authors' floor: a term stops at -log(eps) (13.8 for 1e-6), so a primitive whose
    nearest inside points are more than log(1/eps) / sharpness away gets no pull back. ``eps`` = 0 is the
    exact -log(sigmoid) (softplus), whose pull never vanishes.

    Args:
        phi_volume: (B, N, M). labels: (B, N) in {0, 1}.
    """
    inside = labels > 0.5
    k = min(k, phi_volume.shape[1])
    if k == 0:
        return phi_volume.sum() * 0
    psi = phi_volume.masked_fill(~inside[..., None], float("inf"))
    values, _ = torch.topk(psi, k, dim=1, largest=False)
    valid = torch.isfinite(values)
    logits = -sharpness * torch.where(valid, values, torch.zeros_like(values))
    terms = -F.logsigmoid(logits) if eps == 0 else -torch.log(torch.sigmoid(logits) + eps)
    return (terms * valid).sum() / valid.sum().clamp_min(1)


def overlap_loss(phi_volume: Tensor, sharpness: float = 250.0, max_shared: float = 1.95) -> Tensor:
    """L = mean_n relu(sum_m sigmoid(-sharpness * phi[n, m]) - max_shared); phi_volume (B, N, M)."""
    return F.relu(torch.sigmoid(-sharpness * phi_volume).sum(-1) - max_shared).mean()
