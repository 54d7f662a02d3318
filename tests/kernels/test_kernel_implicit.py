"""Fused G(x) kernel (npkernels.implicit._triton) against the reference: value, argmin, per-primitive
values, gradients (value only and value + per-primitive), second order, ties, awkward sizes."""

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

from npkernels._dispatch import interpreter_enabled
from npkernels.implicit import reference

pytestmark = pytest.mark.triton

it = pytest.importorskip("npkernels.implicit._triton", reason="Triton is not importable")

if not (torch.cuda.is_available() or interpreter_enabled()):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

SIZES = [(1, 1, 1), (2, 45, 3), (1, 70, 1), (2, 0, 2)]


def _case(B, N, M, widths=NARROW, seed=0):
    w = make_weights(widths["C"], widths["H"], widths["HP"], widths["P"], seed=seed)
    x, cond, affine = make_inputs(B, N, M, widths["C"], seed=seed + 1)
    return x, cond, w, affine


@pytest.mark.parametrize("per_primitive", [False, True], ids=["G", "G+g"])
@pytest.mark.parametrize("B,N,M", SIZES, ids=[f"B{b}-N{n}-M{m}" for b, n, m in SIZES])
def test_values_and_grads(B, N, M, per_primitive):
    x, cond, w, affine = _case(B, N, M)
    out = it.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=per_primitive)
    if N == 0:  # the reference's chunking needs N >= 1 when a graph is built
        assert out.value.shape == (B, 0) and out.argmin.shape == (B, 0)
        assert out.per_primitive is None or out.per_primitive.shape == (B, 0, M)
        assert torch.autograd.grad(out.value.sum(), x)[0].shape == x.shape
        return
    ref = reference.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=per_primitive)
    assert out.value.shape == (B, N) and out.argmin.dtype == torch.int64
    assert_close_named("G", out.value, ref.value, **FP32_TOL)
    torch.testing.assert_close(out.argmin, ref.argmin)
    outputs, refs = [out.value], [ref.value]
    if per_primitive:
        assert_close_named("g", out.per_primitive, ref.per_primitive, **FP32_TOL)
        torch.testing.assert_close(out.value, out.per_primitive.min(-1).values)
        outputs.append(out.per_primitive)
        refs.append(ref.per_primitive)
    else:
        assert out.per_primitive is None
    upstream = [torch.randn_like(t) for t in refs]
    named = leaves(x, cond, w, affine)
    got, want = grads(outputs, upstream, named), grads(refs, upstream, named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


def test_first_order_backward_uses_the_kernels(monkeypatch):
    """G and g gradients come from the fused coupling backward, never from the reference maps."""
    from npkernels.coupling import reference as coupling_reference

    x, cond, w, affine = _case(2, 9, 3)
    ref = reference.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=True)
    upstream = [torch.randn_like(ref.value), torch.randn_like(ref.per_primitive)]
    named = leaves(x, cond, w, affine)
    want = grads([ref.value, ref.per_primitive], upstream, named)

    def recomputed(*args, **kwargs):
        raise AssertionError("a first-order backward recomputed the map through the reference")

    monkeypatch.setattr(coupling_reference, "coupling_inverse", recomputed)
    out = it.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=True)
    got = grads([out.value, out.per_primitive], upstream, named)
    for name in want:
        assert_close_named(f"d/d{name}", got[name], want[name], **FP32_TOL)


def test_ties_go_to_lowest_primitive():
    x, cond, w, affine = _case(1, 30, 3)
    with torch.no_grad():  # primitives 1 and 2 identical -> equal g; copy 1 over 0 too in half the batch
        cond[:, 2] = cond[:, 1]
        for t in affine:
            t[:, 2] = t[:, 1]
    out = it.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=True)
    g = out.per_primitive
    assert torch.equal(g[..., 1], g[..., 2])
    assert not (out.argmin == 2).any()
    torch.testing.assert_close(out.argmin, reference.implicit_union(x, cond, w, affine).argmin)


def test_second_order_matches_reference():
    """Normal-loss pattern on G: d G / d x with create_graph, then differentiate a loss of it."""
    x, cond, w, affine = _case(2, 13, 3)
    named = leaves(x, cond, w, affine)
    results = []
    for fn in (it.implicit_union, lambda *a, **k: reference.implicit_union(*a, **k)):
        value = fn(x, cond, w, affine, radius=0.25, per_primitive=False).value
        (dx,) = torch.autograd.grad(value.sum(), x, create_graph=True)
        n = torch.nn.functional.normalize(dx, dim=-1, eps=1e-12)
        results.append(grads([(n[..., 0] * torch.arange(13.0)).sum()], [torch.ones(())], named))
    for name in results[1]:
        assert_close_named(f"d2/d{name}", results[0][name], results[1][name], rtol=1e-3, atol=1e-5)


def test_production_widths():
    x, cond, w, affine = _case(1, 24, 2, widths=PRODUCTION)
    out = it.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=True)
    ref = reference.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=True)
    assert_close_named("g", out.per_primitive, ref.per_primitive, **FP32_TOL)
    torch.testing.assert_close(out.argmin, ref.argmin)
