"""Pure-PyTorch coupling stack in the rearranged ("efficient") algebraic form.

This is the specification of ``coupling_inverse`` / ``coupling_forward``, their CPU path and
the oracle of the Triton kernels. Same maths as the authors' SimpleNVP (see naive.py), with:
- the condition part of the first s/t layer hoisted: ``W1 [C; p] + b1 = (W1_C C + b1) + W1_P p``,
  a (B, M, H) bias computed once per call and layer (no per-point copy of C);
- the first s and t layers merged into one (P -> 2H) product that s and t share;
- everything differentiable to any order (second order for the normal loss).

Per layer with mask m (1 = kept coordinate) and h = [C, proj(m * y)]:
    world -> sphere ("inverse"): y' = m*y + (1-m)*(y*exp(s(h)) + t(h)),  log|det| = +sum((1-m)*s)
    sphere -> world ("forward"): y' = m*y + (1-m)*((y - t(h))*exp(-s(h))),  log|det| = -sum((1-m)*s)
Full maps: inverse = rigid^-1, then * sigma, then layers L-1..0; forward = layers 0..L-1,
then / sigma, then @ R + T (row vectors). Accumulation in the input dtype (fp32 or fp64).

Log-determinants: ``return_log_det`` gives log|det d(phi^-1)/dx| = sum over layers of the transformed
coordinates' s, plus sum(log sigma) (the rotation has det 1); the forward map's is its negative at the
matching point. ``return_authors_ldj`` gives instead the authors' SimpleNVP "ldj": the sum over layers
of all three s outputs (no mask, no scale term), which is not a log-determinant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .weights import Affine, CouplingWeights, LayerWeights


def _rows(t: Tensor, owner: Tensor | None) -> Tensor:
    """Broadcast a per-primitive tensor (B, M, ...) to the point layout.

    owner None -> (B, 1, M, ...) against points (B, N, M, 3); owner (B, N) -> (B, N, ...).
    """
    if owner is None:
        return t.unsqueeze(1)
    index = owner.reshape(owner.shape + (1,) * (t.dim() - 2)).expand(owner.shape + t.shape[2:])
    return torch.gather(t, 1, index)


def _rotate(v: Tensor, rotation: Tensor, owner: Tensor | None, transpose: bool) -> Tensor:
    """Row vectors times R (or R^T) per primitive, without expanding R over points."""
    eq = ("bnmi,bmji->bnmj" if transpose else "bnmi,bmij->bnmj") if owner is None else (
        "bni,bnji->bnj" if transpose else "bni,bnij->bnj")
    return torch.einsum(eq, v, rotation if owner is None else _rows(rotation, owner))


def to_sphere_frame(x: Tensor, affine: Affine, owner: Tensor | None = None) -> Tensor:
    """The rigid part of world -> sphere, ``((x - T) @ R^T) * sigma``.

    x: (B, N, 3) or (B, N, M, 3) -> (B, N, M, 3); with owner (B, N): x (B, N, 3) -> (B, N, 3).
    """
    y = (x.unsqueeze(2) if owner is None and x.dim() == 3 else x) - _rows(affine.translation, owner)
    return _rotate(y, affine.rotation, owner, transpose=True) * _rows(affine.scale, owner)


def to_world_frame(y: Tensor, affine: Affine) -> Tensor:
    """The rigid part of sphere -> world, ``(y / sigma) @ R + T``: y (B, S, M, 3) -> (B, S, M, 3)."""
    y = _rotate(y / affine.scale.unsqueeze(1), affine.rotation, None, transpose=False)
    return y + affine.translation.unsqueeze(1)


def layer_biases(cond: Tensor, weights: CouplingWeights) -> list[Tensor]:
    """Hoisted first-layer biases, one (B, M, 2H) tensor per layer: [s | t] halves."""
    C = weights.cond_dims
    out = []
    for lw in weights.layers:
        w_c = torch.cat([lw.s_w1[:, :C], lw.t_w1[:, :C]], 0)
        b = torch.cat([lw.s_b1, lw.t_b1], 0)
        out.append(torch.addmm(b, cond.reshape(-1, C), w_c.t()).reshape(cond.shape[:2] + (-1,)))
    return out


def prepare(cond: Tensor, weights: CouplingWeights) -> list[tuple[Tensor, Tensor]]:
    """Per layer: the hoisted bias (B, M, 2H) and the merged point weight [W1s_P; W1t_P] (2H, P).

    Computed once per call (or once for all chunks of a chunked evaluation).
    """
    C = weights.cond_dims
    return [(bias, torch.cat([lw.s_w1[:, C:], lw.t_w1[:, C:]], 0))
            for lw, bias in zip(weights.layers, layer_biases(cond, weights))]


def _scale_shift(y: Tensor, lw: LayerWeights, bias: Tensor, w_p: Tensor, weights: CouplingWeights
                 ) -> tuple[Tensor, Tensor]:
    """s (clamped) and t for points y (..., 3) with hoisted bias broadcastable to (..., 2H)."""
    H = lw.s_w1.shape[0]
    proj = F.linear(F.relu(F.linear(y * lw.mask, weights.proj_w1, weights.proj_b1)),
                    weights.proj_w2, weights.proj_b2)
    hs, ht = F.relu(torch.matmul(proj, w_p.t()) + bias).split(H, -1)  # split: its backward is one cat
    hs = F.relu(F.linear(hs, lw.s_w2, lw.s_b2))
    ht = F.relu(F.linear(ht, lw.t_w2, lw.t_b2))
    s = F.hardtanh(F.linear(hs, lw.s_w3, lw.s_b3), -10.0, 10.0)
    t = F.linear(ht, lw.t_w3, lw.t_b3)
    return s, t


LOG_DET_KINDS = ("jacobian", "authors_ldj")


def log_det_kind(return_log_det: bool, return_authors_ldj: bool) -> str | None:
    """Which second output a coupling op returns: "jacobian", "authors_ldj" or None."""
    if return_log_det and return_authors_ldj:
        raise ValueError("return_log_det and return_authors_ldj are exclusive: ask for one of them")
    return "jacobian" if return_log_det else "authors_ldj" if return_authors_ldj else None


def scale_log_det(affine: Affine, owner: Tensor | None = None) -> Tensor:
    """sum(log sigma), the log|det| of the scale stage of world -> sphere, in the point layout:
    (B, 1, M), or (B, N) with owner (B, N)."""
    return _rows(torch.log(affine.scale).sum(-1), owner)


def _layer_log_det(s: Tensor, lw: LayerWeights, kind: str | None) -> Tensor:
    """A layer's term of the log-det: the transformed coordinates' s, or all of s (authors' ldj)."""
    return s.sum(-1) if kind == "authors_ldj" else ((1 - lw.mask) * s).sum(-1)


def coupling_inverse(x: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                     owner: Tensor | None = None, return_log_det: bool = False,
                     return_authors_ldj: bool = False, prepared: list[tuple[Tensor, Tensor]] | None = None):
    """World -> sphere map of every point in every primitive (or in its ``owner`` primitive).

    Args:
        x: (B, N, 3) points shared by all primitives, or (B, N, M, 3).
        cond: (B, M, C) per-primitive conditions.
        owner: optional (B, N) int64 primitive index per point; x must then be (B, N, 3).
        return_log_det: also return log|det d(phi^-1)/dx|, shape of x[..., 0] (see the module docstring).
        return_authors_ldj: also return the authors' ldj instead (exclusive with return_log_det).
        prepared: ``prepare(cond, weights)``, to share it between chunks of one evaluation.
    Returns:
        (B, N, M, 3) sphere coordinates ((B, N, 3) with owner), and optionally the log-det or ldj.
    """
    kind = log_det_kind(return_log_det, return_authors_ldj)
    prepared = prepare(cond, weights) if prepared is None else prepared
    y = to_sphere_frame(x, affine, owner)
    log_det = y.new_zeros(y.shape[:-1])
    for lw, (bias, w_p) in zip(reversed(weights.layers), reversed(prepared)):
        s, t = _scale_shift(y, lw, _rows(bias, owner), w_p, weights)
        y = lw.mask * y + (1 - lw.mask) * (y * torch.exp(s) + t)
        log_det = log_det + _layer_log_det(s, lw, kind)
    if kind == "jacobian":
        log_det = log_det + scale_log_det(affine, owner)
    return y if kind is None else (y, log_det)


def coupling_forward(z: Tensor, cond: Tensor, weights: CouplingWeights, affine: Affine, *,
                     return_log_det: bool = False, return_authors_ldj: bool = False):
    """Sphere -> world map: z (B, S, M, 3) -> (B, S, M, 3); optionally log|det d(phi)/dz| (B, S, M),
    minus the inverse's at the matching point (or the authors' ldj, the negative of all s summed)."""
    kind = log_det_kind(return_log_det, return_authors_ldj)
    y = z
    log_det = y.new_zeros(y.shape[:-1])
    for lw, (bias, w_p) in zip(weights.layers, prepare(cond, weights)):
        s, t = _scale_shift(y, lw, bias.unsqueeze(1), w_p, weights)
        y = lw.mask * y + (1 - lw.mask) * ((y - t) * torch.exp(-s))
        log_det = log_det - _layer_log_det(s, lw, kind)
    if kind == "jacobian":
        log_det = log_det - scale_log_det(affine)
    y = to_world_frame(y, affine)
    return y if kind is None else (y, log_det)
