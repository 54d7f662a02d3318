"""Fused first-order backward of the coupling stack (forward kernel in ``_triton``).

When a backward will follow, the forward kernel also writes the rows entering each layer
("stages", 3 floats per layer and row). ``_coupling_backward_kernel`` then takes, per row tile and
layer (last applied first), the layer's stage, recomputes its activations on chip, back-propagates
through the update, both heads and the projection, and writes the per-row activations and
pre-activation gradients that the weight gradients need; those are row sums, i.e. batched matrix
products (``stack_backward``, in chunks of ``FUSED_BACKWARD_ROWS`` rows so memory stays bounded).
The hoisted biases, the rigid map and the scale (with its log-det term) are differentiated by
autograd through the reference's small functions. Second order (``create_graph``) does not come
here (decisions 8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _utils
from .._triton_utils import on_device
from . import reference
from ._pack import pack_weights
from ._triton_blocks import (
    _clamp_s,
    _head,
    _load3,
    _project,
    _project_hidden,
    _row_primitive,
    _store3,
    kernel_args,
)
from .weights import Affine, CouplingWeights


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
    DOT_PREC: tl.constexpr, ALL_S: tl.constexpr,
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
        gs0, gt0, g0 = _update_backward(g0, gld, y0, m0, s0, t0, INVERSE, ALL_S)
        gs1, gt1, g1 = _update_backward(g1, gld, y1, m1, s1, t1, INVERSE, ALL_S)
        gs2, gt2, g2 = _update_backward(g2, gld, y2, m2, s2, t2, INVERSE, ALL_S)
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
def _update_backward(g, gld, y, m, s_raw, t, INVERSE: tl.constexpr, ALL_S: tl.constexpr):
    """One coordinate of a coupling update, backwards: gradient g of y' (and gld of the log-det)
    -> (gradient of the raw s output, of t, of y). The log-det holds the s of transformed
    coordinates only (ALL_S: every s, the authors' ldj). The clamp passes gradient strictly inside
    (-10, 10), as torch's hardtanh does."""
    s = _clamp_s(s_raw)
    free = 1.0 - m
    if not ALL_S:
        gld = free * gld
    if INVERSE:  # y' = m*y + (1-m)*(y*exp(s) + t), log_det += (1-m)*s
        e = tl.exp(s)
        gs = free * g * y * e + gld
        gt = free * g
    else:  # y' = m*y + (1-m)*((y - t)*exp(-s)), log_det -= (1-m)*s
        e = tl.exp(-s)
        gs = -(free * g * (y - t) * e) - gld
        gt = -(free * g * e)
    gs = tl.where((s_raw > -10.0) & (s_raw < 10.0), gs, 0.0)
    return gs, gt, g * (m + free * e)


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
                   grad_out, grad_ld, log_det: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """First-order gradients of the fused map from the ``stages`` its forward kernel wrote.

    points, cond, weights, affine: the op's arguments, requiring grad where a gradient is wanted;
    stages: (L + 1, R, 3) fp32 from ``launch(..., stages=True)``; grad_out: gradient of the output
    (its shape) or None; grad_ld: of the second output or None, which ``log_det`` names ("jacobian",
    "authors_ldj" or None, as in ``launch``). Returns [(leaf, gradient), ...].

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
        with on_device(points):
            _coupling_backward_kernel[(triton.cdiv(rows, cfg.block_r),)](
                own if own is not None else gin, st, g_stack[:, lo:hi].reshape(rows, 3).contiguous(),
                gld if gld is not None else gin, gin, tab["hp"], tab["ghp"], tab["p"], tab["gp"], tab["h1"], tab["ga1"],
                tab["h2"], tab["ga2"], tab["go"], *tensors[3:], rows, hi - lo, M, BLOCK_R=cfg.block_r,
                INVERSE=inverse, HAS_OWNER=owner is not None, HAS_GLD=gld is not None,
                ALL_S=log_det == "authors_ldj", num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts)
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
        if log_det == "jacobian" and grad_ld is not None and affine.scale.requires_grad:
            sign = 1.0 if inverse else -1.0  # the scale stage adds +-sum(log sigma) to the log-det
            term = sign * reference.scale_log_det(affine32, owner).expand(grad_ld.shape)
            found += zip([affine.scale], torch.autograd.grad(term, [affine.scale], grad_ld.float()))
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


