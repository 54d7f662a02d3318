"""Public coupling ops: validation, dispatch to Triton or the PyTorch reference."""
from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import kernel_module, select_backend
from .._utils import check_tensor
from . import reference
from .weights import Affine, CouplingWeights, LayerWeights, check_affine

__all__ = ["Affine", "CouplingWeights", "LayerWeights", "coupling_forward", "coupling_inverse", "check_inputs"]


def check_inputs(points: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine,
                 name: str = "x", owner: Tensor | None = None) -> tuple[int, int, int]:
    """Validate the arguments of a coupling op; return (B, N, M).

    points: (B, N, 3) or (B, N, M, 3); cond: (B, M, C); owner: optional (B, N) int64 in [0, M).
    """
    check_tensor(name, points, last=3)
    check_tensor("cond", cond, ndim=3)
    if not isinstance(weights, CouplingWeights):
        raise TypeError(f"weights must be npkernels.CouplingWeights, got {type(weights).__name__}")
    B, M, C = cond.shape
    if points.dim() not in (3, 4) or points.shape[0] != B or (points.dim() == 4 and points.shape[2] != M):
        raise ValueError(f"{name} must be (B, N, 3) or (B, N, M, 3) with B={B}, M={M} from cond; "
                         f"got {tuple(points.shape)}")
    if C != weights.cond_dims:
        raise ValueError(f"cond has {C} features but the weights expect {weights.cond_dims}")
    if M == 0:
        raise ValueError("cond must hold at least one primitive (M >= 1)")
    if points.dtype != cond.dtype:
        raise TypeError(f"{name} ({points.dtype}) and cond ({cond.dtype}) must share a dtype")
    check_affine(affine, B, M)
    devices = {points.device, cond.device, affine.scale.device, weights.proj_w1.device}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if owner is not None:
        if points.dim() != 3:
            raise ValueError(f"with owner, {name} must be (B, N, 3), got {tuple(points.shape)}")
        if owner.dtype != torch.int64 or tuple(owner.shape) != tuple(points.shape[:2]):
            raise ValueError(f"owner must be int64 of shape {tuple(points.shape[:2])}, "
                             f"got {owner.dtype} {tuple(owner.shape)}")
    return B, points.shape[1], M


def coupling_inverse(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                     owner: Tensor | None = None, return_log_det: bool = False,
                     backend: str = "auto"):
    """World -> sphere map phi^-1(x; C_m) for every primitive.

    Args:
        x: (B, N, 3) points shared by all primitives (never expanded), or (B, N, M, 3).
        cond: (B, M, C) per-primitive conditions C_m = [image feature, embedding_m].
        weights: ``CouplingWeights`` views of the stack's parameters.
        affine: ``Affine`` (scale, rotation, translation) per primitive.
        owner: optional (B, N) int64; evaluate each point only in that primitive -> (B, N, 3).
        return_log_det: also return log|det d phi^-1 / dx| summed over layers (authors' ldj).
        backend: "auto" | "triton" | "reference".
    Returns:
        (B, N, M, 3) (or (B, N, 3) with owner); with ``return_log_det`` a tuple (points, log_det).
    """
    check_inputs(x, cond, weights, affine, "x", owner)
    if select_backend("coupling", x, cond, backend=backend) == "triton":
        return kernel_module("coupling").coupling_inverse(
            x, cond, weights, affine, owner=owner, return_log_det=return_log_det)
    return reference.coupling_inverse(x, cond, weights, affine, owner=owner, return_log_det=return_log_det)


def coupling_forward(z: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                     return_log_det: bool = False, backend: str = "auto"):
    """Sphere -> world map phi(z; C_m).

    Args:
        z: (B, S, M, 3) points in each primitive's sphere frame.
        cond, weights, affine, backend: as in ``coupling_inverse``.
    Returns:
        (B, S, M, 3) world points; with ``return_log_det`` a tuple (points, log_det (B, S, M)).
    """
    check_inputs(z, cond, weights, affine, "z")
    if z.dim() != 4:
        raise ValueError(f"z must be (B, S, M, 3), got {tuple(z.shape)}")
    if select_backend("coupling", z, cond, backend=backend) == "triton":
        return kernel_module("coupling").coupling_forward(z, cond, weights, affine,
                                                          return_log_det=return_log_det)
    return reference.coupling_forward(z, cond, weights, affine, return_log_det=return_log_det)
