"""One training objective evaluation: the predictions the losses need, then the weighted sum.

Mirrors the authors' ``compute_predictions_from_features`` in the efficient form:
- volume: g_m at the volume points without autograd (only its sign is used by the euclidean
  implicit; the "inn" option keeps g_m itself, differentiable);
- two independent sphere draws (euclidean samples first, Chamfer samples second, the authors' RNG
  order) mapped to the world in one call;
- euclidean implicit phi[n, m] = sign(g_m(x_n)) * min_s ||x_n - y_sm|| (nearest-neighbour search
  without autograd, exact distance of the winner recomputed with autograd);
- union test of the Chamfer samples without autograd;
- normals: owner m* = argmin_m |g_m| chosen without autograd, then the gradient of g_m* w.r.t.
  the surface points with create_graph on the Ns owner pairs only.
"""
from __future__ import annotations

import torch
from torch import Tensor

from npkernels import nearest, safe_sqrt

from . import losses
from .config import LOSS_TERMS, LossConfig
from .metrics import weighted_iou
from .models.primitives import Primitives


def euclidean_implicit(volume_points: Tensor, sphere_world: Tensor, sign: Tensor, backend: str = "auto") -> Tensor:
    """phi[b, n, m] = sign[b, n, m] * min_s ||x_bn - y_bsm||.

    volume_points: (B, N, 3); sphere_world: (B, S, M, 3); sign: (B, N, M) in {-1, 0, 1}.
    """
    B, N, _ = volume_points.shape
    S, M = sphere_world.shape[1:3]
    queries = volume_points[:, None].expand(B, M, N, 3).reshape(B * M, N, 3)
    candidates = sphere_world.permute(0, 2, 1, 3).reshape(B * M, S, 3)
    dist = safe_sqrt(nearest(queries, candidates, backend=backend)[0])
    return dist.view(B, M, N).permute(0, 2, 1) * sign


def surface_normals(primitives: Primitives, points: Tensor) -> Tensor:
    """Unit normals (B, Ns, 3) of the owner primitive's g at points (B, Ns, 3), differentiable (2nd order)."""
    with torch.no_grad():
        owner = primitives.implicit(points, per_primitive=True).per_primitive.abs().argmin(-1)
    x = points.detach().requires_grad_(True)
    with torch.enable_grad():
        g = primitives.owner_implicit(x, owner)
        (grad,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    return grad / (torch.linalg.vector_norm(grad, dim=-1, keepdim=True) + 1e-12)


def compute_losses(primitives: Primitives, batch: dict[str, Tensor], cfg: LossConfig,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Named unweighted terms, their weighted sum "total", and the batch's weighted "iou" (no grad).

    batch: "volume_points" (B, N, 3), "volume_labels" (B, N), "volume_weights" (B, N),
    "surface_points" (B, Ns, 3), "surface_normals" (B, Ns, 3). Terms with weight 0 are skipped.
    """
    out: dict[str, Tensor] = {}
    backend = primitives.network.kernel_backend
    need_volume = any(cfg.weight(t) for t in ("occupancy", "coverage", "overlap"))
    S = cfg.n_points_on_sphere
    z_volume = primitives.sample_sphere(S, generator) if need_volume else None
    z_chamfer = primitives.sample_sphere(S, generator) if cfg.weight("chamfer") else None
    draws = [z for z in (z_volume, z_chamfer) if z is not None]
    world = primitives.to_world(torch.cat(draws, 1)) if draws else None

    if need_volume:
        x = batch["volume_points"]
        if cfg.volume_implicit == "euclidean":
            with torch.no_grad():
                g = primitives.implicit(x, per_primitive=True).per_primitive
            phi = euclidean_implicit(x, world[:, :S], torch.sign(g), backend)
        else:
            phi = primitives.implicit(x, per_primitive=True).per_primitive
        labels, weights = batch["volume_labels"], batch["volume_weights"]
        if cfg.weight("occupancy"):
            out["occupancy"] = losses.occupancy_loss(phi, labels, weights, cfg.sharpness)
        if cfg.weight("coverage"):
            out["coverage"] = losses.coverage_loss(phi, labels, cfg.min_n_points, cfg.sharpness, cfg.coverage_eps)
        if cfg.weight("overlap"):
            out["overlap"] = losses.overlap_loss(phi, cfg.sharpness, cfg.max_shared_points)
        with torch.no_grad():
            out["iou"] = weighted_iou(phi.min(-1).values < 0, labels > 0.5, weights).mean()

    if cfg.weight("chamfer"):
        y = world[:, -S:]
        if cfg.union_surface:
            on = primitives.union_mask(y.detach(), cfg.test_own_primitive)
        else:
            on = torch.ones(y.shape[:3], dtype=torch.bool, device=y.device)
        out["chamfer"] = losses.chamfer_loss(batch["surface_points"], y, on, backend)

    if cfg.weight("normal"):
        normals = surface_normals(primitives, batch["surface_points"])
        out["normal"] = losses.normal_consistency_loss(normals, batch["surface_normals"])

    out["total"] = sum(cfg.weight(t) * out[t] for t in LOSS_TERMS if t in out)
    return out
