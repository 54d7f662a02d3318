"""Fixtures of the kernel tests: every output npkernels allocates starts as garbage (NaN for floats,
the dtype's max for integers), so an element a kernel forgets to write fails the comparison."""

from __future__ import annotations

import pytest
import torch

import npkernels._utils


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    real = npkernels._utils.empty

    def poisoned(*shape, dtype, device):
        out = real(*shape, dtype=dtype, device=device)
        if dtype == torch.bool:
            return out.fill_(True)
        return out.fill_(float("nan") if dtype.is_floating_point else torch.iinfo(dtype).max)

    monkeypatch.setattr(npkernels._utils, "empty", poisoned)
    yield
