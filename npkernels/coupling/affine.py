"""The per-primitive affine heads of SimpleNVP-like modules (ours and the authors').

sigma = elu(scales(C)) + 1 > 0; q = rotations(C) normalised (w, x, y, z), R = R(q); T = translations(C).
A missing head means identity (sigma = 1, R = I, T = 0), as with the authors' ``normalize`` /
``explicit_affine`` flags off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import Affine

QUATERNION_EPS = 1e-8


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of quaternions q (..., 4) = (w, x, y, z), normalised here.

    Same matrix as the authors' ``quaternions_to_rotation_matrices`` for unit quaternions; the
    norm is guarded by ``QUATERNION_EPS`` so a zero quaternion gives the identity, not NaN.
    """
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + QUATERNION_EPS ** 2)
    w, x, y, z = q.unbind(-1)
    n = (q * q).sum(-1)
    s = torch.where(n > 0, 2.0 / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n))
    rows = [
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def affine_from_heads(cond: Tensor, scales: nn.Module | None, rotations: nn.Module | None,
                      translations: nn.Module | None) -> Affine:
    """Evaluate the heads on cond (B, M, C) -> ``Affine`` with (B, M, 3), (B, M, 3, 3), (B, M, 3)."""
    B, M, _ = cond.shape
    if scales is not None:
        sigma = F.elu(scales(cond)) + 1
    else:
        sigma = cond.new_ones(B, M, 3)
    if rotations is not None:
        R = quaternion_to_matrix(rotations(cond))
    else:
        R = torch.eye(3, dtype=cond.dtype, device=cond.device).expand(B, M, 3, 3)
    T = translations(cond) if translations is not None else cond.new_zeros(B, M, 3)
    return Affine(sigma, R, T)
