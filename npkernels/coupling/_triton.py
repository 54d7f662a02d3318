"""Fused Triton kernel for the conditional coupling stack (world <-> sphere) and its autograd op.

One program maps a tile of BLOCK_R rows; a row is a (point, primitive) pair (b, n, m), or a
point (b, n) in its ``owner`` primitive. Everything between reading x and writing the result
stays on chip: the rigid map, the scale and the L coupling layers (maths, layout and precision in
``_triton_blocks``). Out-of-range owners are never dereferenced; their rows come out NaN.

Backward (``autograd.Function``): when a backward will follow, the kernel also writes the rows
entering each layer; a first-order backward runs the fused backward of ``_triton_backward`` from
them. Under ``create_graph`` (the normal-consistency loss) the gradient must itself be
differentiable: the map is recomputed through the reference in one piece (decisions 8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _utils
from .._triton_utils import KernelOp, on_device
from . import reference
from ._triton_backward import stack_backward
from ._triton_blocks import (
    _row_primitive,
    _sphere_to_world_rigid,
    _store3,
    coupling_stack,
    kernel_args,
    scale_log_det,
    world_to_sphere_rigid,
)
from .weights import Affine, CouplingWeights


@triton.jit
def _coupling_kernel(
    x_ptr,  # points: element (b, n, m, c) at b*sxb + n*sxn + m*sxm + c*sxc (sxm = 0 when shared)
    owner_ptr,  # (B, N) int64 primitive of each point (HAS_OWNER)
    out_ptr,  # (R, 3) output rows, R = B*N*M (or B*N with owner), in x's dtype
    ld_ptr,  # (R,) fp32 log-det, or the authors' ldj with ALL_S (WRITE_LOG_DET)
    stage_ptr,  # (L + 1, R, 3) fp32 rows before each layer and after the last (STORE_STAGES)
    scale_ptr, rot_ptr, trans_ptr,  # (B*M, 3), (B*M, 9), (B*M, 3) fp32
    bias_ptr,  # (B*M, L*2*H) fp32 hoisted first-layer biases
    pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr,  # projection (3, HP), (HP,), TMA (P, HP) [P, BLOCK_K], (P,)
    w1_desc, w2_desc, b2_ptr, w3_desc, b3_ptr, mask_ptr,  # see _head; mask (L, 4)
    sxb, sxn, sxm, sxc, R, N, M,
    L: tl.constexpr, H: tl.constexpr, P: tl.constexpr, HP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, INVERSE: tl.constexpr, HAS_OWNER: tl.constexpr, WRITE_LOG_DET: tl.constexpr,
    STORE_STAGES: tl.constexpr, DOT_PREC: tl.constexpr, ALL_S: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    b, n, m, bm, bad_owner = _row_primitive(rows, rmask, owner_ptr, N, M, HAS_OWNER)
    xp = x_ptr + b * sxb + n * sxn + m * sxm
    y0 = tl.load(xp, mask=rmask, other=0.0).to(tl.float32)
    y1 = tl.load(xp + sxc, mask=rmask, other=0.0).to(tl.float32)
    y2 = tl.load(xp + 2 * sxc, mask=rmask, other=0.0).to(tl.float32)
    if INVERSE:
        y0, y1, y2 = world_to_sphere_rigid(y0, y1, y2, bm, rmask, scale_ptr, rot_ptr, trans_ptr)
    y0, y1, y2, log_det = coupling_stack(y0, y1, y2, bm, rows, rmask, bias_ptr, pw1_ptr, pb1_ptr, pw2_desc,
                                         pb2_ptr, w1_desc, w2_desc, b2_ptr, w3_desc, b3_ptr, mask_ptr, stage_ptr,
                                         R, L, H, P, HP, BLOCK_R, BLOCK_K, INVERSE, DOT_PREC, STORE_STAGES,
                                         ALL_S)
    if WRITE_LOG_DET and not ALL_S:  # the scale stage; the rotation has det 1
        if INVERSE:
            log_det += scale_log_det(bm, rmask, scale_ptr)
        else:
            log_det -= scale_log_det(bm, rmask, scale_ptr)
    if not INVERSE:
        y0, y1, y2 = _sphere_to_world_rigid(y0, y1, y2, bm, rmask, scale_ptr, rot_ptr, trans_ptr)
    if HAS_OWNER:
        y0 = tl.where(bad_owner, float("nan"), y0)
        y1 = tl.where(bad_owner, float("nan"), y1)
        y2 = tl.where(bad_owner, float("nan"), y2)
        log_det = tl.where(bad_owner, float("nan"), log_det)
    dt = out_ptr.dtype.element_ty
    _store3(out_ptr + rows * 3, y0.to(dt), y1.to(dt), y2.to(dt), rmask)
    if WRITE_LOG_DET:
        tl.store(ld_ptr + rows, log_det, mask=rmask)


def launch(points, cond, weights: CouplingWeights, affine: Affine, *, inverse: bool, owner,
           log_det: str | None, stages: bool = False):
    """Run the fused map without autograd; log_det: None, "jacobian" or "authors_ldj" (see the reference).

    Returns (out, log_det or None, stages or None) in the reference's shapes; stages: (L + 1, R, 3)
    fp32 rows before each layer and after the last, in the order applied (R = B*N*M, or B*N with owner).
    """
    B, M = cond.shape[:2]
    N = points.shape[1]
    if owner is not None:
        xv, rows, shape = points, B * N, (B, N)
        strides = (points.stride(0), points.stride(1), 0, points.stride(2))
    else:
        xv = (points.unsqueeze(2) if points.dim() == 3 else points).expand(B, N, M, 3)
        rows, shape, strides = B * N * M, (B, N, M), xv.stride()
    out = _utils.empty(*shape, 3, dtype=points.dtype, device=points.device)
    ld = _utils.empty(*shape, dtype=torch.float32, device=points.device) if log_det else None
    st = _utils.empty(len(weights.layers) + 1, rows, 3, dtype=torch.float32, device=points.device) if stages else None
    if rows:
        tensors, consts, cfg = kernel_args(cond, weights, affine, points.dtype)
        with on_device(points):
            _coupling_kernel[(triton.cdiv(rows, cfg.block_r),)](
                xv, owner if owner is not None else out, out, ld if log_det else out, st if stages else out,
                *tensors, *strides, rows, N, M, BLOCK_R=cfg.block_r, INVERSE=inverse,
                HAS_OWNER=owner is not None, WRITE_LOG_DET=log_det is not None, STORE_STAGES=stages,
                ALL_S=log_det == "authors_ldj", num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts)
    return out, (ld.to(points.dtype) if log_det else None), st


def _reference(points, cond, weights, affine, owner, inverse, log_det):
    kinds = {"return_log_det": log_det == "jacobian", "return_authors_ldj": log_det == "authors_ldj"}
    if inverse:
        return reference.coupling_inverse(points, cond, weights, affine, owner=owner, **kinds)
    return reference.coupling_forward(points, cond, weights, affine, **kinds)


class _CouplingOp(KernelOp):
    """Kernel forward (writing its stages when a backward will follow); fused first-order backward."""

    @staticmethod
    def run_kernel(args, static, for_backward):
        inverse, owner, log_det = static
        out, ld, stages = launch(*args, inverse=inverse, owner=owner, log_det=log_det, stages=for_backward)
        return ((out, ld) if log_det else (out,)), (() if stages is None else (stages,))

    @staticmethod
    def fused_backward(args, static, kept, saved, grads):
        inverse, owner, log_det = static
        return stack_backward(*args, inverse=inverse, owner=owner, stages=saved[0], grad_out=grads[0],
                              grad_ld=grads[1] if log_det else None, log_det=log_det)

    @staticmethod
    def run_reference(args, static, kept):
        inverse, owner, log_det = static
        res = _reference(*args, owner, inverse, log_det)
        return tuple(res) if log_det else (res,)


def _run(points, cond, weights, affine, *, inverse, owner, log_det):
    outs = _CouplingOp.run(points, cond, weights, affine, inverse, owner, log_det)
    return tuple(outs) if log_det else outs[0]


def coupling_inverse(x, cond, weights, affine, *, owner=None, return_log_det=False, return_authors_ldj=False):
    """World -> sphere with the fused kernel; same arguments, shapes and results as the reference
    (float32, or 16-bit on a GPU; owner indices must be in range: out-of-range rows come out NaN)."""
    return _run(x, cond, weights, affine, inverse=True, owner=owner,
                log_det=reference.log_det_kind(return_log_det, return_authors_ldj))


def coupling_forward(z, cond, weights, affine, *, return_log_det=False, return_authors_ldj=False):
    """Sphere -> world with the fused kernel; same arguments, shapes and results as the reference."""
    return _run(z, cond, weights, affine, inverse=False, owner=None,
                log_det=reference.log_det_kind(return_log_det, return_authors_ldj))
