"""PyTorch3D's ``knn_points`` (K=1) as the explicit knn backend ``backend="pytorch3d"``.

``backend="auto"`` never picks it: which of several equidistant points it returns is not promised
to be the lowest index (ours is), and that cannot be verified where PyTorch3D is not installed. Only
the indices come from PyTorch3D; distances (and gradients) are recomputed from them exactly as the
reference does. Masks are not supported (ValueError).
"""

from __future__ import annotations

import torch

from .reference import KNN, gather_sq_dist


def _indices(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, N) int64 index of each query's nearest candidate; -1 when there is no candidate."""
    if q.shape[1] == 0 or c.shape[1] == 0:
        return torch.full(q.shape[:2], -1, dtype=torch.int64, device=q.device)
    from pytorch3d.ops import knn_points

    return knn_points(q.detach(), c.detach(), K=1).idx[..., 0]


def _no_masks(x_mask, y_mask) -> None:
    if x_mask is not None or y_mask is not None:
        raise ValueError("backend='pytorch3d' does not support x_mask / y_mask (use 'triton' or 'reference')")


def nearest(x, y, *, x_mask=None, y_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour of every x in y: (squared distance (B, N), index (B, N))."""
    _no_masks(x_mask, y_mask)
    idx = _indices(x, y)
    return gather_sq_dist(x, y, idx), idx


def knn(x, y, *, x_mask=None, y_mask=None) -> KNN:
    """Nearest neighbour in both directions, as ``npkernels.knn``."""
    _no_masks(x_mask, y_mask)
    idx_xy, idx_yx = _indices(x, y), _indices(y, x)
    return KNN(gather_sq_dist(x, y, idx_xy), idx_xy, gather_sq_dist(y, x, idx_yx), idx_yx)
