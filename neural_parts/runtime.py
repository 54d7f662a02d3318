"""Process set-up shared by the commands: device choice, seeds, threads and float32 matmul precision."""
from __future__ import annotations

import random

import numpy as np
import torch

from .config import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu", "cuda" or "cuda:N" otherwise (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's global and torch's RNGs (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure(runtime, rank: int = 0) -> torch.device:
    """Apply a ``RuntimeConfig``: seeds, CPU threads, matmul precision; returns the chosen device.

    ``rank`` (torchrun): the RNGs of rank r get ``distributed.rank_seed(seed, r)`` (rank 0: ``runtime.seed``).
    """
    from .distributed import rank_seed

    seed_everything(rank_seed(runtime.seed, rank))
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    torch.set_float32_matmul_precision("high" if runtime.tf32 else "highest")
    return pick_device(runtime.device)
