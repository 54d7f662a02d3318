"""Backend choice: CPU tensors under "auto" run the reference; backend="triton" runs the kernel under
the interpreter and raises RuntimeError without CUDA and without TRITON_INTERPRET (checked in a
subprocess, since the interpreter flag is read when triton is imported); ``python -m npkernels.env``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from kernel_cases import FP32_TOL, NARROW, assert_close_named, make_inputs, make_weights

import npkernels
from npkernels import _dispatch
from npkernels.coupling import reference

ROOT = Path(__file__).resolve().parents[2]


def _case():
    w = make_weights(NARROW["C"], NARROW["H"], NARROW["HP"], NARROW["P"])
    x, cond, affine = make_inputs(1, 9, 2, NARROW["C"])
    return x, cond, w, affine


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NPKERNELS_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_auto_on_cpu_runs_reference(monkeypatch):
    x, cond, w, affine = _case()
    assert _dispatch.select_backend("coupling", x, cond) == "reference"
    monkeypatch.setattr(_dispatch, "kernel_module", lambda family: pytest.fail(f"kernel used for {family}"))
    monkeypatch.setattr(npkernels.coupling, "kernel_module", _dispatch.kernel_module)
    out = npkernels.coupling_inverse(x, cond, w, affine)
    torch.testing.assert_close(out, reference.coupling_inverse(x, cond, w, affine), rtol=0, atol=0)


@pytest.mark.triton
def test_explicit_triton_runs_kernel():
    if not (torch.cuda.is_available() or _dispatch.interpreter_enabled()):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    x, cond, w, affine = _case()
    out = npkernels.coupling_inverse(x, cond, w, affine, backend="triton")
    assert_close_named("y", out, reference.coupling_inverse(x, cond, w, affine), **FP32_TOL)
    g = npkernels.implicit_union(x, cond, w, affine, backend="triton")
    assert torch.isfinite(g.value).all()
    k = npkernels.knn(x, x.flip(1), backend="triton")
    assert (k.idx_xy >= 0).all()


SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from kernel_cases import make_inputs, make_weights
    import npkernels
    from npkernels.patch import accelerate
    w = make_weights(6, 16, 16, 16)
    x, cond, affine = make_inputs(1, 4, 2, 6)
    calls = {{
        "coupling_inverse": lambda: npkernels.coupling_inverse(x, cond, w, affine, backend="triton"),
        "coupling_forward": lambda: npkernels.coupling_forward(x[:, :, None].expand(-1, -1, 2, -1), cond, w,
                                                               affine, backend="triton"),
        "implicit_union": lambda: npkernels.implicit_union(x, cond, w, affine, backend="triton"),
        "knn": lambda: npkernels.knn(x, x, backend="triton"),
        "accelerate": lambda: accelerate(torch.nn.Linear(1, 1), backend="triton"),
    }}
    for name, call in calls.items():
        try:
            call()
        except RuntimeError as err:
            print(name, "RuntimeError", str(err).splitlines()[0])
        else:
            print(name, "no error")
    accelerate(torch.nn.Linear(1, 1), backend="auto")
    print("auto ok")
""")


def test_explicit_triton_without_cuda_or_interpreter_raises():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    script = SCRIPT.format(tests=str(Path(__file__).resolve().parent))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line)
    for name in ("coupling_inverse", "coupling_forward", "implicit_union", "knn", "accelerate"):
        assert lines[name].startswith("RuntimeError"), (name, lines[name])
    assert lines["auto"] == "ok"


def test_env_report():
    proc = subprocess.run(
        [sys.executable, "-m", "npkernels.env"],
        capture_output=True, text=True, check=False, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for word in ("torch", "triton", "coupling", "implicit", "knn", "pytorch3d", "labeller"):
        assert word in proc.stdout
