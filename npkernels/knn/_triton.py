"""Tiled Triton nearest-neighbour search (K=1), both directions in one launch.

Grid (B, ceil(N/BLOCK_Q) + ceil(P/BLOCK_Q)): the first tiles of axis 1 search x -> y, the rest
y -> x. A program holds BLOCK_Q query points in registers and scans the candidates in tiles of
BLOCK_C: d = (qx-cx)^2 + (qy-cy)^2 + (qz-cz)^2 in fp32, the direct form (never |q|^2+|c|^2-2qc,
which mis-orders close pairs), masked candidates at +inf, tile argmin with ties to the lowest
index, merged into the running best with a strict ``<`` (earlier tiles hold lower indices), so
ties go to the lowest index everywhere. Only the int64 index is written: -1 for a masked query
or when no valid candidate exists. Distances (and their gradients) are then recomputed in torch
from the indices exactly as the reference does (``reference.gather_sq_dist``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _utils
from .._triton_utils import on_device
from .reference import KNN, gather_sq_dist

BLOCK_Q = 64
BLOCK_C = 64  # [64, 64] tiles, 4 warps: no register spills on sm_90 (128 spills)


@triton.jit
def _nn_tile(
    q_ptr,
    c_ptr,
    qm_ptr,
    cm_ptr,
    out_ptr,
    b,
    tile,
    NQ,
    NC,
    HAS_QM: tl.constexpr,
    HAS_CM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Nearest candidate of queries tile*BLOCK_Q.. of cloud b; q/c are contiguous (B, NQ|NC, 3)."""
    qi = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qvalid = qi < NQ
    qp = q_ptr + (b * NQ + qi) * 3
    qx = tl.load(qp, mask=qvalid, other=0.0).to(tl.float32)
    qy = tl.load(qp + 1, mask=qvalid, other=0.0).to(tl.float32)
    qz = tl.load(qp + 2, mask=qvalid, other=0.0).to(tl.float32)
    best = tl.full([BLOCK_Q], float("inf"), tl.float32)
    arg = tl.full([BLOCK_Q], -1, tl.int64)
    c0 = 0
    while c0 < NC:  # a while loop: the interpreter (numpy >= 2.4) rejects range() over a runtime bound
        ci = c0 + tl.arange(0, BLOCK_C)
        cvalid = ci < NC
        if HAS_CM:
            cvalid = cvalid & (tl.load(cm_ptr + b * NC + ci, mask=cvalid, other=0) != 0)
        cp = c_ptr + (b * NC + ci) * 3
        dx = qx[:, None] - tl.load(cp, mask=cvalid, other=0.0).to(tl.float32)[None, :]
        dy = qy[:, None] - tl.load(cp + 1, mask=cvalid, other=0.0).to(tl.float32)[None, :]
        dz = qz[:, None] - tl.load(cp + 2, mask=cvalid, other=0.0).to(tl.float32)[None, :]
        d = tl.where(cvalid[None, :], dx * dx + dy * dy + dz * dz, float("inf"))
        tile_best, tile_arg = tl.min(d, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        arg = tl.where(better, c0 + tile_arg.to(tl.int64), arg)
        c0 += BLOCK_C
    if HAS_QM:
        arg = tl.where(tl.load(qm_ptr + b * NQ + qi, mask=qvalid, other=0) != 0, arg, -1)
    tl.store(out_ptr + b * NQ + qi, arg, mask=qvalid)


@triton.jit
def _knn_kernel(
    x_ptr,
    y_ptr,  # (B, N, 3), (B, P, 3) contiguous
    xm_ptr,
    ym_ptr,  # (B, N), (B, P) uint8 validity (HAS_XM / HAS_YM)
    idx_xy_ptr,
    idx_yx_ptr,  # (B, N), (B, P) int64 outputs
    N,
    P,
    TILES_X,
    HAS_XM: tl.constexpr,
    HAS_YM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    if tile < TILES_X:
        _nn_tile(x_ptr, y_ptr, xm_ptr, ym_ptr, idx_xy_ptr, b, tile, N, P, HAS_XM, HAS_YM, BLOCK_Q, BLOCK_C)
    else:
        _nn_tile(
            y_ptr,
            x_ptr,
            ym_ptr,
            xm_ptr,
            idx_yx_ptr,
            b,
            tile - TILES_X,
            P,
            N,
            HAS_YM,
            HAS_XM,
            BLOCK_Q,
            BLOCK_C,
        )


def nearest_indices(x, y, x_mask=None, y_mask=None, both: bool = True):
    """(idx_xy (B, N), idx_yx (B, P) or None) int64 with the reference's conventions, one launch;
    ``both=False`` searches x -> y only."""
    B, N, _ = x.shape
    P = y.shape[1]
    idx_xy = _utils.empty(B, N, dtype=torch.int64, device=x.device)
    idx_yx = _utils.empty(B, P, dtype=torch.int64, device=x.device) if both else None
    tiles_x, tiles_y = triton.cdiv(N, BLOCK_Q), triton.cdiv(P, BLOCK_Q) if both else 0
    if B == 0 or tiles_x + tiles_y == 0:
        return idx_xy, idx_yx
    xc, yc = x.detach().contiguous(), y.detach().contiguous()
    xm = x_mask.contiguous().view(torch.uint8) if x_mask is not None else idx_xy
    ym = y_mask.contiguous().view(torch.uint8) if y_mask is not None else idx_xy
    with on_device(x):
        _knn_kernel[(B, tiles_x + tiles_y)](
            xc,
            yc,
            xm,
            ym,
            idx_xy,
            idx_yx if both else idx_xy,
            N,
            P,
            tiles_x,
            HAS_XM=x_mask is not None,
            HAS_YM=y_mask is not None,
            BLOCK_Q=BLOCK_Q,
            BLOCK_C=BLOCK_C,
            num_warps=4,
        )
    return idx_xy, idx_yx


def nearest(x, y, *, x_mask=None, y_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour of every x in y only (x -> y tiles only); the reference's results and gradients."""
    idx, _ = nearest_indices(x, y, x_mask, y_mask, both=False)
    return gather_sq_dist(x, y, idx, x_mask), idx


def knn(x, y, *, x_mask=None, y_mask=None) -> KNN:
    """Nearest neighbour of every x in y and of every y in x; the reference's results and gradients."""
    idx_xy, idx_yx = nearest_indices(x, y, x_mask, y_mask)
    return KNN(gather_sq_dist(x, y, idx_xy, x_mask), idx_xy, gather_sq_dist(y, x, idx_yx, y_mask), idx_yx)
