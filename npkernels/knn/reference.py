"""Reference nearest neighbours (K=1, both directions) and Chamfer distance.

Index search runs without autograd: on CPU a scipy cKDTree when N*P > 1e6 (exact, all cores),
otherwise exact brute force in chunks using the direct form sum((a - b)^2) (never the expanded
|a|^2 + |b|^2 - 2ab, which picks wrong neighbours for close pairs). Distances are then
recomputed in torch from the indices, so gradients flow to both clouds.

Conventions (PyTorch3D's): squared Euclidean distances; ties go to the lowest candidate index
(the KD-tree path resolves two-way ties; ties among 3+ equidistant points follow the tree);
a masked point is neither a query nor a candidate: masked queries get idx -1 and distance 0,
queries with no valid candidate get idx -1 and distance inf.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import Tensor

KDTREE_MIN_PAIRS = 1_000_000
_CHUNK_ELEMENTS = 1 << 24
log = logging.getLogger("npkernels")


def safe_sqrt(d: Tensor) -> Tensor:
    """Euclidean distances from squared ones: sqrt with a finite gradient (0) at 0; exact values."""
    positive = d > 0
    root = torch.sqrt(torch.where(positive, d, torch.ones_like(d)))
    return torch.where(positive, root, torch.zeros_like(d))


REDUCTIONS = ("mean", "batch")


class KNN(NamedTuple):
    """dist_xy, idx_xy: (B, N) nearest y of each x; dist_yx, idx_yx: (B, P) nearest x of each y.

    Squared distances; idx -1 where a query was masked out of the search or found no candidate.
    """

    dist_xy: Tensor
    idx_xy: Tensor
    dist_yx: Tensor
    idx_yx: Tensor

    def chamfer(self, x_query_mask: Tensor | None = None, y_query_mask: Tensor | None = None, *,
                squared: bool = False, reduction: str = "mean") -> tuple[Tensor, Tensor]:
        """The two directional Chamfer terms of this search.

        Args:
            x_query_mask: optional bool (B, N): the x averaged in x->y. Unlike knn's ``x_mask`` it applies
                at reduction time only, so every x stayed a candidate for the y->x search.
            y_query_mask: optional bool (B, P): the y averaged in y->x, likewise.
            squared: average squared distances (Chamfer-L2) instead of Euclidean ones (Chamfer-L1).
            reduction: "mean" (over every averaged query of the batch: a scalar) or "batch" ((B,) means).
        Returns:
            (x_to_y, y_to_x): the mean distance from each averaged x to its nearest y, and back. Queries
            with idx -1 are never averaged; a direction with nothing to average gives 0.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        out = []
        for name, d, idx, mask in (("x_query_mask", self.dist_xy, self.idx_xy, x_query_mask),
                                   ("y_query_mask", self.dist_yx, self.idx_yx, y_query_mask)):
            valid = idx >= 0
            if mask is not None:
                if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != idx.shape:
                    raise ValueError(f"{name} must be a bool tensor of shape {tuple(idx.shape)}, got "
                                     f"{getattr(mask, 'dtype', type(mask).__name__)} "
                                     f"{tuple(getattr(mask, 'shape', ()))}")
                valid = valid & mask
            d = torch.where(valid, d, torch.zeros_like(d))
            d = d if squared else safe_sqrt(d)
            dims = (1,) if reduction == "batch" else (0, 1)
            out.append(d.sum(dims) / valid.sum(dims).clamp_min(1))
        return out[0], out[1]


