"""Fused Triton kernels for the conditional coupling stack (world <-> sphere).

One program maps a tile of BLOCK_R rows; a row is a (point, primitive) pair (b, n, m), or a
point (b, n) in its ``owner`` primitive. Everything between reading x and writing the result
stays on chip: the rigid map, the scale, and for each of the L coupling layers
    p  = W_p2 relu(W_p1 (mask*y) + b_p1) + b_p2          projection 3 -> HP -> P
    h1 = relu(W1_P p + beta[b, m, layer])                merged s/t first layer; beta = W1_C C_m + b1,
                                                         hoisted: one (B*M, C) x (C, L*2*H) product per call
    s  = clamp(W3_s relu(W2_s h1_s + b2_s) + b3_s, -10, 10),  t = W3_t relu(W2_t h1_t + b2_t) + b3_t
    inverse: y <- m*y + (1-m)*(y*exp(s) + t), log_det += sum(s)
    forward: y <- m*y + (1-m)*((y - t)*exp(-s)), log_det -= sum(s)
inverse = ((x - T) @ R^T) * sigma, then layers L-1..0; forward = layers 0..L-1, then / sigma, @ R + T.

Layout and tiles: weights packed by ``_pack.pack_weights`` (widths zero-padded to powers of two
>= 16, since tl.dot needs K, N >= 16 on NVIDIA; the 3-wide outputs padded to 16; cached until a
weight changes); weight tiles are read through host-built TMA descriptors (``TensorDescriptor``:
no per-element address registers; cp.async.bulk.tensor on sm_90), per-row data with pointers.
The 3 -> HP layer is 3 FMAs per element (no dot). The HP -> P and H -> H products run over K chunks of BLOCK_K, each chunk of the previous activation computed just before
it is consumed (flash-attention-style chaining), so a program holds at most a [BLOCK_R, H]
accumulator, the [BLOCK_R, P] projection and [BLOCK_K, H] weight tiles. Out-of-range owners
are never dereferenced; their rows come out NaN.

Precision: fp32 inputs use fp32 dot operands with ``input_precision`` "ieee" when
``torch.get_float32_matmul_precision() == "highest"``, else "tf32"; bf16/fp16 inputs (GPU only, never
chosen implicitly) use 16-bit operands; accumulation is always fp32; float64 runs the reference.

Backward (``autograd.Function``): when a backward will follow, the forward kernel also writes the
rows entering each layer ("stages", 3 floats per layer and row). A first-order backward runs
``_coupling_backward_kernel``: per row tile and layer, last applied first, it recomputes the
layer's activations from its stage on chip, back-propagates through the update, both heads and
the projection, and writes the per-row activations and pre-activation gradients that the weight
gradients need; those are then row sums, i.e. batched matrix products (``stack_backward``, in
chunks of ``FUSED_BACKWARD_ROWS`` rows so memory stays bounded). Under ``create_graph`` (the
normal-consistency loss) the gradient must itself be differentiable: the map is recomputed through
the reference in one piece (decisions 8).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import _utils
from .._dispatch import log_once
from .._triton_utils import KernelOp, dot_config
from . import reference
from ._pack import pack_affine, pack_biases, pack_weights
from .weights import Affine, CouplingWeights


@triton.jit
def _load3(ptr, mask, other):
    """Three consecutive values per row (a row of a (R, 3) table) as [BLOCK_R] fp32 vectors."""
    a = tl.load(ptr, mask=mask, other=other).to(tl.float32)
    b = tl.load(ptr + 1, mask=mask, other=other).to(tl.float32)
    c = tl.load(ptr + 2, mask=mask, other=other).to(tl.float32)
    return a, b, c


@triton.jit
def _project(q0, q1, q2, pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr, rmask, hp_out, p_out, HP: tl.constexpr,
             P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr,
             STORE: tl.constexpr):
    """p = W_p2 relu(W_p1 q + b_p1) + b_p2 for q = mask*y given as 3 vectors [BLOCK_R] -> [BLOCK_R, P].

    STORE: also write the hidden activation and p to the rows hp_out / p_out ([BLOCK_R] pointers to
    HP and P values per row) for the weight gradients of the backward pass.
    """
    acc = tl.zeros([BLOCK_R, P], dtype=tl.float32)
    for k0 in range(0, HP, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        h = tl.maximum(_project_hidden(q0, q1, q2, pw1_ptr, pb1_ptr, ks, HP), 0.0)
        if STORE:
            tl.store(hp_out[:, None] + ks[None, :], h, mask=rmask[:, None])
        w = tl.trans(pw2_desc.load([0, k0]))  # [BLOCK_K, P] = W_p2[:, ks]^T
        acc = tl.dot(h.to(pw2_desc.dtype), w, acc, input_precision=DOT_PREC)
    p = acc + tl.load(pb2_ptr + tl.arange(0, P))[None, :]
    if STORE:
        tl.store(p_out[:, None] + tl.arange(0, P)[None, :], p, mask=rmask[:, None])
    return p


@triton.jit
def _project_hidden(q0, q1, q2, pw1_ptr, pb1_ptr, ks, HP: tl.constexpr):
    """Pre-activation W_p1 q + b_p1 of the projection units ks: 3 FMAs per element -> [BLOCK_R, len(ks)]."""
    return (q0[:, None] * tl.load(pw1_ptr + ks)[None, :] + q1[:, None] * tl.load(pw1_ptr + HP + ks)[None, :]
            + q2[:, None] * tl.load(pw1_ptr + 2 * HP + ks)[None, :] + tl.load(pb1_ptr + ks)[None, :])


@triton.jit
def _head(p, bias_row, row, w1_desc, w2_desc, w3_desc, b2_ptr, b3_ptr, rmask, h1_out, h2_out, H: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr, STORE: tl.constexpr):
    """One s or t MLP from the projection p [BLOCK_R, P] -> (its 3 raw outputs as [BLOCK_R] vectors, h2).

    bias_row: [BLOCK_R] pointers to this head's hoisted bias (H values per row); row = 2*layer + head
    selects the head's block in the stacked weights: w1 (L*2*H, P) projection columns of the first
    layer, w2 (L*2*H, H), w3 (L*2*16, H) zero-padded; b2 (L*2*H,), b3 (L*2*16,). The outputs are
    not clamped; h2 [BLOCK_R, H] is the last hidden activation. STORE: also write the first and
    second hidden activations to the rows h1_out / h2_out (H values per row).
    """
    pd = p.to(w1_desc.dtype)
    acc = tl.zeros([BLOCK_R, H], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        w1 = tl.trans(w1_desc.load([row * H + k0, 0]))  # [P, BLOCK_K] = W1[ks, :]^T
        beta = tl.load(bias_row[:, None] + ks[None, :], mask=rmask[:, None], other=0.0)
        h1 = tl.maximum(tl.dot(pd, w1, input_precision=DOT_PREC) + beta, 0.0)
        if STORE:
            tl.store(h1_out[:, None] + ks[None, :], h1, mask=rmask[:, None])
        w2 = tl.trans(w2_desc.load([row * H, k0]))  # [BLOCK_K, H] = W2[:, ks]^T
        acc = tl.dot(h1.to(w2_desc.dtype), w2, acc, input_precision=DOT_PREC)
    cols_h = tl.arange(0, H)
    h2 = tl.maximum(acc + tl.load(b2_ptr + row * H + cols_h)[None, :], 0.0)
    if STORE:
        tl.store(h2_out[:, None] + cols_h[None, :], h2, mask=rmask[:, None])
    cols_o = tl.arange(0, 16)
    w3 = tl.trans(w3_desc.load([row * 16, 0]))  # [H, 16] = W3^T
    o = tl.dot(h2.to(w3_desc.dtype), w3, input_precision=DOT_PREC) + tl.load(b3_ptr + row * 16 + cols_o)[None, :]
    o0 = tl.sum(tl.where(cols_o[None, :] == 0, o, 0.0), axis=1)
    o1 = tl.sum(tl.where(cols_o[None, :] == 1, o, 0.0), axis=1)
    o2 = tl.sum(tl.where(cols_o[None, :] == 2, o, 0.0), axis=1)
    return o0, o1, o2, h2


@triton.jit
def _clamp_s(s):
    return tl.minimum(tl.maximum(s, -10.0), 10.0)


@triton.jit
def coupling_stack(y0, y1, y2, bm, rows, rmask, bias_ptr, pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr, w1_desc, w2_desc,
                   b2_ptr, w3_desc, b3_ptr, mask_ptr, stage_ptr, R, L: tl.constexpr, H: tl.constexpr,
                   P: tl.constexpr, HP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                   INVERSE: tl.constexpr, DOT_PREC: tl.constexpr, STORE_STAGES: tl.constexpr):
    """The L coupling layers on rows (y0, y1, y2) of primitives bm -> (y0, y1, y2, log_det).

    STORE_STAGES: write the rows entering each layer and the result, in the order applied, to the
    (L + 1, R, 3) fp32 table stage_ptr (what the fused backward starts from).
    """
    log_det = tl.zeros_like(y0)
    for i in range(L):
        if INVERSE:
            layer = L - 1 - i
        else:
            layer = i
        if STORE_STAGES:
            _store3(stage_ptr + (i * R + rows) * 3, y0, y1, y2, rmask)
        m0, m1, m2 = _load3(mask_ptr + layer * 4, None, None)
        p = _project(y0 * m0, y1 * m1, y2 * m2, pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr, rmask, None, None, HP, P,
                     BLOCK_R, BLOCK_K, DOT_PREC, False)
        bias_row = bias_ptr + (bm * L + layer) * (2 * H)
        s0, s1, s2, _ = _head(p, bias_row, 2 * layer, w1_desc, w2_desc, w3_desc, b2_ptr, b3_ptr, rmask, None,
                              None, H, BLOCK_R, BLOCK_K, DOT_PREC, False)
        t0, t1, t2, _ = _head(p, bias_row + H, 2 * layer + 1, w1_desc, w2_desc, w3_desc, b2_ptr, b3_ptr, rmask,
                              None, None, H, BLOCK_R, BLOCK_K, DOT_PREC, False)
        s0, s1, s2 = _clamp_s(s0), _clamp_s(s1), _clamp_s(s2)
        if INVERSE:
            y0 = m0 * y0 + (1.0 - m0) * (y0 * tl.exp(s0) + t0)
            y1 = m1 * y1 + (1.0 - m1) * (y1 * tl.exp(s1) + t1)
            y2 = m2 * y2 + (1.0 - m2) * (y2 * tl.exp(s2) + t2)
            log_det += s0 + s1 + s2
        else:
            y0 = m0 * y0 + (1.0 - m0) * ((y0 - t0) * tl.exp(-s0))
            y1 = m1 * y1 + (1.0 - m1) * ((y1 - t1) * tl.exp(-s1))
            y2 = m2 * y2 + (1.0 - m2) * ((y2 - t2) * tl.exp(-s2))
            log_det -= s0 + s1 + s2
    if STORE_STAGES:
        _store3(stage_ptr + (L * R + rows) * 3, y0, y1, y2, rmask)
    return y0, y1, y2, log_det


@triton.jit
def _store3(ptr, a, b, c, mask):
    """Write three [BLOCK_R] vectors as the rows of a (R, 3) table (ptr: [BLOCK_R] row pointers)."""
    tl.store(ptr, a, mask=mask)
    tl.store(ptr + 1, b, mask=mask)
    tl.store(ptr + 2, c, mask=mask)


@triton.jit
def world_to_sphere_rigid(x0, x1, x2, bm, rmask, scale_ptr, rot_ptr, trans_ptr):
    """((x - T) @ R^T) * sigma for rows of primitives bm."""
    t0, t1, t2 = _load3(trans_ptr + bm * 3, rmask, 0.0)
    d0, d1, d2 = x0 - t0, x1 - t1, x2 - t2
    r00, r01, r02 = _load3(rot_ptr + bm * 9, rmask, 0.0)
    r10, r11, r12 = _load3(rot_ptr + bm * 9 + 3, rmask, 0.0)
    r20, r21, r22 = _load3(rot_ptr + bm * 9 + 6, rmask, 0.0)
    s0, s1, s2 = _load3(scale_ptr + bm * 3, rmask, 1.0)
    return ((d0 * r00 + d1 * r01 + d2 * r02) * s0, (d0 * r10 + d1 * r11 + d2 * r12) * s1,
            (d0 * r20 + d1 * r21 + d2 * r22) * s2)


@triton.jit
def _sphere_to_world_rigid(y0, y1, y2, bm, rmask, scale_ptr, rot_ptr, trans_ptr):
    """(y / sigma) @ R + T for rows of primitives bm."""
    s0, s1, s2 = _load3(scale_ptr + bm * 3, rmask, 1.0)
    y0, y1, y2 = y0 / s0, y1 / s1, y2 / s2
    r00, r01, r02 = _load3(rot_ptr + bm * 9, rmask, 0.0)
    r10, r11, r12 = _load3(rot_ptr + bm * 9 + 3, rmask, 0.0)
    r20, r21, r22 = _load3(rot_ptr + bm * 9 + 6, rmask, 0.0)
    t0, t1, t2 = _load3(trans_ptr + bm * 3, rmask, 0.0)
    return (y0 * r00 + y1 * r10 + y2 * r20 + t0, y0 * r01 + y1 * r11 + y2 * r21 + t1,
            y0 * r02 + y1 * r12 + y2 * r22 + t2)


@triton.jit
def _row_primitive(rows, rmask, owner_ptr, N, M, HAS_OWNER: tl.constexpr):
    """(b, n, bm = b*M + m, bad_owner) of rows (b, n, m) in the order of (B, N, M), or rows (b, n) with
    m = owner[b, n]. An out-of-range owner is replaced by 0 and flagged, never dereferenced."""
    if HAS_OWNER:
        b = rows // N
        n = rows % N
        m = tl.load(owner_ptr + rows, mask=rmask, other=0)
        bad_owner = (m < 0) | (m >= M)
        m = tl.where(bad_owner, 0, m)
    else:
        b = rows // (N * M)
        n = (rows // M) % N
        m = rows % M
        bad_owner = rows < 0
    return b, n, m, b * M + m, bad_owner


@triton.jit
def _coupling_kernel(
    x_ptr,  # points: element (b, n, m, c) at b*sxb + n*sxn + m*sxm + c*sxc (sxm = 0 when shared)
    owner_ptr,  # (B, N) int64 primitive of each point (HAS_OWNER)
    out_ptr,  # (R, 3) output rows, R = B*N*M (or B*N with owner), in x's dtype
    ld_ptr,  # (R,) fp32 log-det (WRITE_LOG_DET)
    stage_ptr,  # (L + 1, R, 3) fp32 rows before each layer and after the last (STORE_STAGES)
    scale_ptr, rot_ptr, trans_ptr,  # (B*M, 3), (B*M, 9), (B*M, 3) fp32
    bias_ptr,  # (B*M, L*2*H) fp32 hoisted first-layer biases
    pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr,  # projection (3, HP), (HP,), TMA (P, HP) [P, BLOCK_K], (P,)
    w1_desc, w2_desc, b2_ptr, w3_desc, b3_ptr, mask_ptr,  # see _head; mask (L, 4)
    sxb, sxn, sxm, sxc, R, N, M,
    L: tl.constexpr, H: tl.constexpr, P: tl.constexpr, HP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, INVERSE: tl.constexpr, HAS_OWNER: tl.constexpr, WRITE_LOG_DET: tl.constexpr,
    STORE_STAGES: tl.constexpr, DOT_PREC: tl.constexpr,
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
                                         R, L, H, P, HP, BLOCK_R, BLOCK_K, INVERSE, DOT_PREC, STORE_STAGES)
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


@triton.jit
def _head_backward(gs0, gs1, gs2, h2, p, bias_row, row, w1_desc, w2_desc, w3_desc, rmask, go_out, ga2_out,
                   ga1_out, H: tl.constexpr, P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_PREC: tl.constexpr):
    """Back through one s or t MLP: gradient (gs0, gs1, gs2) of its 3 outputs -> gradient of p [BLOCK_R, P].

    Writes the gradients of the output (16 padded values per row), second and first pre-activations
    (H each) to the rows go_out / ga2_out / ga1_out. The first layer is recomputed chunk by chunk for
    its ReLU mask, exactly as ``_head`` computed it.
    """
    cols_o = tl.arange(0, 16)[None, :]
    go = tl.where(cols_o == 0, gs0[:, None], tl.where(cols_o == 1, gs1[:, None],
                                                      tl.where(cols_o == 2, gs2[:, None], 0.0)))
    tl.store(go_out[:, None] + cols_o, go, mask=rmask[:, None])
    w3 = w3_desc.load([row * 16, 0])  # [16, H] = W3
    ga2 = tl.where(h2 > 0, tl.dot(go.to(w3_desc.dtype), w3, input_precision=DOT_PREC), 0.0)
    tl.store(ga2_out[:, None] + tl.arange(0, H)[None, :], ga2, mask=rmask[:, None])
    ga2d, pd = ga2.to(w2_desc.dtype), p.to(w1_desc.dtype)
    gp = tl.zeros([BLOCK_R, P], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        w1 = w1_desc.load([row * H + k0, 0])  # [BLOCK_K, P] = W1[ks, :]
        beta = tl.load(bias_row[:, None] + ks[None, :], mask=rmask[:, None], other=0.0)
        a1 = tl.dot(pd, tl.trans(w1), input_precision=DOT_PREC) + beta
        w2 = w2_desc.load([row * H, k0])  # [H, BLOCK_K] = W2[:, ks]
        ga1 = tl.where(a1 > 0, tl.dot(ga2d, w2, input_precision=DOT_PREC), 0.0)
        tl.store(ga1_out[:, None] + ks[None, :], ga1, mask=rmask[:, None])
        gp = tl.dot(ga1.to(w1_desc.dtype), w1, gp, input_precision=DOT_PREC)
    return gp


@triton.jit
def _project_backward(q0, q1, q2, gp, pw1_ptr, pb1_ptr, pw2_desc, rmask, ghp_out, HP: tl.constexpr,
                      BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """Back through the projection: gradient gp [BLOCK_R, P] of p -> gradient of q as 3 vectors.

    Writes the gradient of the hidden pre-activation (HP values per row) to the rows ghp_out.
    """
    gq0 = tl.zeros_like(q0)
    gq1 = tl.zeros_like(q0)
    gq2 = tl.zeros_like(q0)
    gpd = gp.to(pw2_desc.dtype)
    for k0 in range(0, HP, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        h = _project_hidden(q0, q1, q2, pw1_ptr, pb1_ptr, ks, HP)
        w = pw2_desc.load([0, k0])  # [P, BLOCK_K] = W_p2[:, ks]
        gh = tl.where(h > 0, tl.dot(gpd, w, input_precision=DOT_PREC), 0.0)
        tl.store(ghp_out[:, None] + ks[None, :], gh, mask=rmask[:, None])
        gq0 += tl.sum(gh * tl.load(pw1_ptr + ks)[None, :], axis=1)
        gq1 += tl.sum(gh * tl.load(pw1_ptr + HP + ks)[None, :], axis=1)
        gq2 += tl.sum(gh * tl.load(pw1_ptr + 2 * HP + ks)[None, :], axis=1)
    return gq0, gq1, gq2


@triton.jit
def _coupling_backward_kernel(
    owner_ptr,  # (B, N) int64 (HAS_OWNER)
    stage_ptr,  # (L + 1, R, 3) fp32 stages written by the forward kernel
    gout_ptr,  # (R, 3) fp32 gradient of the coupling stack's output
    gld_ptr,  # (R,) fp32 gradient of the log-det (HAS_GLD)
    gin_ptr,  # (R, 3) fp32 out: gradient of the stack's input
    hp_tab_ptr, ghp_tab_ptr,  # (L, R, HP) out: projection hidden activation and the gradient of its pre-activation
    p_tab_ptr, gp_tab_ptr,  # (L, R, P) out: projection output and its gradient
    h1_tab_ptr, ga1_tab_ptr, h2_tab_ptr, ga2_tab_ptr,  # (L, 2, R, H) out: hidden activations and pre-activation gradients
    go_tab_ptr,  # (L, 2, R, 16) out: gradient of the (unclamped) s / t outputs
    bias_ptr, pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr, w1_desc, w2_desc, b2_ptr, w3_desc, b3_ptr, mask_ptr,
    R, N, M,
    L: tl.constexpr, H: tl.constexpr, P: tl.constexpr, HP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, INVERSE: tl.constexpr, HAS_OWNER: tl.constexpr, HAS_GLD: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    _, _, _, bm, bad_owner = _row_primitive(rows, rmask, owner_ptr, N, M, HAS_OWNER)
    g0, g1, g2 = _load3(gout_ptr + rows * 3, rmask, 0.0)
    if HAS_GLD:
        gld = tl.load(gld_ptr + rows, mask=rmask, other=0.0)
    else:
        gld = tl.zeros_like(g0)
    for i in range(L):  # layers in the reverse of the order they were applied
        if INVERSE:
            layer = i
        else:
            layer = L - 1 - i
        y0, y1, y2 = _load3(stage_ptr + ((L - 1 - i) * R + rows) * 3, rmask, 0.0)
        m0, m1, m2 = _load3(mask_ptr + layer * 4, None, None)
        q0, q1, q2 = y0 * m0, y1 * m1, y2 * m2
        p = _project(q0, q1, q2, pw1_ptr, pb1_ptr, pw2_desc, pb2_ptr, rmask, hp_tab_ptr + (layer * R + rows) * HP,
                     p_tab_ptr + (layer * R + rows) * P, HP, P, BLOCK_R, BLOCK_K, DOT_PREC, True)
        bias_row = bias_ptr + (bm * L + layer) * (2 * H)
        rs = (2 * layer * R + rows) * H  # this layer's s-head rows in the (L, 2, R, H) tables
        rt = ((2 * layer + 1) * R + rows) * H
        s0, s1, s2, h2s = _head(p, bias_row, 2 * layer, w1_desc, w2_desc, w3_desc, b2_ptr, b3_ptr, rmask,
                                h1_tab_ptr + rs, h2_tab_ptr + rs, H, BLOCK_R, BLOCK_K, DOT_PREC, True)
        t0, t1, t2, h2t = _head(p, bias_row + H, 2 * layer + 1, w1_desc, w2_desc, w3_desc, b2_ptr, b3_ptr, rmask,
                                h1_tab_ptr + rt, h2_tab_ptr + rt, H, BLOCK_R, BLOCK_K, DOT_PREC, True)
        gs0, gt0, g0 = _update_backward(g0, gld, y0, m0, s0, t0, INVERSE)
        gs1, gt1, g1 = _update_backward(g1, gld, y1, m1, s1, t1, INVERSE)
        gs2, gt2, g2 = _update_backward(g2, gld, y2, m2, s2, t2, INVERSE)
        gp = _head_backward(gs0, gs1, gs2, h2s, p, bias_row, 2 * layer, w1_desc, w2_desc, w3_desc, rmask,
                            go_tab_ptr + (2 * layer * R + rows) * 16, ga2_tab_ptr + rs, ga1_tab_ptr + rs, H, P, BLOCK_R,
                            BLOCK_K, DOT_PREC)
        gp += _head_backward(gt0, gt1, gt2, h2t, p, bias_row + H, 2 * layer + 1, w1_desc, w2_desc, w3_desc, rmask,
                             go_tab_ptr + ((2 * layer + 1) * R + rows) * 16, ga2_tab_ptr + rt, ga1_tab_ptr + rt, H, P, BLOCK_R,
                             BLOCK_K, DOT_PREC)
        tl.store(gp_tab_ptr + (layer * R + rows)[:, None] * P + tl.arange(0, P)[None, :], gp, mask=rmask[:, None])
        gq0, gq1, gq2 = _project_backward(q0, q1, q2, gp, pw1_ptr, pb1_ptr, pw2_desc, rmask,
                                          ghp_tab_ptr + (layer * R + rows) * HP, HP, BLOCK_K, DOT_PREC)
        g0 += m0 * gq0
        g1 += m1 * gq1
        g2 += m2 * gq2
    if HAS_OWNER:
        g0 = tl.where(bad_owner, float("nan"), g0)
        g1 = tl.where(bad_owner, float("nan"), g1)
        g2 = tl.where(bad_owner, float("nan"), g2)
    _store3(gin_ptr + rows * 3, g0, g1, g2, rmask)


@triton.jit
def _update_backward(g, gld, y, m, s_raw, t, INVERSE: tl.constexpr):
    """One coordinate of a coupling update, backwards: gradient g of y' (and gld of the log-det)
    -> (gradient of the raw s output, of t, of y). The clamp passes gradient strictly inside
    (-10, 10), as torch's hardtanh does."""
    s = _clamp_s(s_raw)
    free = 1.0 - m
    if INVERSE:  # y' = m*y + (1-m)*(y*exp(s) + t), log_det += s
        e = tl.exp(s)
        gs = free * g * y * e + gld
        gt = free * g
    else:  # y' = m*y + (1-m)*((y - t)*exp(-s)), log_det -= s
        e = tl.exp(-s)
        gs = -(free * g * (y - t) * e) - gld
        gt = -(free * g * e)
    gs = tl.where((s_raw > -10.0) & (s_raw < 10.0), gs, 0.0)
    return gs, gt, g * (m + free * e)


