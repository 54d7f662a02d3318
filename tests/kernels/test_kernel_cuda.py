"""Every Triton kernel against its reference on CUDA (``bash benchmarks/gpu_check.sh`` runs this file).

Each case runs the op with ``backend="triton"``, the reference in the same dtype and float32 matmul
precision, and the reference in float64 on the same (rounded) inputs. ``npkernels._selfcheck.compare``
passes an output when its error relative to float64 is at most 8 times that of the same-precision
reference, with a floor per dtype. Precisions: fp32 "highest" (IEEE dots), fp32 "high" (TF32) and bf16.
Sizes: awkward (M=1, N=1, N not a tile multiple, N=0, widths that are not powers of two) and the
D-FAUST training size (B=4, 5,000 points, M=6, widths 512/256/256/128). Forward, first-order backward
(every input and weight) and the normal loss's second order.

Without CUDA, the fp32 "highest" awkward cases run in Triton's interpreter, so the logic of this file
is tested on CPU too; everything else is marked ``cuda``.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import NARROW, PRODUCTION, make_inputs, make_weights

import npkernels
from npkernels._dispatch import interpreter_enabled
from npkernels._selfcheck import KNN_TOLERANCE, compare, matmul_precision
from npkernels.knn import reference as knn_reference

pytestmark = pytest.mark.triton

CUDA = torch.cuda.is_available()
if not (CUDA or interpreter_enabled()):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("npkernels.coupling._triton", reason="Triton is not importable")

DEVICE = "cuda" if CUDA else "cpu"
ODD = {"C": 7, "H": 48, "HP": 20, "P": 24}  # padded to 64 / 32 / 32 inside the kernels
cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU")]
PRECISIONS = [
    pytest.param(("highest", torch.float32), id="fp32-highest"),
    pytest.param(("high", torch.float32), id="fp32-high", marks=cuda_only),
    pytest.param(("highest", torch.bfloat16), id="bf16", marks=cuda_only),
]
_SIZES = {  # (B, N, M, widths)
    "B1-N1-M1-odd": (1, 1, 1, ODD),
    "B2-N37-M3": (2, 37, 3, NARROW),
    "B2-N0-M2": (2, 0, 2, NARROW),
    "B1-N70-M1-odd": (1, 70, 1, ODD),
    "dfaust-B4-N5000-M6": (4, 5000, 6, PRODUCTION),
}


def _sizes(*on_cpu: str) -> list:
    """Every size; only those named also run on CPU (the interpreter is slow)."""
    return [pytest.param(v, id=k, marks=[] if k in on_cpu else cuda_only) for k, v in _SIZES.items()]


SIZES = _sizes("B1-N1-M1-odd", "B2-N37-M3", "B2-N0-M2")
SMALL_ON_CPU = _sizes("B1-N1-M1-odd", "B2-N0-M2")


def _on(tree, dtype):
    """The nested tuple of tensors on DEVICE in ``dtype``, detached, requiring grad where it did."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(DEVICE, dtype).requires_grad_(tree.requires_grad)
    items = [_on(t, dtype) for t in tree]
    return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)


def _leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree] if tree.requires_grad else []
    return [t for sub in tree for t in _leaves(sub)]


