"""Small host-side helpers shared by the ops."""
from __future__ import annotations

import torch


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Allocate an output tensor; the one place tests poison with NaN to catch unwritten elements."""
    return torch.empty(shape, dtype=dtype, device=device)


def check_tensor(name: str, t, ndim: int | None = None, last: int | None = None,
                 floating: bool = True) -> torch.Tensor:
    """Validate a tensor argument, raising TypeError/ValueError that name it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if last is not None and t.shape[-1] != last:
        raise ValueError(f"{name} must have last dimension {last}, got shape {tuple(t.shape)}")
    return t


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise ValueError if ``t`` holds NaN or inf: min and max propagate NaN and expose inf, so no
    N-sized temporary is made (one device sync on CUDA)."""
    if t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all()):
        raise ValueError(f"{name} contains NaN or inf values")
