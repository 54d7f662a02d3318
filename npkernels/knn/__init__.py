"""Public nearest-neighbour (K=1, one or both directions) and Chamfer ops.

Backends: "auto", "reference", "triton" and "pytorch3d" (explicit only, no masks; see ``_pytorch3d``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import kernel_module, select_backend
from .._utils import check_finite, check_tensor
from . import reference
from .reference import KNN, safe_sqrt

__all__ = ["KNN", "knn", "nearest", "chamfer", "safe_sqrt"]


def _backend_module(backend: str, x: Tensor, y: Tensor):
    """The module whose ``knn`` / ``nearest`` run for ``backend`` (see ``npkernels._dispatch``)."""
    chosen = select_backend("knn", x, y, backend=backend)
    if chosen == "triton":
        return kernel_module("knn")
    if chosen == "pytorch3d":
        from . import _pytorch3d

        return _pytorch3d
    return reference


def _check(x: Tensor, y: Tensor, x_mask: Tensor | None, y_mask: Tensor | None) -> None:
    check_tensor("x", x, ndim=3, last=3)
    check_tensor("y", y, ndim=3, last=3)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must share the batch size, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or x.device != y.device:
        raise TypeError(f"x and y must share dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")
    for name, mask, pts in (("x_mask", x_mask, x), ("y_mask", y_mask, y)):
        if mask is None:
            continue
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor")
        if tuple(mask.shape) != tuple(pts.shape[:2]) or mask.device != pts.device:
            raise ValueError(f"{name} must have shape {tuple(pts.shape[:2])} on {pts.device}, "
                             f"got {tuple(mask.shape)} on {mask.device}")
    if x.device.type == "cpu":  # NaN breaks the KD-tree; on CUDA the check would cost a sync per call
        check_finite("x", x)
        check_finite("y", y)


def knn(x: Tensor, y: Tensor, *, x_mask: Tensor | None = None, y_mask: Tensor | None = None,
        backend: str = "auto") -> KNN:
    """Nearest neighbour (K=1) in both directions.

    Args:
        x: (B, N, 3) and y: (B, P, 3) point clouds.
        x_mask, y_mask: optional bool (B, N) / (B, P); a masked point is neither query nor candidate.
        backend: "auto" | "triton" | "reference" | "pytorch3d" (explicit only: never chosen by auto).
    Returns:
        ``KNN(dist_xy (B, N), idx_xy (B, N), dist_yx (B, P), idx_yx (B, P))``, squared distances,
        differentiable w.r.t. x and y; ties to the lowest index (not promised by "pytorch3d"); idx -1
        for masked queries (distance 0) and for queries without a valid candidate (distance inf).
        ``.chamfer(...)`` reduces it to the two directional means.
    """
    _check(x, y, x_mask, y_mask)
    return _backend_module(backend, x, y).knn(x, y, x_mask=x_mask, y_mask=y_mask)


def nearest(x: Tensor, y: Tensor, *, x_mask: Tensor | None = None, y_mask: Tensor | None = None,
            backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Nearest neighbour (K=1) of every x in y only: half of ``knn``'s search.

    Args and conventions as in ``knn``. Returns (dist (B, N) squared, idx (B, N)), equal to
    ``knn``'s ``dist_xy`` and ``idx_xy``.
    """
    _check(x, y, x_mask, y_mask)
    return _backend_module(backend, x, y).nearest(x, y, x_mask=x_mask, y_mask=y_mask)


def chamfer(x: Tensor, y: Tensor, *, x_mask: Tensor | None = None, y_mask: Tensor | None = None,
            squared: bool = False, reduction: str = "mean", backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The two directional Chamfer terms: ``knn(x, y, ...).chamfer(squared=..., reduction=...)``.

    Args:
        x: (B, N, 3), y: (B, P, 3); masks as in ``knn`` (a masked point is neither query nor candidate;
            ``KNN.chamfer``'s query masks keep every point a candidate).
        squared: average squared distances (Chamfer-L2) instead of Euclidean ones (Chamfer-L1).
        reduction: "mean" (over every valid point of the batch, a scalar) or "batch" ((B,) means).
    Returns:
        (x_to_y, y_to_x): mean distance from each valid x to its nearest valid y, and back.
        A direction with no valid query averages to 0.
    """
    if reduction not in reference.REDUCTIONS:
        raise ValueError(f"reduction must be one of {reference.REDUCTIONS}, got {reduction!r}")
    result = knn(x, y, x_mask=x_mask, y_mask=y_mask, backend=backend)
    return result.chamfer(squared=squared, reduction=reduction)
