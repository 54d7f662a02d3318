"""Suite-wide setup, kept minimal: folder-specific fixtures live in each folder's conftest.py.

Triton's CPU interpreter must be chosen before triton is imported (decisions 4): without an
NVIDIA GPU, ``TRITON_INTERPRET=1`` is set here unless the caller already set it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Commands run in-process (train, fit) set torch's matmul precision and thread count for their run;
    every test starts from the suite's settings again."""
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    yield
    torch.set_float32_matmul_precision(precision)
    torch.set_num_threads(threads)
