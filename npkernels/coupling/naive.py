"""The paper formulation, as the authors' code computes it: tests and benchmarks only.

Per (point, primitive) the 2F condition is concatenated to the projected point, and two
separate MLPs compute s and t from the full concatenation. Independent of reference.py
(no shared helpers), so the two cross-check each other.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .weights import Affine, CouplingWeights, LayerWeights


def _mlp(h: Tensor, w1, b1, w2, b2, w3, b3) -> Tensor:
    h = torch.relu(h @ w1.T + b1)
    h = torch.relu(h @ w2.T + b2)
    return h @ w3.T + b3


def _s_t(y: Tensor, cond: Tensor, lw: LayerWeights, weights: CouplingWeights) -> tuple[Tensor, Tensor]:
    p = torch.relu((y * lw.mask) @ weights.proj_w1.T + weights.proj_b1) @ weights.proj_w2.T + weights.proj_b2
    c = cond[:, None].expand(-1, y.shape[1], -1, -1)
    h = torch.cat([c, p], dim=-1)
    s = torch.clamp(_mlp(h, lw.s_w1, lw.s_b1, lw.s_w2, lw.s_b2, lw.s_w3, lw.s_b3), -10, 10)
    t = _mlp(h, lw.t_w1, lw.t_b1, lw.t_w2, lw.t_b2, lw.t_w3, lw.t_b3)
    return s, t


def coupling_inverse(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine) -> Tensor:
    """World -> sphere, x (B, N, 3) or (B, N, M, 3) -> (B, N, M, 3)."""
    M = cond.shape[1]
    if x.dim() == 3:
        x = x[:, :, None].expand(-1, -1, M, -1)
    y = torch.matmul((x - affine.translation[:, None]).unsqueeze(-2),
                     affine.rotation[:, None].transpose(-2, -1)).squeeze(-2)
    y = y * affine.scale[:, None]
    for lw in reversed(weights.layers):
        s, t = _s_t(y, cond, lw, weights)
        y = y * lw.mask + (1 - lw.mask) * (y * torch.exp(s) + t)
    return y


def coupling_forward(z: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine) -> Tensor:
    """Sphere -> world, z (B, S, M, 3) -> (B, S, M, 3)."""
    y = z
    for lw in weights.layers:
        s, t = _s_t(y, cond, lw, weights)
        y = y * lw.mask + (1 - lw.mask) * ((y - t) * torch.exp(-s))
    y = y / affine.scale[:, None]
    return torch.matmul(y.unsqueeze(-2), affine.rotation[:, None]).squeeze(-2) + affine.translation[:, None]
