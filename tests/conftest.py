"""Suite-wide setup, kept minimal: folder-specific fixtures live in each folder's conftest.py.

Triton's CPU interpreter must be chosen before triton is imported (decisions 4): without an
NVIDIA GPU, ``TRITON_INTERPRET=1`` is set here unless the caller already set it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