def _with_grads(outs: list[torch.Tensor], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """outs followed by the gradient of sum(out * u) for fixed random u (the same u in every dtype)."""
    gen = torch.Generator().manual_seed(11)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, ups, allow_unused=True)
    return [o.detach() for o in outs] + [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def _assert_matches(run, case, precision: str, dtype: torch.dtype) -> None:
    """Run ``run(backend, case)`` as the kernel, as the same-precision reference and in float64; compare."""
    with matmul_precision(precision):
        rounded = _on(case, dtype)
        got = run("triton", rounded)
        same = run("reference", _on(rounded, dtype))
        truth = run("reference", _on(rounded, torch.float64))
        err, bound, failing = compare(got, same, truth, dtype)
    assert not failing, f"{failing} (largest error {err:.3g}, bound {bound:.3g})"


def _coupling_case(B, N, M, widths, seed=0):
    w = make_weights(widths["C"], widths["H"], widths["HP"], widths["P"], seed=seed)
    x, cond, affine = make_inputs(B, N, M, widths["C"], seed=seed + 1)
    return x, cond, w, affine


def _sphere_points(B, N, M, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return (0.25 * torch.nn.functional.normalize(torch.randn(B, N, M, 3, generator=gen), dim=-1)).requires_grad_()


def _owner(B, N, M, seed=4):
    return torch.randint(0, M, (B, N), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["inverse", "inverse-owner", "inverse-per-primitive", "forward"])
def test_coupling(mode, size, precision):
    B, N, M, widths = size
    case = _coupling_case(B, N, M, widths)
    if mode == "forward" or mode == "inverse-per-primitive":
        case = (_sphere_points(B, N, M), *case[1:])
    owner = _owner(B, N, M) if mode == "inverse-owner" else None

    def run(backend, c):
        x, cond, w, affine = c
        op = npkernels.coupling_forward if mode == "forward" else npkernels.coupling_inverse
        kwargs = {} if mode == "forward" else {"owner": owner}
        y, ld = op(x, cond, w, affine, return_log_det=True, backend=backend, **kwargs)
        return _with_grads([y, ld], _leaves(c))

    _assert_matches(run, case, *precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("direction", ["inverse", "forward"])
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (on CPU: test_kernel_coupling.py)")
def test_coupling_authors_ldj(direction, precision):
    case = _coupling_case(2, 37, 3, NARROW)
    if direction == "forward":
        case = (_sphere_points(2, 37, 3), *case[1:])

    def run(backend, c):
        op = npkernels.coupling_forward if direction == "forward" else npkernels.coupling_inverse
        return _with_grads(list(op(*c, return_authors_ldj=True, backend=backend)), _leaves(c))

    _assert_matches(run, case, *precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SMALL_ON_CPU)
def test_implicit_union(size, precision):
    B, N, M, widths = size
    case = _coupling_case(B, N, M, widths, seed=5)

    def run(backend, c):
        u = npkernels.implicit_union(*c, radius=0.25, per_primitive=True, backend=backend)
        return _with_grads([u.value, u.per_primitive], _leaves(c))

    _assert_matches(run, case, *precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SMALL_ON_CPU)
def test_normal_loss_second_order(size, precision):
    """The normal-consistency pattern: d g_owner / dx with create_graph, a loss of the normalised
    gradient, differentiated again (the kernel's forward, the reference's recomputation behind it)."""
    B, N, M, widths = size
    case = _coupling_case(B, N, M, widths, seed=7)
    owner = _owner(B, N, M, seed=8)
    target = torch.nn.functional.normalize(torch.randn(B, N, 3, generator=torch.Generator().manual_seed(9)), dim=-1)

    def run(backend, c):
        x, cond, w, affine = c
        z = npkernels.coupling_inverse(x, cond, w, affine, owner=owner, backend=backend)
        g = torch.linalg.vector_norm(z, dim=-1) - 0.25
        (dx,) = torch.autograd.grad(g.sum(), x, create_graph=True)
        normal = dx / (torch.linalg.vector_norm(dx, dim=-1, keepdim=True) + 1e-12)
        loss = (1 - (normal * target.to(normal)).sum(-1)).sum() / max(1, B * N)  # N = 0: 0, not NaN
        leaves = _leaves(c)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [g.detach(), dx.detach(), loss.detach()] + [torch.zeros_like(t) if d is None else d
                                                           for t, d in zip(leaves, grads)]

    _assert_matches(run, case, *precision)


KNN_SIZES = [
    pytest.param((1, 1, 1), id="B1-N1-P1"),
    pytest.param((2, 130, 70), id="B2-N130-P70"),
    pytest.param((1, 0, 5), id="B1-N0-P5"),
    pytest.param((2, 5, 0), id="B2-N5-P0"),
    pytest.param((1, 50_000, 40_000), id="B1-N50k-P40k", marks=cuda_only),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", KNN_SIZES)
@pytest.mark.parametrize("masked", [False, True], ids=["no-masks", "masks"])
def test_knn(masked, size, precision):
    B, N, P = size
    gen = torch.Generator().manual_seed(N + P)
    x = torch.rand(B, N, 3, generator=gen).requires_grad_()
    y = torch.rand(B, P, 3, generator=gen).requires_grad_()
    masks = (torch.rand(B, N, generator=gen) > 0.3, torch.rand(B, P, generator=gen) > 0.5) if masked else (None, None)
    xm, ym = (None if m is None else m.to(DEVICE) for m in masks)
    picks = {}

    def run(backend, c):
        a, b = c
        r = npkernels.knn(a, b, x_mask=xm, y_mask=ym, backend=backend)
        picks[backend, a.dtype] = r
        finite = [torch.where(torch.isfinite(d), d, torch.zeros_like(d)) for d in (r.dist_xy, r.dist_yx)]
        return _with_grads(finite, _leaves(c))

    _assert_matches(run, (x, y), *precision)
    dtype = precision[1]
    got, truth = picks["triton", dtype], picks["reference", torch.float64]
    x64, y64 = (_on(t, dtype).double() for t in (x, y))
    for q, c, idx, want, qm in ((x64, y64, got.idx_xy, truth.dist_xy.detach(), xm),
                                (y64, x64, got.idx_yx, truth.dist_yx.detach(), ym)):
        assert torch.equal(idx < 0, want.isinf() | (False if qm is None else ~qm))  # same queries without a pick
        chosen = knn_reference.gather_sq_dist(q, c, idx, qm).detach()
        ok = torch.isfinite(want)
        scale = (float(want[ok].abs().max()) if ok.any() else 0.0) or 1.0
        err = float((chosen[ok] - want[ok]).abs().max()) / scale if ok.any() else 0.0
        assert err <= KNN_TOLERANCE, f"the kernel chose points {err:.3g} (relative) farther than the nearest"
