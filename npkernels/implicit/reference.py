"""Reference for the union implicit G(x) = min_m g_m(x), g_m(x) = ||phi^-1(x; C_m)|| - r.

Negative inside. Ties in the min go to the lowest primitive index (torch.min's rule); the
gradient of G flows only into the argmin primitive. Without autograd the points are processed
in chunks so memory stays bounded (about ``chunk_rows`` (point, primitive) rows at a time).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..coupling import reference as coupling
from ..coupling.weights import Affine, CouplingWeights


class UnionImplicit(NamedTuple):
    """value: (B, N) G(x); argmin: (B, N) int64 primitive; per_primitive: (B, N, M) g or None."""

    value: Tensor
    argmin: Tensor
    per_primitive: Tensor | None


def primitive_implicit(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine,
                       radius: float) -> Tensor:
    """g_m(x) for all primitives: x (B, N, 3) -> (B, N, M)."""
    return torch.linalg.vector_norm(coupling.coupling_inverse(x, cond, weights, affine), dim=-1) - radius


def implicit_union(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                   radius: float = 0.25, per_primitive: bool = False, chunk_rows: int = 1 << 16) -> UnionImplicit:
    """G(x), its argmin and optionally all g_m for x (B, N, 3)."""
    needs_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, cond, affine.scale, affine.rotation, affine.translation, weights.proj_w1))
    M = cond.shape[1]
    step = max(1, x.shape[1]) if needs_graph else max(1, chunk_rows // M)
    parts = [primitive_implicit(x[:, i:i + step], cond, weights, affine, radius)
             for i in range(0, x.shape[1], step)] or [x.new_zeros(x.shape[0], 0, M)]
    g = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    value, argmin = g.min(-1)
    return UnionImplicit(value, argmin, g if per_primitive else None)
