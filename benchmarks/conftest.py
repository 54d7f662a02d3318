"""Benchmark harness for the npkernels ops (pytest-benchmark).

``bench`` fixture: runs ``target`` through ``benchmark.pedantic`` (CUDA-synchronised, warm-up rounds,
one iteration per round) and records op, provider, mode, size, dtype, device, versions, matmul
precision and peak CUDA memory in ``extra_info``. Without a GPU the Triton interpreter is selected
before triton is imported (as in tests/conftest.py) and only the tiny CPU sizes run, once each under
``--benchmark-disable`` (the CI smoke test of the harness). ``--bench-rounds`` / ``--bench-warmup``
override the rounds (benchmarks/gpu_check.py uses them to fit its time budget).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-rounds", type=int, default=None, help="timed rounds (default: 20 on CUDA)")
    parser.addoption("--bench-warmup", type=int, default=None, help="warm-up rounds (default: 3 on CUDA)")


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_timing: a size measured on CPU machines only when timing is on")


def pytest_collection_modifyitems(config, items):
    untimed = config.getoption("benchmark_disable", False)
    reason = ("CPU measurement size: runs only on CPU machines with timing on" if untimed or torch.cuda.is_available()
              else None)
    for item in items:
        if not item.get_closest_marker("cpu_timing"):
            continue
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif getattr(item, "callspec", None) and item.callspec.params.get("provider") == "triton":
            item.add_marker(pytest.mark.skip(reason="the Triton CPU interpreter is a test tool, not timed"))


@pytest.fixture
def bench(benchmark, request):
    rounds_option = request.config.getoption("--bench-rounds")
    warmup_option = request.config.getoption("--bench-warmup")

    def run(target, *, op: str, provider: str, mode: str, size: str, dtype=torch.float32, extra=None):
        cuda = torch.cuda.is_available()
        benchmark.group = f"{op}-{mode}-{size}"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def timed():
            out = target()
            if cuda:
                torch.cuda.synchronize()
            return out

        rounds = 20 if cuda else (5 if size.startswith("cpu-") else 1)
        warmup = 3 if cuda else (1 if size.startswith("cpu-") else 0)
        result = benchmark.pedantic(
            timed, rounds=rounds_option or rounds, iterations=1,
            warmup_rounds=warmup if warmup_option is None else warmup_option,
        )
        import importlib.metadata as md

        try:
            triton_version = md.version("triton")
        except md.PackageNotFoundError:
            triton_version = "none"
        benchmark.extra_info.update(
            op=op,
            provider=provider,
            mode=mode,
            size=size,
            dtype=str(dtype),
            device=torch.cuda.get_device_name() if cuda else "cpu",
            torch=torch.__version__,
            triton=triton_version,
            matmul_precision=torch.get_float32_matmul_precision(),
            peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            **(extra or {}),
        )
        return result

    return run
