"""Backend choice: CPU tensors under "auto" run the reference; backend="triton" runs the kernel under
the interpreter and raises RuntimeError without CUDA and without TRITON_INTERPRET (checked in a
subprocess, since the interpreter flag is read when triton is imported); ``python -m npkernels.env``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

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


# --- one vocabulary for every op family (npkernels._dispatch.select_backend) -------------------------


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """No cached first-use checks or log lines from earlier tests; NPKERNELS_BACKEND unset."""
    from npkernels import _selfcheck

    monkeypatch.delenv("NPKERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_selfcheck, "_RESULTS", {})
    monkeypatch.setattr(_dispatch, "_warned", set())


def test_unknown_backend_names(fresh_dispatch, monkeypatch):
    x, cond, w, affine = _case()
    with pytest.raises(ValueError, match=r"for coupling must be one of \('auto', 'reference', 'triton'\)"):
        npkernels.coupling_inverse(x, cond, w, affine, backend="pytorch3d")
    with pytest.raises(ValueError, match="backend for inside_mesh"):
        _dispatch.select_backend("inside_mesh", backend="triton")
    monkeypatch.setenv("NPKERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="NPKERNELS_BACKEND must be one of"):
        npkernels.coupling_inverse(x, cond, w, affine)


def test_env_backend_applies_to_the_families_that_have_the_kernel(fresh_dispatch, monkeypatch):
    monkeypatch.setenv("NPKERNELS_BACKEND", "reference")
    for family in _dispatch.KERNELS:
        assert _dispatch.select_backend(family) == "reference"
    monkeypatch.setenv("NPKERNELS_BACKEND", "extension")  # inside_mesh only; the others stay on auto
    monkeypatch.setattr(_dispatch, "_extension_unusable", lambda: None)
    assert _dispatch.select_backend("inside_mesh") == "extension"
    assert _dispatch.select_backend("coupling", torch.zeros(1)) == "reference"  # CPU tensors: auto's choice
    monkeypatch.setenv("NPKERNELS_BACKEND", "pytorch3d")
    monkeypatch.setattr(_dispatch.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="NPKERNELS_BACKEND='pytorch3d' for knn, but pytorch3d is not"):
        npkernels.knn(torch.rand(1, 4, 3), torch.rand(1, 5, 3))


def test_explicit_extension_raises_when_unavailable(fresh_dispatch, monkeypatch):
    from npkernels import _ext

    monkeypatch.setattr(_ext, "get_ext", lambda: None)
    with pytest.raises(RuntimeError, match="backend='extension' for inside_mesh, but the npkernels._C"):
        npkernels.inside_mesh(torch.eye(3), torch.tensor([[0, 1, 2]]), torch.zeros(2, 3), backend="extension")


@pytest.mark.triton
def test_float64_explicit_triton_raises_auto_routes_to_reference(fresh_dispatch, monkeypatch, caplog):
    if not _dispatch.interpreter_enabled():
        pytest.skip("needs TRITON_INTERPRET=1 to force auto's kernel path on CPU")
    x, cond, w, affine = _case()
    to64 = lambda t: t.detach().double()  # noqa: E731
    w64 = type(w)(*map(to64, w[:4]), tuple(type(lw)(*map(to64, lw)) for lw in w.layers))
    args = (to64(x), to64(cond), w64, type(affine)(*map(to64, affine)))
    with pytest.raises(RuntimeError, match="Triton kernels take .* got torch.float64"):
        npkernels.coupling_inverse(*args, backend="triton")
    with pytest.raises(RuntimeError, match="float64"):
        npkernels.implicit_union(*args, backend="triton")
    with pytest.raises(RuntimeError, match="float64"):
        npkernels.knn(args[0], args[0], backend="triton")
    monkeypatch.setattr(_dispatch, "AUTO_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(_dispatch, "kernel_module", lambda family: pytest.fail(f"kernel used for {family}"))
    monkeypatch.setattr(npkernels.coupling, "kernel_module", _dispatch.kernel_module)
    with caplog.at_level("INFO", logger="npkernels"):
        for _ in range(2):
            out = npkernels.coupling_inverse(*args)
    torch.testing.assert_close(out, reference.coupling_inverse(*args), rtol=0, atol=0)
    lines = [r.getMessage() for r in caplog.records if "float64" in r.getMessage()]
    assert lines == ["npkernels: coupling runs the PyTorch reference on cpu for torch.float64 "
                     "(no torch.float64 kernel)"]


class _FakePyTorch3D:
    """A stand-in ``pytorch3d`` package whose ``ops.knn_points`` records its calls and answers by brute
    force, returning the HIGHEST index among equidistant points (unlike ours)."""

    def __init__(self):
        import importlib.machinery
        import types

        self.calls = 0
        self.package = types.ModuleType("pytorch3d")
        self.package.__spec__ = importlib.machinery.ModuleSpec("pytorch3d", None)
        self.ops = types.ModuleType("pytorch3d.ops")
        self.ops.__spec__ = importlib.machinery.ModuleSpec("pytorch3d.ops", None)
        self.ops.knn_points = self.knn_points
        self.package.ops = self.ops

    def knn_points(self, p1, p2, K=1):
        assert K == 1
        self.calls += 1
        d = ((p1[:, :, None] - p2[:, None]) ** 2).sum(-1)
        flipped = d.flip(-1).argmin(-1)
        return SimpleNamespace(idx=(p2.shape[1] - 1 - flipped)[..., None])

    def install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "pytorch3d", self.package)
        monkeypatch.setitem(sys.modules, "pytorch3d.ops", self.ops)


def test_explicit_pytorch3d_backend(fresh_dispatch, monkeypatch):
    fake = _FakePyTorch3D()
    fake.install(monkeypatch)
    x = torch.tensor([[[0.0, 0, 0], [2.5, 0, 0]]], requires_grad=True)
    y = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]], requires_grad=True)  # x0: y0 and y1 tie
    got = npkernels.knn(x, y, backend="pytorch3d")
    assert fake.calls == 2
    assert got.idx_xy.tolist() == [[1, 2]]  # the fake's tie-breaking, honoured: an explicit request
    torch.testing.assert_close(got.dist_xy, torch.tensor([[1.0, 0.25]]))  # our distances, from its indices
    (gx,) = torch.autograd.grad(got.dist_xy.sum(), x)
    torch.testing.assert_close(gx, torch.tensor([[[-2.0, 0, 0], [-1.0, 0, 0]]]))
    d, idx = npkernels.nearest(x, y, backend="pytorch3d")
    assert idx.tolist() == [[1, 2]] and fake.calls == 3
    with pytest.raises(ValueError, match="backend='pytorch3d' does not support x_mask / y_mask"):
        npkernels.knn(x, y, y_mask=torch.ones(1, 3, dtype=torch.bool), backend="pytorch3d")
    empty = npkernels.knn(x, y[:, :0], backend="pytorch3d")
    assert empty.idx_xy.tolist() == [[-1, -1]] and torch.isinf(empty.dist_xy).all()


@pytest.mark.triton
def test_auto_never_picks_pytorch3d(fresh_dispatch, monkeypatch):
    """With pytorch3d importable and auto choosing kernels (forced on CPU under the interpreter), auto
    runs our Triton knn: the lowest index wins the tie."""
    if not _dispatch.interpreter_enabled():
        pytest.skip("needs TRITON_INTERPRET=1 to force auto's kernel path on CPU")
    fake = _FakePyTorch3D()
    fake.install(monkeypatch)
    monkeypatch.setattr(_dispatch, "AUTO_KERNEL_DEVICES", ("cuda", "cpu"))
    kn = pytest.importorskip("npkernels.knn._triton")
    ran = []
    real = kn.knn
    monkeypatch.setattr(kn, "knn", lambda *a, **k: ran.append(1) or real(*a, **k))
    x = torch.tensor([[[0.0, 0, 0], [2.5, 0, 0]]])
    y = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]])
    got = npkernels.knn(x, y)
    assert fake.calls == 0 and len(ran) >= 1
    assert got.idx_xy.tolist() == [[0, 2]]


def test_environment_variables_have_one_home():
    """Every variable npkernels reads is declared in npkernels/_settings.py and read there: no other
    module touches os.environ except to set torch's TORCH_CUDA_ARCH_LIST default (_build.py)."""
    import re

    from npkernels import _settings

    sources = {p: p.read_text() for p in (ROOT / "npkernels").rglob("*.py")}
    named = {m for text in sources.values() for m in re.findall(r"\bNPKERNELS_[A-Z_]+\b", text)}
    assert named <= set(_settings.VARIABLES), named - set(_settings.VARIABLES)
    readers = {p.name for p, text in sources.items() if re.search(r"os\.environ(?!\[\"TORCH_CUDA_ARCH_LIST\"\] =)|getenv",
                                                               text)}
    assert readers == {"_settings.py", "env.py"}  # env.py lists which declared variables are set
    for name in ("NP_JIT", "NP_VERBOSE", "NP_NO_EXTENSION", "FORCE_ONLY_CPU", '"DEBUG"', '"NVCC_FLAGS"'):
        assert not any(name in text for text in sources.values()), name
    with pytest.raises(KeyError):
        _settings.get("NPKERNELS_UNDECLARED")
