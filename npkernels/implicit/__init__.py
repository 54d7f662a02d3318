"""Public union implicit op: G(x) = min_m (||phi^-1(x; C_m)|| - r) with argmin."""
from __future__ import annotations

from torch import Tensor

from .._dispatch import kernel_module, select_backend
from ..coupling import check_inputs
from ..coupling.weights import Affine, CouplingWeights
from . import reference
from .reference import UnionImplicit

__all__ = ["UnionImplicit", "implicit_union"]


def implicit_union(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                   radius: float = 0.25, per_primitive: bool = False, backend: str = "auto") -> UnionImplicit:
    """Union implicit of M primitives at x.

    Args:
        x: (B, N, 3) query points (world units).
        cond: (B, M, C) per-primitive conditions; weights, affine: the coupling stack's.
        radius: sphere radius r (0.25 in the paper).
        per_primitive: also return the (B, N, M) values g_m (otherwise they are not kept).
        backend: "auto" | "triton" | "reference".
    Returns:
        ``UnionImplicit(value (B, N), argmin (B, N) int64, per_primitive (B, N, M) or None)``;
        value < 0 inside. Differentiable w.r.t. x, cond, weights and affine.
    """
    check_inputs(x, cond, weights, affine, "x")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, 3), got {tuple(x.shape)}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if select_backend("implicit", x, cond, backend=backend) == "triton":
        return kernel_module("implicit").implicit_union(
            x, cond, weights, affine, radius=radius, per_primitive=per_primitive)
    return reference.implicit_union(x, cond, weights, affine, radius=radius, per_primitive=per_primitive)
