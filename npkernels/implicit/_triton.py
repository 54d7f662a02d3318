"""Fused Triton kernel for the union implicit G(x) = min_m (||phi^-1(x; C_m)|| - r).

One program takes BLOCK_R points (b, n) and loops over the M primitives: for each it runs the
whole world -> sphere map of ``npkernels.coupling._triton_blocks`` (rigid, scale, L coupling layers,
activations on chip), takes ||z|| - r and keeps a running (min, argmin) in registers; strict
``<`` keeps ties on the lowest primitive index (torch.min's rule). Only G (B, N) fp32->x dtype and
the argmin (B, N) int64 are written, plus g (B, N, M) when ``per_primitive`` is asked.

Precision as in the coupling kernels (fp32 dots IEEE or TF32 following
torch.get_float32_matmul_precision(); fp32 accumulation; no float64 kernel).

Backward (autograd.Function storing the inputs and the argmin only): the gradient of G flows
into the argmin primitive alone, so a first-order backward maps each point again in that primitive
only and runs the fused coupling backward (``coupling._triton_backward.stack_backward``), plus all
g_m when per_primitive received a gradient; under create_graph it recomputes
g_owner = ||coupling_inverse(x, owner=argmin)|| - r through the differentiable reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _utils
from .._triton_utils import KernelOp, on_device
from ..coupling import reference as coupling_reference
from ..coupling._triton import launch as coupling_launch
from ..coupling._triton_backward import stack_backward
from ..coupling._triton_blocks import coupling_stack, kernel_args, world_to_sphere_rigid
from . import reference
from .reference import UnionImplicit


@triton.jit
def _implicit_union_kernel(
    x_ptr,  # (B, N, 3) points: element (b, n, c) at b*sxb + n*sxn + c*sxc
    value_ptr,  # (B*N,) G in x's dtype
    arg_ptr,  # (B*N,) int64 argmin primitive
    g_ptr,  # (B*N, M) per-primitive g (PER_PRIMITIVE)
    scale_ptr, rot_ptr, trans_ptr,  # (B*M, 3), (B*M, 9), (B*M, 3) fp32
    bias_ptr,  # (B*M, L*2*H) fp32 hoisted first-layer biases
    pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr,  # projection (3, HP), (HP,), TMA (P, HP) [P, BLOCK_K], (P,)
    w1_desc, w2_desc, b2_ptr, w3_desc, b3_ptr, mask_ptr,  # see coupling._triton_blocks._head; mask (L, 4)
    sxb, sxn, sxc, R, N, M, radius,
    L: tl.constexpr, H: tl.constexpr, P: tl.constexpr, HP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, PER_PRIMITIVE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    b = rows // N
    n = rows % N
    xp = x_ptr + b * sxb + n * sxn
    x0 = tl.load(xp, mask=rmask, other=0.0).to(tl.float32)
    x1 = tl.load(xp + sxc, mask=rmask, other=0.0).to(tl.float32)
    x2 = tl.load(xp + 2 * sxc, mask=rmask, other=0.0).to(tl.float32)
    best = tl.full([BLOCK_R], float("inf"), tl.float32)
    arg = tl.zeros([BLOCK_R], dtype=tl.int64)
    m = 0
    while m < M:  # a while loop: the interpreter (numpy >= 2.4) rejects range() over a runtime bound
        bm = b * M + m
        y0, y1, y2 = world_to_sphere_rigid(x0, x1, x2, bm, rmask, scale_ptr, rot_ptr, trans_ptr)
        y0, y1, y2, _ = coupling_stack(y0, y1, y2, bm, rows, rmask, bias_ptr, pw1_ptr, pb1_ptr, pw2_desc,
                                       pb2_ptr, w1_desc, w2_desc, b2_ptr, w3_desc, b3_ptr, mask_ptr, None, R, L, H,
                                       P, HP, BLOCK_R, BLOCK_K, True, DOT_PREC, False, False)
        g = tl.sqrt(y0 * y0 + y1 * y1 + y2 * y2) - radius
        if PER_PRIMITIVE:
            tl.store(g_ptr + rows * M + m, g.to(g_ptr.dtype.element_ty), mask=rmask)
        better = g < best
        best = tl.where(better, g, best)
        arg = tl.where(better, m, arg)
        m += 1
    tl.store(value_ptr + rows, best.to(value_ptr.dtype.element_ty), mask=rmask)
    tl.store(arg_ptr + rows, arg, mask=rmask)


def launch(x, cond, weights, affine, radius: float, per_primitive: bool):
    """Run the fused G(x) without autograd -> (value (B, N), argmin (B, N), g (B, N, M) or empty)."""
    B, N, _ = x.shape
    M = cond.shape[1]
    value = _utils.empty(B, N, dtype=x.dtype, device=x.device)
    arg = _utils.empty(B, N, dtype=torch.int64, device=x.device)
    g = _utils.empty(*((B, N, M) if per_primitive else (0,)), dtype=x.dtype, device=x.device)
    if B * N == 0:
        return value, arg, g
    tensors, consts, cfg = kernel_args(cond, weights, affine, x.dtype)
    grid = (triton.cdiv(B * N, cfg.block_r),)
    with on_device(x):
        _implicit_union_kernel[grid](
            x, value, arg, g if per_primitive else value, *tensors, *x.stride(), B * N, N, M, float(radius),
            BLOCK_R=cfg.block_r, PER_PRIMITIVE=per_primitive, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, **consts)
    return value, arg, g


def _norm_backward(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of ||z|| (over the last axis) times ``grad`` w.r.t. z, 0 where z = 0 (torch's rule)."""
    z = z.float()
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return torch.where(norm > 0, grad.float().unsqueeze(-1) * z / norm, 0.0)


class _ImplicitOp(KernelOp):
    """Kernel forward; the gradient of G flows into the argmin primitive alone, so the backward maps
    each point again in that primitive only (with stages) and runs the fused coupling backward; all
    primitives only when g (B, N, M) itself received a gradient."""

    keep = (1,)

    @staticmethod
    def run_kernel(args, static, for_backward):
        return launch(*args, *static), ()

    @staticmethod
    def fused_backward(args, static, kept, saved, grads):
        x, cond, weights, affine = args
        per_primitive = static[1]
        found = []
        for owner, grad in ((kept[0], grads[0]), (None, grads[2] if per_primitive else None)):
            if grad is None:
                continue
            z, _, stages = coupling_launch(x, cond, weights, affine, inverse=True, owner=owner, log_det=None,
                                           stages=True)
            found += stack_backward(x, cond, weights, affine, inverse=True, owner=owner, stages=stages,
                                    grad_out=_norm_backward(z, grad), grad_ld=None, log_det=None)
        return found

    @staticmethod
    def run_reference(args, static, kept):
        x, cond, weights, affine = args
        radius, per_primitive = static
        z = coupling_reference.coupling_inverse(x, cond, weights, affine, owner=kept[0])
        value = torch.linalg.vector_norm(z, dim=-1) - radius
        if not per_primitive:
            return value, kept[0]
        return value, kept[0], reference.primitive_implicit(x, cond, weights, affine, radius)


def implicit_union(x, cond, weights, affine, *, radius: float, per_primitive: bool) -> UnionImplicit:
    """G(x), argmin and optionally g (B, N, M) with the fused kernel; semantics of the reference."""
    value, arg, g = _ImplicitOp.run(x, cond, weights, affine, radius, per_primitive)
    return UnionImplicit(value, arg, g if per_primitive else None)