def _brute_force(q: Tensor, c: Tensor, c_mask: Tensor | None) -> Tensor:
    """Index (B, N) of the nearest candidate for each query; -1 when none is valid."""
    B, N, _ = q.shape
    P = c.shape[1]
    idx = torch.full((B, N), -1, dtype=torch.int64, device=q.device)
    if P == 0 or N == 0:
        return idx
    step = max(1, _CHUNK_ELEMENTS // max(1, B * P * 3))
    for i in range(0, N, step):
        d = None  # (dx^2 + dy^2) + dz^2 one coordinate at a time: ~4x faster than a (.., 3) sum
        for k in range(3):
            t = (q[:, i:i + step, None, k] - c[:, None, :, k]).square_()
            d = t if d is None else d.add_(t)
        if c_mask is not None:
            d = d.masked_fill(~c_mask[:, None, :], float("inf"))
        best, arg = d.min(-1)
        idx[:, i:i + step] = torch.where(torch.isinf(best), -1, arg)
    return idx


def _kdtree(q: Tensor, c: Tensor, c_mask: Tensor | None) -> Tensor:
    from scipy.spatial import cKDTree

    B, N, _ = q.shape
    idx = torch.full((B, N), -1, dtype=torch.int64)
    for b in range(B):
        cand = c[b].double().numpy()
        keep = torch.arange(c.shape[1]) if c_mask is None else torch.nonzero(c_mask[b]).flatten()
        if keep.numel() == 0:
            continue
        cand = cand[keep.numpy()]
        k = min(2, len(cand))
        dist, found = cKDTree(cand).query(q[b].double().numpy(), k=k, workers=-1)
        found = torch.from_numpy(found.reshape(N, k))
        if k == 2:  # exact two-way tie: lowest original index wins
            dist = torch.from_numpy(dist.reshape(N, 2))
            tie = dist[:, 0] == dist[:, 1]
            found = torch.where(tie, torch.minimum(keep[found[:, 0]], keep[found[:, 1]]), keep[found[:, 0]])
        else:
            found = keep[found[:, 0]]
        idx[b] = found
    return idx


def nearest_index(q: Tensor, c: Tensor, q_mask: Tensor | None = None, c_mask: Tensor | None = None) -> Tensor:
    """(B, N) int64 index into c of each query's nearest valid candidate (-1 when masked/none)."""
    with torch.no_grad():
        use_tree = q.device.type == "cpu" and q.shape[1] * c.shape[1] > KDTREE_MIN_PAIRS
        if use_tree:
            try:
                idx = _kdtree(q, c, c_mask)
            except ImportError:
                log.info("npkernels.knn: scipy not installed, using brute force on CPU")
                idx = _brute_force(q, c, c_mask)
        else:
            idx = _brute_force(q, c, c_mask)
        if q_mask is not None:
            idx = idx.masked_fill(~q_mask, -1)
    return idx


def gather_sq_dist(q: Tensor, c: Tensor, idx: Tensor, q_mask: Tensor | None = None) -> Tensor:
    """Differentiable ||q - c[idx]||^2 (B, N); 0 for masked queries, inf where idx is -1 otherwise."""
    if c.shape[1] == 0:  # no candidate at all: every valid query is at distance inf
        d = (q * 0).sum(-1) + float("inf")
    else:
        nn = torch.gather(c, 1, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, c.shape[-1]))
        d = ((q - nn) ** 2).sum(-1)
    d = torch.where(idx >= 0, d, torch.full_like(d, float("inf")))
    if q_mask is not None:
        d = torch.where(q_mask, d, torch.zeros_like(d))
    return d


def nearest(x: Tensor, y: Tensor, *, x_mask: Tensor | None = None, y_mask: Tensor | None = None
            ) -> tuple[Tensor, Tensor]:
    """Nearest neighbour of every x in y only: (squared distance (B, N), index (B, N))."""
    idx = nearest_index(x, y, x_mask, y_mask)
    return gather_sq_dist(x, y, idx, x_mask), idx


def knn(x: Tensor, y: Tensor, *, x_mask: Tensor | None = None, y_mask: Tensor | None = None) -> KNN:
    """Nearest neighbour of every x in y and of every y in x. x: (B, N, 3), y: (B, P, 3)."""
    return KNN(*nearest(x, y, x_mask=x_mask, y_mask=y_mask), *nearest(y, x, x_mask=y_mask, y_mask=x_mask))

