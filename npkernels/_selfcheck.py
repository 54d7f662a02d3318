"""First-use check of the Triton kernels against their references, once per process and key.

Before a Triton kernel family first runs on a device of ``_dispatch.AUTO_KERNEL_DEVICES`` (CUDA), in
a dtype and under a ``torch.get_float32_matmul_precision()``, its kernels run once on a small fixed
input (``CASES``) and are compared with the float64 reference on the same (rounded) inputs:
- coupling: ``coupling_inverse`` and ``coupling_forward`` with the log-det, values and the first-order
  gradients of every input (the forward and the fused backward kernels, both directions);
- implicit: ``implicit_union`` values; knn: ``knn`` in both directions.
An output passes when its largest error, relative to its largest float64 magnitude, is at most
``max(FACTOR * error of the reference run in the same dtype and precision, FLOOR[...])``; knn's returned
distances within ``FLOOR``, and the points it chose as near as the nearest to fp32 rounding
(``KNN_TOLERANCE``: a tie may go either way only within rounding).

Widths: the shipped model's on CUDA, narrow ones in the interpreter (``CASES``). The run costs
milliseconds, plus compiling the kernel variants it launches the first time on a machine (Triton
keeps compiled kernels in its on-disk cache). ``NPKERNELS_SELF_CHECK=0`` skips it.

``passed`` (what ``backend="auto"`` asks) logs one WARNING on a failure and returns False, so the op
runs the reference from then on; ``require`` (an explicit ``backend="triton"``) raises instead.
``python -m npkernels.env --check`` runs ``run_all`` and prints the table.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import NamedTuple

import torch

from . import _settings
from ._dispatch import kernel_module, log_once

FAMILIES = ("coupling", "implicit", "knn")
CASES = {  # widths of the coupling stack and sizes per device type: the shipped model's on CUDA
    "cuda": {"C": 512, "H": 256, "HP": 256, "P": 128, "L": 4, "B": 2, "N": 37, "M": 3,
             "knn_N": 301, "knn_P": 259},
    "cpu": {"C": 12, "H": 32, "HP": 16, "P": 16, "L": 4, "B": 1, "N": 7, "M": 2, "knn_N": 70, "knn_P": 67},
}
FACTOR = 8.0
FLOOR = {"highest": 2e-5, "tf32": 2e-3, "16-bit": 3e-2}
KNN_TOLERANCE = 1e-5


class CheckResult(NamedTuple):
    """One check: what ran, whether it passed, the largest relative error and its bound, the time."""

    op: str
    device: str
    dtype: str
    precision: str
    ok: bool
    max_error: float
    tolerance: float
    seconds: float
    detail: str  # the failing output, or the error, or ""


_RESULTS: dict[tuple[str, str, torch.dtype, str], CheckResult] = {}
_LOCK = threading.Lock()  # one check at a time, so concurrent first calls run it once


def floor(dtype: torch.dtype) -> float:
    """The smallest bound of a relative error in ``dtype`` under the current float32 matmul precision."""
    if dtype != torch.float32:
        return FLOOR["16-bit"]
    return FLOOR["highest"] if torch.get_float32_matmul_precision() == "highest" else FLOOR["tf32"]


def _coupling_case(device: torch.device, dtype: torch.dtype, with_grad: bool = True):
    """(x (B, N, 3), cond (B, M, C), CouplingWeights, Affine, z (B, N, M, 3) on the sphere of radius 0.25)
    in ``dtype`` on ``device``, every tensor but the masks requiring grad when ``with_grad``."""
    from .coupling import Affine, CouplingWeights, LayerWeights
    from .coupling.affine import quaternion_to_matrix

    w = CASES[device.type]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0, shift=0.0):
        t = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale + shift
        return t.to(device, dtype).requires_grad_(with_grad)

    def linear(n_out, n_in):  # PyTorch Linear's initial magnitudes
        return rand(n_out, n_in, scale=n_in ** -0.5), rand(n_out, scale=n_in ** -0.5)

    layers = []
    for i in range(w["L"]):
        mask = torch.ones(3, dtype=dtype, device=device)
        mask[i % 3] = 0
        heads = [t for _ in "st" for n_in, n_out in ((w["C"] + w["P"], w["H"]), (w["H"], w["H"]), (w["H"], 3))
                 for t in linear(n_out, n_in)]
        layers.append(LayerWeights(mask, *heads))
    weights = CouplingWeights(*linear(w["HP"], 3), *linear(w["P"], w["HP"]), tuple(layers))
    B, N, M = w["B"], w["N"], w["M"]
    q = torch.randn(B, M, 4, generator=gen, dtype=torch.float64)
    affine = Affine(rand(B, M, 3, scale=0.5, shift=1.5),
                    quaternion_to_matrix(q).to(device, dtype).requires_grad_(with_grad),
                    rand(B, M, 3, scale=0.1))
    z = torch.nn.functional.normalize(torch.randn(B, N, M, 3, generator=gen, dtype=torch.float64), dim=-1)
    z = (0.25 * z).to(device, dtype).requires_grad_(with_grad)
    return rand(B, N, 3, scale=0.5), rand(B, M, w["C"]), weights, affine, z


def _as(tree, dtype: torch.dtype):
    """The same nested tuple of tensors, detached, in ``dtype``, requiring grad where the original did."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(dtype).requires_grad_(tree.requires_grad)
    return type(tree)(*(_as(t, dtype) for t in tree)) if hasattr(tree, "_fields") else type(tree)(
        _as(t, dtype) for t in tree)


