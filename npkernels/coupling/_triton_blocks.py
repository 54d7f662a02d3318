"""Triton building blocks of the coupling stack, shared by the forward, backward and G(x) kernels.

A kernel maps a tile of BLOCK_R rows; a row is a (point, primitive) pair (b, n, m), or a
point (b, n) in its ``owner`` primitive. Everything between reading x and writing the result
stays on chip: the rigid map, the scale, and for each of the L coupling layers
    p  = W_p2 relu(W_p1 (mask*y) + b_p1) + b_p2          projection 3 -> HP -> P
    h1 = relu(W1_P p + beta[b, m, layer])                merged s/t first layer; beta = W1_C C_m + b1,
                                                         hoisted: one (B*M, C) x (C, L*2*H) product per call
    s  = clamp(W3_s relu(W2_s h1_s + b2_s) + b3_s, -10, 10),  t = W3_t relu(W2_t h1_t + b2_t) + b3_t
    inverse: y <- m*y + (1-m)*(y*exp(s) + t), log_det += sum((1-m)*s)  (ALL_S: sum(s), the authors' ldj)
    forward: y <- m*y + (1-m)*((y - t)*exp(-s)), log_det -= sum((1-m)*s)
inverse = ((x - T) @ R^T) * sigma, then layers L-1..0; forward = layers 0..L-1, then / sigma, @ R + T.

Layout and tiles: weights packed by ``_pack.pack_weights`` (widths zero-padded to powers of two
>= 16, since tl.dot needs K, N >= 16 on NVIDIA; the 3-wide outputs padded to 16; cached until a
weight changes); weight tiles are read through host-built TMA descriptors (``TensorDescriptor``:
no per-element address registers; cp.async.bulk.tensor on sm_90), per-row data with pointers.
The 3 -> HP layer is 3 FMAs per element (no dot). The HP -> P and H -> H products run over K
chunks of BLOCK_K, each chunk of the previous activation computed just before it is consumed
(flash-attention-style chaining), so a program holds at most a [BLOCK_R, H] accumulator, the
[BLOCK_R, P] projection and [BLOCK_K, H] weight tiles.

Precision: fp32 inputs use fp32 dot operands with ``input_precision`` "ieee" when
``torch.get_float32_matmul_precision() == "highest"``, else "tf32"; bf16/fp16 inputs (GPU only, never
chosen implicitly) use 16-bit operands; accumulation is always fp32; there is no float64 kernel
(``select_backend`` routes float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .._triton_utils import dot_config
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
                   INVERSE: tl.constexpr, DOT_PREC: tl.constexpr, STORE_STAGES: tl.constexpr,
                   ALL_S: tl.constexpr):
    """The L coupling layers on rows (y0, y1, y2) of primitives bm -> (y0, y1, y2, log_det).

    log_det sums the transformed coordinates' s per layer (ALL_S: all three s, the authors' ldj), with
    the sign of the direction; the scale stage's term is the caller's.

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
        if ALL_S:
            ld = s0 + s1 + s2
        else:
            ld = (1.0 - m0) * s0 + (1.0 - m1) * s1 + (1.0 - m2) * s2
        if INVERSE:
            y0 = m0 * y0 + (1.0 - m0) * (y0 * tl.exp(s0) + t0)
            y1 = m1 * y1 + (1.0 - m1) * (y1 * tl.exp(s1) + t1)
            y2 = m2 * y2 + (1.0 - m2) * (y2 * tl.exp(s2) + t2)
            log_det += ld
        else:
            y0 = m0 * y0 + (1.0 - m0) * ((y0 - t0) * tl.exp(-s0))
            y1 = m1 * y1 + (1.0 - m1) * ((y1 - t1) * tl.exp(-s1))
            y2 = m2 * y2 + (1.0 - m2) * ((y2 - t2) * tl.exp(-s2))
            log_det -= ld
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
def scale_log_det(bm, rmask, scale_ptr):
    """sum(log sigma) of rows of primitives bm: the log|det| of the scale stage of world -> sphere."""
    s0, s1, s2 = _load3(scale_ptr + bm * 3, rmask, 1.0)
    return tl.log(s0) + tl.log(s1) + tl.log(s2)


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