def kernel_args(cond: torch.Tensor, weights: CouplingWeights, affine: Affine, x_dtype: torch.dtype):
    """(tensors, constexprs, DotConfig) shared by the coupling and implicit kernels."""
    cfg = dot_config(x_dtype)
    pk = pack_weights(weights, cfg.operand_dtype)
    H, P, bk = pk["H"], pk["P"], min(cfg.block_k, pk["H"], pk["HP"])
    descs = {"pw2": TensorDescriptor.from_tensor(pk["pw2"], [P, bk]),
             "w1": TensorDescriptor.from_tensor(pk["w1"].view(-1, P), [bk, P]),
             "w2": TensorDescriptor.from_tensor(pk["w2"].view(-1, H), [H, bk]),
             "w3": TensorDescriptor.from_tensor(pk["w3"].view(-1, H), [16, H])}
    tensors = (*pack_affine(affine), pack_biases(cond, pk), pk["pw1"], pk["pb1"], descs["pw2"], pk["pb2"],
               descs["w1"], descs["w2"], pk["b2"], descs["w3"], pk["b3"], pk["mask"])
    consts = {"L": pk["L"], "H": H, "P": P, "HP": pk["HP"], "BLOCK_K": bk, "DOT_PREC": cfg.precision}
    return tensors, consts, cfg