def _leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree] if tree.requires_grad else []
    return [t for sub in tree for t in _leaves(sub)]


def _coupling_outputs(fns, case) -> list[torch.Tensor]:
    """Outputs of inverse(x) and forward(z), with log-dets, and the gradients of every leaf, flattened."""
    x, cond, weights, affine, z = case
    inverse, forward = fns
    outs = [*inverse(x, cond, weights, affine, return_log_det=True),
            *forward(z, cond, weights, affine, return_log_det=True)]
    gen = torch.Generator().manual_seed(1)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    leaves = _leaves(case)
    grads = torch.autograd.grad(outs, leaves, ups, allow_unused=True)
    return [o.detach() for o in outs] + [torch.zeros_like(t) if g is None else g
                                         for t, g in zip(leaves, grads)]


def _implicit_outputs(fn, case) -> list[torch.Tensor]:
    with torch.no_grad():
        return [fn(*case[:4], radius=0.25, per_primitive=False).value]


def compare(got: list[torch.Tensor], same: list[torch.Tensor], truth: list[torch.Tensor],
            dtype: torch.dtype) -> tuple[float, float, str]:
    """(largest relative error, its bound, first failing output or "") of kernel outputs ``got`` against
    the float64 ``truth``, with ``same`` the reference's outputs in the kernel's dtype and precision: an
    output passes when max|got - truth| / max|truth| <= max(FACTOR * the same for ``same``, the floor of
    ``dtype`` under the current float32 matmul precision)."""
    worst, bound_at_worst, failing = 0.0, 0.0, ""
    for i, (g, r, t) in enumerate(zip(got, same, truth)):
        scale = float(t.abs().max()) if t.numel() else 1.0
        scale = scale if scale > 0 else 1.0
        err = float((g.double() - t).abs().max()) / scale if t.numel() else 0.0
        ref_err = float((r.double() - t).abs().max()) / scale if t.numel() else 0.0
        bound = max(FACTOR * ref_err, floor(dtype))
        if not err <= bound and not failing:  # NaN fails too
            failing = f"output {i} ({tuple(t.shape)}): error {err:.3g} > {bound:.3g}"
        if err >= worst or err != err:
            worst, bound_at_worst = err, bound
    return worst, bound_at_worst, failing


def _run_coupling(device, dtype):
    from .coupling import reference

    case = _coupling_case(device, dtype)
    kt = kernel_module("coupling")
    got = _coupling_outputs((kt.coupling_inverse, kt.coupling_forward), case)
    fns = (reference.coupling_inverse, reference.coupling_forward)
    truth = _coupling_outputs(fns, _as(case, torch.float64))
    return compare(got, _coupling_outputs(fns, case), truth, dtype)


def _run_implicit(device, dtype):
    from .implicit import reference

    case = _coupling_case(device, dtype, with_grad=False)
    got = _implicit_outputs(kernel_module("implicit").implicit_union, case)
    same = _implicit_outputs(reference.implicit_union, case)
    return compare(got, same, _implicit_outputs(reference.implicit_union, _as(case, torch.float64)), dtype)


