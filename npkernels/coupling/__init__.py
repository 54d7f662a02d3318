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

    points: (B, N, 3) or (B, N, M, 3); cond: (B, M, C); owner: optional (B, N) int64 in [0, M)
    (its range check reads two numbers back: one device sync on CUDA).
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
        if owner.device != points.device:
            raise ValueError(f"owner must be on {points.device}, got {owner.device}")
        if owner.numel():
            lo, hi = (int(v) for v in torch.aminmax(owner))
            if lo < 0 or hi >= M:
                raise ValueError(f"owner must index the M={M} primitives, got values in [{lo}, {hi}]")
    return B, points.shape[1], M


def coupling_inverse(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                     owner: Tensor | None = None, return_log_det: bool = False,
                     return_authors_ldj: bool = False, backend: str = "auto"):
    """World -> sphere map phi^-1(x; C_m) for every primitive.

    Args:
        x: (B, N, 3) points shared by all primitives (never expanded), or (B, N, M, 3).
        cond: (B, M, C) per-primitive conditions C_m = [image feature, embedding_m].
        weights: ``CouplingWeights`` views of the stack's parameters.
        affine: ``Affine`` (scale, rotation, translation) per primitive.
        owner: optional (B, N) int64 in [0, M) (ValueError otherwise; the check costs one device sync
            on CUDA); evaluate each point only in that primitive -> (B, N, 3).
        return_log_det: also return log|det d(phi^-1)/dx|: per layer the transformed coordinate's s,
            plus sum(log sigma) (the rotation has det 1).
        return_authors_ldj: also return the authors' SimpleNVP ldj instead: the sum over layers of all
            three s outputs (their definition, not a log-determinant). Exclusive with return_log_det.
        backend: "auto" | "triton" | "reference" (see ``npkernels._dispatch``).
    Returns:
        (B, N, M, 3) (or (B, N, 3) with owner); with a log-det or ldj a tuple (points, (B, N, M) or (B, N)).
    """
    check_inputs(x, cond, weights, affine, "x", owner)
    reference.log_det_kind(return_log_det, return_authors_ldj)
    kinds = {"return_log_det": return_log_det, "return_authors_ldj": return_authors_ldj}
    if select_backend("coupling", x, cond, backend=backend) == "triton":
        return kernel_module("coupling").coupling_inverse(x, cond, weights, affine, owner=owner, **kinds)
    return reference.coupling_inverse(x, cond, weights, affine, owner=owner, **kinds)


def coupling_forward(z: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                     return_log_det: bool = False, return_authors_ldj: bool = False, backend: str = "auto"):
    """Sphere -> world map phi(z; C_m).

    Args:
        z: (B, S, M, 3) points in each primitive's sphere frame.
        return_log_det: also return log|det d(phi)/dz|, minus ``coupling_inverse``'s at the matching point.
        return_authors_ldj: the authors' forward ldj instead (minus the sum of all s outputs).
        cond, weights, affine, backend: as in ``coupling_inverse``.
    Returns:
        (B, S, M, 3) world points; with a log-det or ldj a tuple (points, (B, S, M)).
    """
    check_inputs(z, cond, weights, affine, "z")
    if z.dim() != 4:
        raise ValueError(f"z must be (B, S, M, 3), got {tuple(z.shape)}")
    reference.log_det_kind(return_log_det, return_authors_ldj)
    kinds = {"return_log_det": return_log_det, "return_authors_ldj": return_authors_ldj}
    if select_backend("coupling", z, cond, backend=backend) == "triton":
        return kernel_module("coupling").coupling_forward(z, cond, weights, affine, **kinds)
    return reference.coupling_forward(z, cond, weights, affine, **kinds)