def launch(points, cond, weights: CouplingWeights, affine: Affine, *, inverse: bool, owner, log_det: bool,
           stages: bool = False):
    """Run the fused map without autograd.

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
        with _on_device(points):
            _coupling_kernel[(triton.cdiv(rows, cfg.block_r),)](
                xv, owner if owner is not None else out, out, ld if log_det else out, st if stages else out,
                *tensors, *strides, rows, N, M, BLOCK_R=cfg.block_r, INVERSE=inverse,
                HAS_OWNER=owner is not None, WRITE_LOG_DET=log_det, STORE_STAGES=stages,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts)
    return out, (ld.to(points.dtype) if log_det else None), st


def _on_device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


FUSED_BACKWARD_ROWS = 1 << 13
"""(point, primitive) rows per launch of the backward kernel: its activation tables take
4 * L * (2*HP + 2*P + 2*(4*H + 16)) bytes per row, ~45 KB at paper widths, so ~370 MB per launch."""


def _backward_tables(pk: dict, rows: int, dev) -> dict:
    """The backward kernel's per-row tables for ``rows`` rows (see ``_coupling_backward_kernel``)."""
    L, H, P, HP = pk["L"], pk["H"], pk["P"], pk["HP"]
    shapes = {"hp": (L, rows, HP), "ghp": (L, rows, HP), "p": (L, rows, P), "gp": (L, rows, P),
              "h1": (L, 2, rows, H), "ga1": (L, 2, rows, H), "h2": (L, 2, rows, H), "ga2": (L, 2, rows, H),
              "go": (L, 2, rows, 16)}
    return {k: _utils.empty(*v, dtype=torch.float32, device=dev) for k, v in shapes.items()}