def _run_knn(device, dtype):
    from .knn import reference

    gen = torch.Generator().manual_seed(2)
    case = CASES[device.type]
    x, y = (torch.rand(case["B"], n, 3, generator=gen, dtype=torch.float64).to(device, dtype)
            for n in (case["knn_N"], case["knn_P"]))
    got = kernel_module("knn").knn(x, y)
    x64, y64 = x.double(), y.double()
    truth = reference.knn(x64, y64)
    worst, bound_at_worst, failing = 0.0, 0.0, ""
    for name, q, c, idx, dist, want in (("x->y", x64, y64, got.idx_xy, got.dist_xy, truth.dist_xy),
                                        ("y->x", y64, x64, got.idx_yx, got.dist_yx, truth.dist_yx)):
        scale = float(want.abs().max()) or 1.0
        chosen = reference.gather_sq_dist(q, c, idx)  # how far the kernel's picks are, in float64
        errors = (("chosen points", float((chosen - want).abs().max()) / scale, KNN_TOLERANCE),
                  ("distances", float((dist.double() - want).abs().max()) / scale, floor(dtype)))
        for what, err, bound in errors:
            if not err <= bound and not failing:  # NaN fails too
                failing = f"{name} {what}: relative error {err:.3g} > {bound:.3g}"
            if err >= worst or err != err:
                worst, bound_at_worst = err, bound
    return worst, bound_at_worst, failing


_RUNNERS = {"coupling": _run_coupling, "implicit": _run_implicit, "knn": _run_knn}


@contextlib.contextmanager
def matmul_precision(value: str):
    """Run the block under ``torch.set_float32_matmul_precision(value)``; the previous value is restored."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextlib.contextmanager
def _isolated(device: torch.device):
    """Grad on, no inference mode and no autocast, whatever the caller set."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        yield


def check(family: str, device: torch.device | str, dtype: torch.dtype) -> CheckResult:
    """Run (or return the cached result of) the check of ``family`` on ``device`` in ``dtype`` under the
    current float32 matmul precision."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = torch.get_float32_matmul_precision()
    key = (family, str(device), dtype, precision)
    with _LOCK:
        if key in _RESULTS:
            return _RESULTS[key]
        start = time.perf_counter()
        try:
            with _isolated(device):
                err, tol, failing = _RUNNERS[family](device, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ok, detail = not failing, failing
        except Exception as exc:  # noqa: BLE001 - any compile or launch error fails the check
            ok, err, tol, detail = False, float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"
        name = str(dtype).replace("torch.", "")
        result = CheckResult(family, str(device), name, precision, ok, err, tol, time.perf_counter() - start,
                             detail.splitlines()[0][:300] if detail else "")
        _RESULTS[key] = result
        return result


def _describe(r: CheckResult) -> str:
    return (f"the {r.op} Triton kernel failed its first-use check on {r.device} ({r.dtype}, matmul precision "
            f"{r.precision!r}): {r.detail}")


@torch.compiler.disable
def passed(family: str, device: torch.device, dtype: torch.dtype) -> bool:
    """For ``backend="auto"``: True when the check passes (or is switched off); a failure logs one
    WARNING and returns False, from then on (the result is cached)."""
    if not _settings.flag("NPKERNELS_SELF_CHECK"):
        return True
    result = check(family, device, dtype)
    if not result.ok:
        log_once(f"selfcheck:{result.op}:{result.device}:{result.dtype}:{result.precision}",
                 f"npkernels: {_describe(result)}; {family} runs the PyTorch reference from now on",
                 logging.WARNING)
    return result.ok


@torch.compiler.disable
def require(family: str, device: torch.device, dtype: torch.dtype) -> None:
    """For an explicit ``backend="triton"``: raise RuntimeError when the check fails (no fallback)."""
    if not _settings.flag("NPKERNELS_SELF_CHECK"):
        return
    result = check(family, device, dtype)
    if not result.ok:
        raise RuntimeError(f"npkernels: {_describe(result)} (backend='reference' runs the op)")


def run_all(devices: list[torch.device]) -> list[CheckResult]:
    """Every family on every device, in float32 under "highest" and "high" precision and in bfloat16
    (CUDA only: the interpreter has no 16-bit dots); the previous precision is restored."""
    rows = []
    for device in devices:
        runs = [("highest", torch.float32), ("high", torch.float32)]
        runs += [("highest", torch.bfloat16)] if torch.device(device).type == "cuda" else []
        for precision, dtype in runs:
            with matmul_precision(precision):
                rows += [check(family, device, dtype) for family in FAMILIES]
    return rows
