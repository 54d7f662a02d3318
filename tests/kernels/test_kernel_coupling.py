"""Fused coupling kernels (npkernels.coupling._triton) against the reference: values, every gradient,
second order, owner mode, awkward sizes. CPU runs them in Triton's interpreter (tests/conftest.py);
narrow widths (hidden 32, projection 16) except one production-width case."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (
    FP32_TOL,
    NARROW,
    PRODUCTION,
    assert_close_named,
    grads,
    leaves,
    make_inputs,
    make_weights,
)

import npkernels
from npkernels._dispatch import interpreter_enabled
from npkernels.coupling import reference

pytestmark = pytest.mark.triton

kt = pytest.importorskip("npkernels.coupling._triton", reason="Triton is not importable")
kb = pytest.importorskip("npkernels.coupling._triton_backward", reason="Triton is not importable")

if not (torch.cuda.is_available() or interpreter_enabled()):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(1, 1, 1), (2, 37, 3), (1, 70, 1), (2, 0, 2)]
IDS = [f"B{b}-N{n}-M{m}" for b, n, m in SIZES]


def _case(B, N, M, widths=NARROW, seed=0):
    w = make_weights(widths["C"], widths["H"], widths["HP"], widths["P"], seed=seed)
    x, cond, affine = make_inputs(B, N, M, widths["C"], seed=seed + 1)
    return x, cond, w, affine


@pytest.mark.parametrize("B,N,M", SIZES, ids=IDS)
def test_inverse_values_and_grads(B, N, M):
    x, cond, w, affine = _case(B, N, M)
    y, ld = kt.coupling_inverse(x, cond, w, affine, return_log_det=True)
    y_ref, ld_ref = reference.coupling_inverse(x, cond, w, affine, return_log_det=True)
    assert y.shape == (B, N, M, 3) and ld.shape == (B, N, M)
    assert_close_named("y", y, y_ref, **FP32_TOL)
    assert_close_named("log_det", ld, ld_ref, **FP32_TOL)
    gy, gld = torch.randn_like(y), torch.randn_like(ld)
    named = leaves(x, cond, w, affine)
    got = grads([y, ld], [gy, gld], named)
    want = grads([y_ref, ld_ref], [gy, gld], named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


@pytest.mark.parametrize("layout", ["full", "stride0", "noncontiguous"])
def test_inverse_per_primitive_points(layout):
    x, cond, w, affine = _case(2, 21, 3)
    if layout == "full":
        pts = torch.randn(2, 21, 3, 3, requires_grad=True)
    elif layout == "stride0":
        pts = x[:, :, None].expand(-1, -1, 3, -1)
    else:
        pts = torch.randn(2, 3, 21, 3).transpose(1, 2).requires_grad_()
    y = kt.coupling_inverse(pts, cond, w, affine)
    y_ref = reference.coupling_inverse(pts, cond, w, affine)
    assert_close_named("y", y, y_ref, **FP32_TOL)
    g = torch.randn_like(y)
    src = x if layout == "stride0" else pts
    assert_close_named(
        "dx", torch.autograd.grad(y, src, g)[0], torch.autograd.grad(y_ref, src, g)[0], **FP32_TOL
    )


def test_inverse_owner():
    x, cond, w, affine = _case(2, 45, 4)
    owner = torch.randint(0, 4, (2, 45), generator=torch.Generator().manual_seed(3))
    y, ld = kt.coupling_inverse(x, cond, w, affine, owner=owner, return_log_det=True)
    y_ref, ld_ref = reference.coupling_inverse(x, cond, w, affine, owner=owner, return_log_det=True)
    assert y.shape == (2, 45, 3) and ld.shape == (2, 45)
    assert_close_named("y", y, y_ref, **FP32_TOL)
    assert_close_named("log_det", ld, ld_ref, **FP32_TOL)
    g = torch.randn_like(y)
    named = leaves(x, cond, w, affine)
    got, want = grads([y], [g], named), grads([y_ref], [g], named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


def test_out_of_range_owner_gives_nan_rows():
    """The kernel never reads outside the per-primitive tables: invalid owners come out NaN."""
    x, cond, w, affine = _case(1, 6, 2)
    owner = torch.tensor([[0, 1, 2, -1, 1, 0]])
    with torch.no_grad():
        y = kt.coupling_inverse(x, cond, w, affine, owner=owner)
        ok = owner.clamp(0, 1)
        y_ref = reference.coupling_inverse(x, cond, w, affine, owner=ok)
    bad = (owner < 0) | (owner > 1)
    assert torch.isnan(y[bad]).all()
    assert_close_named("valid rows", y[~bad], y_ref[~bad], **FP32_TOL)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("bad", [-1, 2])
def test_public_op_rejects_out_of_range_owner(backend, bad):
    x, cond, w, affine = _case(1, 6, 2)
    owner = torch.tensor([[0, 1, bad, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"owner must index the M=2 primitives"):
        npkernels.coupling_inverse(x, cond, w, affine, owner=owner, backend=backend)


def test_weight_pack_cache_follows_updates():
    x, cond, w, affine = _case(1, 8, 2)
    before = kt.coupling_inverse(x, cond, w, affine)
    with torch.no_grad():
        w.layers[2].t_b3.add_(0.5)  # in place: bumps the version counter
    after = kt.coupling_inverse(x, cond, w, affine)
    assert_close_named("after update", after, reference.coupling_inverse(x, cond, w, affine), **FP32_TOL)
    assert not torch.allclose(before, after)
    for seed in (3, 4, 5):  # fresh weights of the same shapes, possibly at recycled addresses
        x, cond, w, affine = _case(1, 8, 2, seed=seed)
        out = kt.coupling_inverse(x, cond, w, affine)
        assert_close_named(f"seed {seed}", out, reference.coupling_inverse(x, cond, w, affine), **FP32_TOL)
        del w
    with torch.inference_mode():
        x, cond, w, affine = _case(1, 8, 2, seed=6)
        out = kt.coupling_inverse(x, cond, w, affine)
        assert_close_named("inference mode", out, reference.coupling_inverse(x, cond, w, affine), **FP32_TOL)


@pytest.mark.parametrize("B,S,M", [(1, 1, 1), (2, 29, 3)], ids=["B1-S1-M1", "B2-S29-M3"])
def test_forward_values_and_grads(B, S, M):
    _, cond, w, affine = _case(B, 1, M)
    z = (0.25 * torch.nn.functional.normalize(torch.randn(B, S, M, 3), dim=-1)).requires_grad_()
    y, ld = kt.coupling_forward(z, cond, w, affine, return_log_det=True)
    y_ref, ld_ref = reference.coupling_forward(z, cond, w, affine, return_log_det=True)
    assert_close_named("y", y, y_ref, **FP32_TOL)
    assert_close_named("log_det", ld, ld_ref, **FP32_TOL)
    named = dict(leaves(z, cond, w, affine))
    gy, gld = torch.randn_like(y), torch.randn_like(ld)
    got, want = grads([y, ld], [gy, gld], named), grads([y_ref, ld_ref], [gy, gld], named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


def test_round_trip_and_clamp():
    """forward(inverse(x)) = x with s driven into the Hardtanh saturation at +-10 in some rows."""
    x, cond, w, affine = _case(1, 40, 2)
    with torch.no_grad():
        w.layers[1].s_b3.copy_(torch.tensor([12.0, -11.0, 0.0]))  # saturate layer 1's s outputs
    z = kt.coupling_inverse(x, cond, w, affine)
    assert_close_named("inverse", z, reference.coupling_inverse(x, cond, w, affine), **FP32_TOL)
    back = kt.coupling_forward(z, cond, w, affine)
    assert_close_named("round trip", back, x[:, :, None].expand_as(back), rtol=1e-4, atol=1e-4)


def test_second_order_matches_reference():
    """Normal-loss pattern: d/dx with create_graph, then a loss of the gradient, differentiated again."""
    x, cond, w, affine = _case(2, 17, 2)
    owner = torch.randint(0, 2, (2, 17), generator=torch.Generator().manual_seed(5))
    named = leaves(x, cond, w, affine)
    results = []
    for fn in (kt.coupling_inverse, reference.coupling_inverse):
        g = torch.linalg.vector_norm(fn(x, cond, w, affine, owner=owner), dim=-1)
        (dx,) = torch.autograd.grad(g.sum(), x, create_graph=True)
        loss = (dx * torch.linspace(-1, 1, dx.numel()).reshape(dx.shape)).sum()
        results.append(grads([loss], [torch.ones(())], named))
    for name in results[1]:
        assert_close_named(f"d2/d{name}", results[0][name], results[1][name], rtol=1e-3, atol=1e-5)


def _forbid_reference_maps(monkeypatch):
    """From here on, recomputing a map through the reference fails the test."""

    def recomputed(*args, **kwargs):
        raise AssertionError("a first-order backward recomputed the map through the reference")

    monkeypatch.setattr(reference, "coupling_inverse", recomputed)
    monkeypatch.setattr(reference, "coupling_forward", recomputed)


@pytest.mark.parametrize("mode", ["inverse", "inverse-owner", "forward"])
def test_fused_backward_chunks_and_clamp(monkeypatch, mode):
    """The first-order backward runs the backward kernel (no reference recomputation), in several
    chunks of rows (the last one partial), with s saturated at the clamp in some rows."""
    B, N, M = 2, 13, 3
    x, cond, w, affine = _case(B, N, M, seed=7)
    with torch.no_grad():
        w.layers[1].s_b3.copy_(torch.tensor([9.9, -10.5, 10.5]))  # rows on both sides of the clamp
    owner = torch.randint(0, M, (B, N), generator=torch.Generator().manual_seed(2)) if mode.endswith("owner") else None
    if mode == "forward":
        pts = (0.25 * torch.nn.functional.normalize(torch.randn(B, N, M, 3), dim=-1)).requires_grad_()
        ref = reference.coupling_forward(pts, cond, w, affine, return_log_det=True)
    else:
        pts = x
        ref = reference.coupling_inverse(pts, cond, w, affine, owner=owner, return_log_det=True)
    named = leaves(pts, cond, w, affine)
    upstream = [torch.randn_like(t) for t in ref]
    want = grads(list(ref), upstream, named)
    _forbid_reference_maps(monkeypatch)
    monkeypatch.setattr(kb, "FUSED_BACKWARD_ROWS", 16)  # 2 points x 6 or 3 rows per chunk
    if mode == "forward":
        out = kt.coupling_forward(pts, cond, w, affine, return_log_det=True)
    else:
        out = kt.coupling_inverse(pts, cond, w, affine, owner=owner, return_log_det=True)
    got = grads(list(out), upstream, named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


def test_no_grad_forward_writes_no_stages(monkeypatch):
    """Stages are written only when a backward can follow."""
    x, cond, w, affine = _case(1, 5, 2)
    seen = []
    real = kt.launch
    monkeypatch.setattr(kt, "launch", lambda *a, **k: seen.append(k["stages"]) or real(*a, **k))
    with torch.no_grad():
        kt.coupling_inverse(x, cond, w, affine)
    kt.coupling_inverse(x.detach(), cond.detach(), w, affine)  # weights still require grad
    assert seen == [False, True]


def test_production_widths():
    """Two row tiles at the shipped widths (hidden 256, projection 256 -> 128, condition 512), forward
    and the fused backward."""
    x, cond, w, affine = _case(1, 20, 2, widths=PRODUCTION)
    y = kt.coupling_inverse(x, cond, w, affine)
    y_ref = reference.coupling_inverse(x, cond, w, affine)
    assert_close_named("y", y, y_ref, **FP32_TOL)
    named = leaves(x, cond, w, affine)
    g = torch.randn_like(y)
    got, want = grads([y], [g], named), grads([y_ref], [g], named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


@pytest.mark.parametrize("direction", ["inverse", "forward"])
def test_authors_ldj_values_and_grads(direction):
    """return_authors_ldj: the sum of all three s outputs per layer (no mask, no scale), and its gradient."""
    x, cond, w, affine = _case(2, 19, 3)
    if direction == "forward":
        pts = (0.25 * torch.nn.functional.normalize(torch.randn(2, 19, 3, 3), dim=-1)).requires_grad_()
        got = kt.coupling_forward(pts, cond, w, affine, return_authors_ldj=True)
        want = reference.coupling_forward(pts, cond, w, affine, return_authors_ldj=True)
    else:
        pts = x
        got = kt.coupling_inverse(pts, cond, w, affine, return_authors_ldj=True)
        want = reference.coupling_inverse(pts, cond, w, affine, return_authors_ldj=True)
    assert_close_named("ldj", got[1], want[1], **FP32_TOL)
    named = leaves(pts, cond, w, affine)
    upstream = [torch.randn_like(t) for t in want]
    g_got, g_want = grads(list(got), upstream, named), grads(list(want), upstream, named)
    assert g_want["scale"].abs().max() > 0
    for name in g_want:
        assert_close_named(f"d/d{name}", g_got[name], g_want[name], **FP32_TOL)


def test_float64_has_no_kernel():
    """The kernel functions take float32 (or 16-bit on a GPU) only; the dispatcher routes float64."""
    x, cond, w, affine = _case(1, 5, 2)
    w64 = type(w)(*(t.detach().double() for t in w[:4]),
                  tuple(type(lw)(*(t.detach().double() for t in lw)) for lw in w.layers))
    aff64 = type(affine)(*(t.detach().double() for t in affine))
    with pytest.raises(TypeError, match="float64"):
        kt.coupling_inverse(x.detach().double(), cond.detach().double(), w64, aff64)


def test_precision_policy(monkeypatch):
    from npkernels._triton_utils import dot_config

    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert dot_config(torch.float32).precision == "ieee"
        torch.set_float32_matmul_precision("high")
        assert dot_config(torch.float32).precision == "tf32"
        torch.set_float32_matmul_precision("medium")
        assert dot_config(torch.float32).precision == "tf32"  # never below tf32 for fp32 inputs
    finally:
        torch.set_float32_matmul_precision(previous)
    with pytest.raises(TypeError):
        dot_config(torch.float64)
    if interpreter_enabled():
        with pytest.raises(RuntimeError, match="GPU"):
            dot_config(torch.bfloat16)
