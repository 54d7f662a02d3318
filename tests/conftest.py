"""Suite-wide setup, kept minimal: folder-specific fixtures live in each folder's conftest.py.

Triton's CPU interpreter must be chosen before triton is imported (decisions 4): without an
NVIDIA GPU, ``TRITON_INTERPRET=1`` is set here unless the caller already set it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

SHARED_MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes"


@pytest.fixture
def shared_meshes() -> Path:
    """../shared/data/meshes (the real test meshes); skips when that checkout is absent."""
    if not SHARED_MESHES.is_dir():
        pytest.skip(f"real test meshes not found at {SHARED_MESHES} (needs the shared data checkout)")
    return SHARED_MESHES


def pytest_collection_modifyitems(items):
    """Tests that use the real meshes carry the ``needs_shared`` marker (select with -m)."""
    for item in items:
        if "shared_meshes" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_shared)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Commands run in-process (train, fit) set torch's matmul precision and thread count for their run;
    every test starts from the suite's settings again."""
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    yield
    torch.set_float32_matmul_precision(precision)
    torch.set_num_threads(threads)
