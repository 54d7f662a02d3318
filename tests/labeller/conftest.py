"""Fixture of the inside-mesh labeller tests: the compiled extension, built once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ext():
    """The npkernels._C module (prebuilt or JIT-built once); skips when it cannot be built."""
    from npkernels._ext import ext_status, get_ext

    module = get_ext()
    if module is None:
        pytest.skip(f"inside-mesh extension unavailable: {ext_status()}")
    return module

