"""First-use check of the Triton kernels (npkernels._selfcheck), exercised on CPU: the interpreter runs
the kernels and ``AUTO_KERNEL_DEVICES`` is widened to "cpu" so auto takes its kernel path. A wrong
kernel (perturbed result) or an exploding one makes auto fall back to the reference with one WARNING
and makes an explicit backend="triton" raise; results are cached per family, device, dtype and
float32 matmul precision."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_cases import NARROW, make_inputs, make_weights

import npkernels
from npkernels import _dispatch, _selfcheck
from npkernels.coupling import reference as coupling_reference

pytestmark = pytest.mark.triton

if not _dispatch.interpreter_enabled():
    pytest.skip("the CPU tests of the check need TRITON_INTERPRET=1", allow_module_level=True)

kt = pytest.importorskip("npkernels.coupling._triton")
ki = pytest.importorskip("npkernels.implicit._triton")
kn = pytest.importorskip("npkernels.knn._triton")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def auto_uses_kernels_on_cpu(monkeypatch):
    monkeypatch.delenv("NPKERNELS_BACKEND", raising=False)
    monkeypatch.delenv("NPKERNELS_SELF_CHECK", raising=False)
    monkeypatch.setattr(_dispatch, "AUTO_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(_selfcheck, "_RESULTS", {})
    monkeypatch.setattr(_dispatch, "_warned", set())


def _case():
    w = make_weights(NARROW["C"], NARROW["H"], NARROW["HP"], NARROW["P"])
    x, cond, affine = make_inputs(1, 6, 2, NARROW["C"])
    return x, cond, w, affine


def _counting(monkeypatch, module, name, change=None):
    """Replace module.name by a wrapper that counts calls and applies ``change`` to the result."""
    real = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out if change is None else change(out)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _perturb(out):
    """A kernel that is slightly wrong: +1e-3 on the first output."""
    if isinstance(out, tuple) and not hasattr(out, "_fields"):
        return (out[0] + 1e-3, *out[1:])
    if hasattr(out, "_fields"):
        return out._replace(**{out._fields[0]: getattr(out, out._fields[0]) + 1e-3})
    return out + 1e-3


def _explode(*args, **kwargs):
    raise RuntimeError("PTX compile failed: out of resources (injected)")


def test_auto_runs_the_check_once_then_the_kernel(monkeypatch):
    x, cond, w, affine = _case()
    calls = _counting(monkeypatch, kt, "coupling_inverse")
    for _ in range(3):
        out = npkernels.coupling_inverse(x, cond, w, affine)
    want = coupling_reference.coupling_inverse(x, cond, w, affine)
    torch.testing.assert_close(out, want, rtol=2e-4, atol=2e-5)
    assert len(calls) == 1 + 3  # the check, then every call
    (result,) = _selfcheck._RESULTS.values()
    assert result.ok and result.op == "coupling" and result.device == "cpu" and result.precision == "highest"
    assert 0 <= result.max_error <= result.tolerance


def test_wrong_kernel_auto_falls_back_with_one_warning(monkeypatch, caplog):
    x, cond, w, affine = _case()
    calls = _counting(monkeypatch, kt, "coupling_inverse", _perturb)
    with caplog.at_level(logging.INFO, logger="npkernels"):
        outs = [npkernels.coupling_inverse(x, cond, w, affine) for _ in range(3)]
    want = coupling_reference.coupling_inverse(x, cond, w, affine)
    for out in outs:  # the reference, exactly
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert len(calls) == 1  # the check only: never again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "coupling Triton kernel failed its first-use check on cpu" in message and "error" in message
    assert "runs the PyTorch reference from now on" in message
    with pytest.raises(RuntimeError, match="failed its first-use check"):
        npkernels.coupling_inverse(x, cond, w, affine, backend="triton")  # explicit: no silent fallback


@pytest.mark.parametrize("family", ["coupling", "implicit", "knn"])
def test_exploding_kernel(monkeypatch, caplog, family):
    x, cond, w, affine = _case()
    z = x[:, :, None].expand(-1, -1, 2, -1)
    module, name, call = {
        "coupling": (kt, "coupling_forward", lambda b: npkernels.coupling_forward(z, cond, w, affine, backend=b)),
        "implicit": (ki, "implicit_union", lambda b: npkernels.implicit_union(x, cond, w, affine, backend=b).value),
        "knn": (kn, "knn", lambda b: npkernels.knn(x, x.flip(1), backend=b).dist_xy),
    }[family]
    monkeypatch.setattr(module, name, _explode)
    with caplog.at_level(logging.WARNING, logger="npkernels"):
        got = call("auto")
    torch.testing.assert_close(got, call("reference"), rtol=0, atol=0)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"the {family} Triton kernel failed" in warning and "PTX compile failed" in warning
    with pytest.raises(RuntimeError, match="PTX compile failed"):
        call("triton")


@pytest.mark.parametrize("family,module,name", [("implicit", "ki", "implicit_union"), ("knn", "kn", "knn")])
def test_wrong_kernel_detected(monkeypatch, family, module, name):
    _counting(monkeypatch, globals()[module], name, _perturb)
    result = _selfcheck.check(family, "cpu", torch.float32)
    assert not result.ok and result.max_error > result.tolerance and result.detail


def test_cached_per_precision_and_switch_off(monkeypatch):
    x, cond, w, affine = _case()
    calls = _counting(monkeypatch, ki, "implicit_union")
    previous = torch.get_float32_matmul_precision()
    try:
        for precision in ("highest", "high", "highest"):
            torch.set_float32_matmul_precision(precision)
            npkernels.implicit_union(x, cond, w, affine)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert len(calls) == 2 + 3  # two checks (highest, high), three calls
    assert sorted(k[3] for k in _selfcheck._RESULTS) == ["high", "highest"]
    monkeypatch.setenv("NPKERNELS_SELF_CHECK", "0")
    monkeypatch.setattr(_selfcheck, "_RESULTS", {})
    monkeypatch.setattr(ki, "implicit_union", _explode)
    with pytest.raises(RuntimeError, match="injected"):  # no check: the (broken) kernel runs as asked
        npkernels.implicit_union(x, cond, w, affine)
    assert _selfcheck._RESULTS == {}


def test_env_check_prints_the_table():
    env = {k: v for k, v in os.environ.items() if k != "NPKERNELS_BACKEND"}
    path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-m", "npkernels.env", "--check"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout.split("op ", 1)[1].splitlines()
    assert table[0].split() == ["device", "dtype", "precision", "result", "max", "error", "tolerance",
                                "seconds"]
    rows = [line.split() for line in table[1:] if line.strip()]
    assert {(r[0], r[3]) for r in rows} == {(f, p) for f in _selfcheck.FAMILIES for p in ("highest", "high")}
    assert all(r[1] == "cpu" and r[2] == "float32" and r[4] == "ok" for r in rows)
