"""Evaluation metrics: weighted IoU, Chamfer-L1/L2, normal consistency, F-score.

Units are those of the inputs (for our datasets: the normalised unit box, longest side 1).
Chamfer-L1 = 0.5 * (accuracy + completeness) of Euclidean nearest distances; Chamfer-L2 the same
with squared distances (Occupancy Networks' protocol, without their x10 table scaling).
"""
from __future__ import annotations

import torch
from torch import Tensor

from npkernels import knn, safe_sqrt

from .geometry import sample_triangles
from .models.primitives import Primitives

FSCORE_THRESHOLD = 0.01


def weighted_iou(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """IoU per batch element (B,) from labelled points: pred, target (B, N) bool, weights (B, N).

    IoU = sum w [pred & target] / sum w [pred | target]; 1 where both sets are empty. With the
    "equal" importance weights this is an unbiased estimate of the volumetric IoU.
    """
    w = torch.ones(pred.shape, dtype=torch.float32, device=pred.device) if weights is None else weights
    inter = (w * (pred & target)).sum(-1)
    union = (w * (pred | target)).sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))


def point_cloud_metrics(pred: Tensor, target: Tensor, pred_normals: Tensor | None = None,
                        target_normals: Tensor | None = None, threshold: float = FSCORE_THRESHOLD
                        ) -> dict[str, Tensor]:
    """Chamfer-L1/L2, accuracy, completeness, normal consistency and F-score per batch element.

    pred: (B, P, 3) points on the predicted surface; target: (B, Q, 3) on the target surface;
    normals (unit) optional. accuracy = mean over pred of the distance to target; completeness =
    mean over target of the distance to pred; normal consistency = 0.5 * (mean |cos| pred->target +
    target->pred); F-score at ``threshold`` (same units) from precision (pred within threshold)
    and recall (target within threshold). Returns dict of (B,) tensors.
    """
    nn_ = knn(pred, target)
    accuracy, completeness = nn_.chamfer(reduction="batch")
    acc_l2, comp_l2 = nn_.chamfer(squared=True, reduction="batch")
    d_acc, d_comp = safe_sqrt(nn_.dist_xy), safe_sqrt(nn_.dist_yx)  # for the F-score
    out = {"accuracy": accuracy, "completeness": completeness,
           "chamfer_l1": 0.5 * (accuracy + completeness), "chamfer_l2": 0.5 * (acc_l2 + comp_l2)}
    precision = (d_acc < threshold).float().mean(-1)
    recall = (d_comp < threshold).float().mean(-1)
    out["fscore"] = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                                torch.zeros_like(precision))
    if pred_normals is not None and target_normals is not None:
        def cos(a, b, idx):
            nb = torch.gather(b, 1, idx.clamp_min(0)[..., None].expand(-1, -1, 3))
            return (a * nb).sum(-1).abs().mean(-1)
        out["normal_consistency"] = 0.5 * (cos(pred_normals, target_normals, nn_.idx_xy)
                                           + cos(target_normals, pred_normals, nn_.idx_yx))
    return out


@torch.no_grad()
def shape_metrics(primitives: Primitives, volume_points: Tensor, volume_labels: Tensor, surface_points: Tensor,
                  surface_normals: Tensor, *, volume_weights: Tensor | None = None, n_points: int = 100_000,
                  min_vertices: int = 5000, generator: torch.Generator | None = None) -> dict[str, float]:
    """All metrics of one predicted shape (``primitives`` with batch size 1) against its target.

    IoU from G < 0 at the labelled volume points (N, 3) with labels (N,) bool (and importance
    weights (N,) if given); the ``point_cloud_metrics`` of ``n_points`` points sampled on the
    predicted union surface against the target surface samples (Q, 3) and unit normals (Q, 3).
    """
    inside = primitives.implicit(volume_points[None]).value[0] < 0
    points, normals = sample_union_surface(primitives, n_points, min_vertices, generator)[0]
    return prediction_metrics(inside, points, normals, volume_labels, surface_points, surface_normals,
                              volume_weights)


def prediction_metrics(inside: Tensor, points: Tensor, normals: Tensor, volume_labels: Tensor,
                       surface_points: Tensor, surface_normals: Tensor, volume_weights: Tensor | None = None
                       ) -> dict[str, float]:
    """All metrics of one predicted shape, whatever predicted it: ``inside`` (N,) bool at the target's
    labelled volume points (labels (N,) bool, optional importance weights (N,)); predicted surface
    ``points`` / unit ``normals`` (P, 3) against the target's surface samples and normals (Q, 3)."""
    weights = None if volume_weights is None else volume_weights[None]
    iou = weighted_iou(inside[None], volume_labels[None], weights)
    if len(points) == 0:
        raise RuntimeError("the predicted shape has no surface points")
    m = point_cloud_metrics(points[None], surface_points[None], normals[None], surface_normals[None])
    return {"iou": float(iou[0]), **{k: float(v[0]) for k, v in m.items()}}


@torch.no_grad()
def sample_union_surface(primitives: Primitives, n_points: int, min_vertices: int = 5000,
                         generator: torch.Generator | None = None, max_rounds: int = 50
                         ) -> list[tuple[Tensor, Tensor]]:
    """Points and normals on the surface of the union, per batch element.

    Each primitive is meshed (icosphere with >= ``min_vertices`` vertices mapped by phi), points
    are drawn uniformly by area over all primitives' triangles, and points inside any *other*
    primitive are dropped, in rounds, until ``n_points`` remain (or ``max_rounds`` rounds ran;
    then fewer are returned). Returns a list of B pairs (points (n, 3), unit normals (n, 3)).
    """
    verts, faces = primitives.meshes(min_vertices)
    B, M, V, _ = verts.shape
    n_faces = faces.shape[0]
    all_faces = (faces[None] + V * torch.arange(M, device=faces.device)[:, None, None]).reshape(-1, 3)
    results = []
    for b in range(B):
        single = primitives.select(b)
        kept_p, kept_n, count = [], [], 0
        for _ in range(max_rounds):
            k = max(n_points, 1024)
            pts, nrm, face = sample_triangles(verts[b].reshape(M * V, 3), all_faces, k, generator)
            prim = face // n_faces
            g = single.implicit(pts[None], per_primitive=True).per_primitive[0]
            g[torch.arange(k, device=g.device), prim] = float("inf")
            keep = (g >= 0).all(-1)
            kept_p.append(pts[keep])
            kept_n.append(nrm[keep])
            count += int(keep.sum())
            if count >= n_points:
                break
        results.append((torch.cat(kept_p)[:n_points], torch.cat(kept_n)[:n_points]))
    return results