def stack_backward(points, cond, weights: CouplingWeights, affine: Affine, *, inverse: bool, owner, stages,
                   grad_out, grad_ld) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """First-order gradients of the fused map from the ``stages`` its forward kernel wrote.

    points, cond, weights, affine: the op's arguments, requiring grad where a gradient is wanted;
    stages: (L + 1, R, 3) fp32 from ``launch(..., stages=True)``; grad_out: gradient of the output
    (its shape) or None; grad_ld: of the log-det or None. Returns [(leaf, gradient), ...].

    The backward kernel redoes each layer from its stored input (activations are recomputed, never
    kept from the forward pass), runs the layer backwards and writes per-row activations and
    pre-activation gradients; the weight gradients are then sums over rows, i.e. a few batched
    matrix products, and the hoisted biases, the rigid map and the scale are differentiated by
    autograd through the reference's small functions.
    """
    B, M = cond.shape[:2]
    N, L = points.shape[1], len(weights.layers)
    shape = (B, N) if owner is not None else (B, N, M)
    stages = stages.view(L + 1, *shape, 3)
    dev = points.device
    g_out = torch.zeros(*shape, 3, device=dev) if grad_out is None else grad_out.float()
    affine_leaves = [t for t in affine if t.requires_grad]
    found: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.enable_grad():  # the rigid map in fp32 (stages are fp32), differentiable to 16-bit leaves
        affine32 = Affine(*(t.float() for t in affine))
    if inverse:
        g_stack = g_out
    else:  # the rigid map comes after the couplings: differentiate it alone from the stack's output
        with torch.enable_grad():
            last = stages[L].detach().requires_grad_()
            res = torch.autograd.grad(reference.to_world_frame(last, affine32), [last, *affine_leaves], g_out)
        g_stack = res[0]
        found += zip(affine_leaves, res[1:])

    tensors, consts, cfg = kernel_args(cond, weights, affine, points.dtype)
    cfg = cfg.backward()
    pk = pack_weights(weights, cfg.operand_dtype)
    H, P, HP = pk["H"], pk["P"], pk["HP"]
    per_point = 1 if owner is not None else M
    sums = {"pw1": torch.zeros(HP, 3, device=dev), "pb1": torch.zeros(HP, device=dev),
            "pw2": torch.zeros(P, HP, device=dev), "pb2": torch.zeros(P, device=dev),
            "w1": torch.zeros(L, 2, H, P, device=dev), "beta": torch.zeros(L, 2, B * M, H, device=dev),
            "w2": torch.zeros(L, 2, H, H, device=dev), "b2": torch.zeros(L, 2, H, device=dev),
            "w3": torch.zeros(L, 2, 16, H, device=dev), "b3": torch.zeros(L, 2, 16, device=dev)}
    applied = [L - 1 - layer if inverse else layer for layer in range(L)]  # stage index of each layer's input
    g_in = torch.empty(*shape, 3, device=dev)
    step = max(1, FUSED_BACKWARD_ROWS // max(1, B * per_point))
    for lo in range(0, N, step):
        hi = min(N, lo + step)
        rows = B * (hi - lo) * per_point
        if rows == 0:
            continue
        st = stages[:, :, lo:hi].reshape(L + 1, rows, 3)
        own = owner[:, lo:hi].contiguous() if owner is not None else None
        gld = grad_ld[:, lo:hi].reshape(rows).float().contiguous() if grad_ld is not None else None
        gin = _utils.empty(rows, 3, dtype=torch.float32, device=dev)
        tab = _backward_tables(pk, rows, dev)
        with _on_device(points):
            _coupling_backward_kernel[(triton.cdiv(rows, cfg.block_r),)](
                own if own is not None else gin, st, g_stack[:, lo:hi].reshape(rows, 3).contiguous(),
                gld if gld is not None else gin, gin, tab["hp"], tab["ghp"], tab["p"], tab["gp"], tab["h1"], tab["ga1"],
                tab["h2"], tab["ga2"], tab["go"], *tensors[3:], rows, hi - lo, M, BLOCK_R=cfg.block_r,
                INVERSE=inverse, HAS_OWNER=owner is not None, HAS_GLD=gld is not None,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts)
        g_in[:, lo:hi] = gin.view(B, hi - lo, *shape[2:], 3)
        q = st[applied] * pk["mask"][:, None, :3]
        sums["pw1"] += torch.einsum("lrh,lrc->hc", tab["ghp"], q)
        sums["pb1"] += tab["ghp"].sum((0, 1))
        sums["pw2"] += torch.einsum("lrp,lrh->ph", tab["gp"], tab["hp"])
        sums["pb2"] += tab["gp"].sum((0, 1))
        sums["w1"] += torch.einsum("ljrh,lrp->ljhp", tab["ga1"], tab["p"])
        sums["w2"] += torch.einsum("ljrh,ljrk->ljhk", tab["ga2"], tab["h1"])
        sums["b2"] += tab["ga2"].sum(2)
        sums["w3"] += torch.einsum("ljro,ljrh->ljoh", tab["go"], tab["h2"])
        sums["b3"] += tab["go"].sum(2)
        if owner is None:  # rows are (b, n, m): the bias of (b, m) collects over n
            sums["beta"] += tab["ga1"].view(L, 2, B, hi - lo, M, H).sum(3).view(L, 2, B * M, H)
        else:
            bm = (torch.arange(B, device=dev)[:, None] * M + own).reshape(-1)
            sums["beta"].index_add_(2, bm, tab["ga1"])

    with torch.enable_grad():  # rigid map (inverse), hoisted biases: autograd through the reference
        if inverse:
            targets = [t for t in (points, *affine_leaves) if t.requires_grad]
            if targets:
                res = torch.autograd.grad(reference.to_sphere_frame(points.float(), affine32, owner), targets,
                                          g_in, allow_unused=True)
                found += zip(targets, res)
        elif points.requires_grad:
            found.append((points, g_in.to(points.dtype)))
        found += _bias_grads(cond, weights, sums["beta"], B, M)
    found += _weight_grads(weights, sums)
    return [(leaf, g) for leaf, g in found if g is not None]


def _bias_grads(cond, weights: CouplingWeights, beta_grad, B: int, M: int):
    """Gradients of cond and of the condition columns of the first layers (and their biases) from the
    gradient (L, 2, B*M, H) of the hoisted biases, by autograd through ``reference.layer_biases``."""
    H0 = weights.hidden
    heads = [t for lw in weights.layers for t in (lw.s_w1, lw.s_b1, lw.t_w1, lw.t_b1)]
    targets = [t for t in (cond, *heads) if t.requires_grad]
    if not targets:
        return []
    upstream = [torch.cat([g[0, :, :H0], g[1, :, :H0]], -1).view(B, M, 2 * H0).to(cond.dtype) for g in beta_grad]
    res = torch.autograd.grad(reference.layer_biases(cond, weights), targets, upstream, allow_unused=True)
    return list(zip(targets, res))


def _weight_grads(weights: CouplingWeights, sums: dict):
    """Gradients of the weights from the row sums of the backward kernel, cut out of the padded layout."""
    Hp0, P0, H0, C = weights.proj_w1.shape[0], weights.proj_w2.shape[0], weights.hidden, weights.cond_dims
    pairs = [(weights.proj_w1, sums["pw1"][:Hp0]), (weights.proj_b1, sums["pb1"][:Hp0]),
             (weights.proj_w2, sums["pw2"][:P0, :Hp0]), (weights.proj_b2, sums["pb2"][:P0])]
    for i, lw in enumerate(weights.layers):
        for j, (w1, w2, b2, w3, b3) in enumerate(((lw.s_w1, lw.s_w2, lw.s_b2, lw.s_w3, lw.s_b3),
                                                  (lw.t_w1, lw.t_w2, lw.t_b2, lw.t_w3, lw.t_b3))):
            g1 = torch.zeros(w1.shape, device=w1.device)
            g1[:, C:] = sums["w1"][i, j, :H0, :P0]
            pairs += [(w1, g1), (w2, sums["w2"][i, j, :H0, :H0]), (b2, sums["b2"][i, j, :H0]),
                      (w3, sums["w3"][i, j, :3, :H0]), (b3, sums["b3"][i, j, :3])]
    return [(leaf, g.to(leaf.dtype)) for leaf, g in pairs if leaf.requires_grad]


def _reference(points, cond, weights, affine, owner, inverse, log_det):
    if inverse:
        return reference.coupling_inverse(points, cond, weights, affine, owner=owner, return_log_det=log_det)
    return reference.coupling_forward(points, cond, weights, affine, return_log_det=log_det)


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
                              grad_ld=grads[1] if log_det else None)

    @staticmethod
    def run_reference(args, static, kept):
        inverse, owner, log_det = static
        res = _reference(*args, owner, inverse, log_det)
        return tuple(res) if log_det else (res,)


def _run(points, cond, weights, affine, *, inverse, owner, log_det):
    if points.dtype == torch.float64:
        log_once("coupling:fp64", "npkernels: float64 coupling runs the PyTorch reference (no fp64 kernel)")
        return _reference(points, cond, weights, affine, owner, inverse, log_det)
    outs = _CouplingOp.run(points, cond, weights, affine, inverse, owner, log_det)
    return tuple(outs) if log_det else outs[0]


def coupling_inverse(x, cond, weights, affine, *, owner=None, return_log_det=False):
    """World -> sphere with the fused kernel; same arguments, shapes and results as the reference."""
    return _run(x, cond, weights, affine, inverse=True, owner=owner, log_det=return_log_det)


def coupling_forward(z, cond, weights, affine, *, return_log_det=False):
    """Sphere -> world with the fused kernel; same arguments, shapes and results as the reference."""
    return _run(z, cond, weights, affine, inverse=False, owner=None, log_det=return_log_det)
