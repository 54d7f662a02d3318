"""Ahead-of-time sm_90 compilation of every Triton kernel at production widths (no GPU needed).

Catches what the interpreter cannot: dots with K or N < 16, ops the NVIDIA backend rejects,
shared memory over the 227 KiB per-block limit, and dots that do not reach the tensor cores
(TF32 and bf16 variants must contain ``wgmma``, the backward's 32-row tiles ``mma``; the IEEE-fp32
variant is an FMA path by design).
The compilation runs in a subprocess without TRITON_INTERPRET (see aot_sm90.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMEM_LIMIT = 232448  # bytes per block on sm_90 (227 KiB)
HERE = Path(__file__).resolve().parent


def _can_aot() -> str | None:
    try:
        import triton  # noqa: F401
        from triton.backends import backends
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
        from triton.compiler import ASTSource  # noqa: F401

        if "nvidia" not in backends:
            return "this Triton has no NVIDIA backend"
        try:
            get_ptxas(90)  # triton 3.6: get_ptxas(arch)
        except TypeError:
            get_ptxas()
    except Exception as err:  # noqa: BLE001 - any missing piece: this Triton cannot AOT-compile here
        return f"this Triton cannot compile for sm_90 here: {type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict]:
    reason = _can_aot()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parents[1]), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(HERE / "aot_sm90.py")],
        capture_output=True, text=True, check=False, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


NAMES = [
    "coupling-inverse-fp32-tf32",
    "coupling-forward-fp32-tf32",
    "implicit-fp32-tf32",
    "coupling-backward-inverse-fp32-tf32",
    "coupling-backward-forward-fp32-tf32",
    "coupling-backward-inverse-bf16",
    "coupling-backward-forward-bf16",
    "coupling-inverse-fp32-ieee",
    "coupling-inverse-bf16",
    "coupling-forward-bf16",
    "implicit-bf16",
    "knn-masked",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_compiles_for_sm90(compiled, name):
    row = compiled[name]
    assert row["ok"], row.get("error")
    assert row["shared"] <= SMEM_LIMIT, f"{name} needs {row['shared']} B of shared memory"
    if row["uses_dot"] and "ieee" not in name:
        if "backward" in name:  # 32-row tiles (DotConfig.backward) are below wgmma's 64: mma.sync
            assert row["mma"] > 0, f"{name}: no tensor-core mma in the PTX"
        else:
            assert row["wgmma"] > 0, f"{name}: no wgmma in the PTX"
