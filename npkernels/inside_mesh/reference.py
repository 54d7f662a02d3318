"""Pure-PyTorch inside-mesh labeller: the test oracle and the fallback without a compiler.

Same maths as ``csrc/inside_mesh.h`` (read its header for the derivation), on every
(point, face) pair, so O(N * F) time, chunked to bound memory:

* vertices and points snap to a 2^30 integer lattice of the mesh's bounding box (per axis);
* the ray goes along +z; a face is crossed when the point, perturbed by (e, e^2, e^3), lies
  inside its xy projection (three exact int64 edge predicates) below the face (an exact sign
  computed with 31-bit limbs, since the value needs ~95 bits);
* winding = signed crossing count + the open-boundary-edge correction
  sum_k k * atan2(num, den) / (2 pi), whose branch cut (den <= 0) uses the same exact edge
  predicate.

On closed meshes the winding number is an exact integer and equals the extension's (which may
use another axis; the perturbation makes the result axis-independent, on-surface points too).
"""
from __future__ import annotations

import math

import torch

LATTICE = 1 << 30
_PAIR_BUDGET = 1 << 20  # (point, face) or (point, edge) pairs per chunk: ~100 MB of temporaries


def lattice_frame(vertices: torch.Tensor) -> tuple[list[float], list[float]]:
    """Origin and scale (3 floats each) mapping the bounding box of (V, 3) vertices to [0, 2^30]."""
    v = vertices.double()
    lo, hi = v.min(0).values.tolist(), v.max(0).values.tolist()
    widest = max(h - low for h, low in zip(hi, lo))
    scale = []
    for h, low in zip(hi, lo):
        extent = h - low if h - low > 0 else (widest if widest > 0 else 1.0)
        scale.append(float(LATTICE) / extent)
    return lo, scale


def quantize(x: torch.Tensor, origin: list[float], scale: list[float]) -> torch.Tensor:
    """Lattice coordinates (int64) of (..., 3) world coordinates, clamped to [-1, 2^30 + 1]."""
    o = torch.tensor(origin, dtype=torch.float64, device=x.device)
    s = torch.tensor(scale, dtype=torch.float64, device=x.device)
    return ((x.double() - o) * s).clamp(-1.0, float(LATTICE + 1)).round().long()


def _orient(pu, pv, qu, qv, xu, xv) -> torch.Tensor:
    return (qu - pu) * (xv - pv) - (qv - pv) * (xu - pu)


def _perturbed_sign(det, pu, pv, qu, qv) -> torch.Tensor:
    """Sign of orient(P, Q, X + (e, e^2)); 0 only when P == Q."""
    tie = torch.where(qv != pv, torch.sign(pv - qv), torch.sign(qu - pu))
    return torch.where(det != 0, torch.sign(det), tie)


def _exact_sign_of_sum(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Exact sign of sum_i w_i * d_i for (K, 3) int64 with |w| < 2^62, |d| < 2^31."""
    wh = torch.div(w, 1 << 31, rounding_mode="floor")
    wl = w - wh * (1 << 31)
    high, low = (wh * d).sum(1), (wl * d).sum(1)  # value = high * 2^31 + low, no overflow
    carry = torch.div(low, 1 << 31, rounding_mode="floor")
    high, low = high + carry, low - carry * (1 << 31)  # now 0 <= low < 2^31
    return torch.where(high != 0, torch.sign(high), torch.sign(low))


def _boundary_edges(vertices: torch.Tensor, lat: torch.Tensor, faces: torch.Tensor):
    """(P (B,3) float64, Q (B,3), lattice LP (B,3), LQ (B,3), k (B,)) of the open-boundary edges."""
    nv = lat.shape[0]
    _, inverse = torch.unique(lat, dim=0, return_inverse=True)
    index = torch.arange(nv, device=lat.device)
    rep = torch.full((int(inverse.max()) + 1,), nv, dtype=torch.long, device=lat.device)
    rep = rep.scatter_reduce(0, inverse, index, reduce="amin")[inverse]  # smallest index per position
    i = rep[faces].reshape(-1)
    j = rep[faces[:, [1, 2, 0]]].reshape(-1)
    keep = i != j
    i, j = i[keep], j[keep]
    key = torch.minimum(i, j) * nv + torch.maximum(i, j)
    weight = torch.where(i < j, 1, -1)
    keys, kinv = torch.unique(key, return_inverse=True)
    k = torch.zeros(keys.shape[0], dtype=torch.long, device=lat.device).index_add_(0, kinv, weight)
    keys, k = keys[k != 0], k[k != 0]
    p, q = keys // nv, keys % nv
    v = vertices.double()
    return v[p], v[q], lat[p], lat[q], k


def _boundary_term(points: torch.Tensor, lpts: torch.Tensor, edges) -> torch.Tensor:
    """Open-boundary correction (N,) for the ray along +z (x1 = -z)."""
    p_, q_, lp, lq, k = edges
    x = p_[None] - points[:, None]  # (N, B, 3)
    y = q_[None] - points[:, None]
    qu, qv = lpts[:, None, 0], lpts[:, None, 1]
    det = _orient(lp[None, :, 0], lp[None, :, 1], lq[None, :, 0], lq[None, :, 1], qu, qv)
    s = _perturbed_sign(det, lp[None, :, 0], lp[None, :, 1], lq[None, :, 0], lq[None, :, 1])
    nx = torch.sqrt(x[..., 0] * x[..., 0] + x[..., 1] * x[..., 1] + x[..., 2] * x[..., 2])
    ny = torch.sqrt(y[..., 0] * y[..., 0] + y[..., 1] * y[..., 1] + y[..., 2] * y[..., 2])
    cross = x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]
    # outside the mesh box the lattice point is clamped: use the floating-point sign (no edge is near)
    exact = (qu >= 0) & (qu <= LATTICE) & (qv >= 0) & (qv <= LATTICE)
    s = torch.where(exact, s, 1)
    den = nx * ny - ny * x[..., 2] - nx * y[..., 2] + (x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1]
                                                        + x[..., 2] * y[..., 2])
    # the exact sign at the branch cut (den <= 0) only, as in csrc/inside_mesh.h
    num = torch.where(exact & (den <= 0), torch.copysign(cross.abs(), (-s).double()), -cross)
    term = torch.where(s != 0, k[None].double() * torch.atan2(num, den), 0.0)
    return term.sum(1) / (2.0 * math.pi)


def winding_reference(vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor,
                      parity: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Crossing count and boundary correction per point, on the device of ``points``.

    Args:
        vertices: (V, 3) float vertex positions (any unit).
        faces: (F, 3) int64 vertex indices, already validated.
        points: (N, 3) float query points, same unit.
        parity: count crossings without sign and skip the boundary term.

    Returns:
        (crossings (N,) int64, boundary (N,) float64); the winding number is their sum and the
        parity-mode label is ``crossings % 2 == 1``.
    """
    device = points.device
    vertices, faces = vertices.to(device), faces.to(device).long()
    origin, scale = lattice_frame(vertices)
    lat = quantize(vertices, origin, scale).clamp(0, LATTICE)
    tri = lat[faces]  # (F, 3 corners, 3 coordinates)
    u, v, a = tri[..., 0], tri[..., 1], tri[..., 2]
    d = _orient(u[:, 0], v[:, 0], u[:, 1], v[:, 1], u[:, 2], v[:, 2])
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    n = torch.stack([e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                     e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]], 1)
    n_pert = torch.where(n[:, 0] != 0, torch.sign(n[:, 0]), torch.where(n[:, 1] != 0, torch.sign(n[:, 1]),
                                                                        torch.sign(n[:, 2])))
    keep = d != 0
    u, v, a, sd, n_pert = u[keep], v[keep], a[keep], torch.sign(d[keep]), n_pert[keep]
    tie_above = -n_pert * sd > 0  # z axis is right-handed: n_z = d
    contribution = torch.ones_like(sd) if parity else sd
    edges = None if parity else _boundary_edges(vertices, lat, faces)
    n_points, n_faces = points.shape[0], max(1, u.shape[0])
    crossings = torch.zeros(n_points, dtype=torch.long, device=device)
    boundary = torch.zeros(n_points, dtype=torch.float64, device=device)
    rows = max(1, _PAIR_BUDGET // n_faces)
    for start in range(0, n_points, rows):
        pts = points[start:start + rows].double()
        lpts = quantize(pts, origin, scale)
        qu, qv, qa = lpts[:, 0:1], lpts[:, 1:2], lpts[:, 2:3]
        inside = torch.ones(pts.shape[0], u.shape[0], dtype=torch.bool, device=device)
        ws = []
        for i, j, k in ((1, 2, 0), (2, 0, 1), (0, 1, 2)):
            w = _orient(u[:, i], v[:, i], u[:, j], v[:, j], qu, qv)
            inside &= _perturbed_sign(w, u[:, i], v[:, i], u[:, j], v[:, j]) == sd
            ws.append(w)
        pi, fi = inside.nonzero(as_tuple=True)
        if pi.numel():
            w = torch.stack([ws[0][pi, fi], ws[1][pi, fi], ws[2][pi, fi]], 1)
            h = _exact_sign_of_sum(w, a[fi] - qa[pi])
            above = torch.where(h == 0, tie_above[fi], (h > 0) == (sd[fi] > 0))
            crossings[start:start + rows].index_add_(0, pi, contribution[fi] * above)
        if edges is not None and edges[4].numel():
            edge_rows = max(1, _PAIR_BUDGET // edges[4].numel())
            for s in range(0, pts.shape[0], edge_rows):
                e = min(s + edge_rows, pts.shape[0])
                boundary[start + s:start + e] = _boundary_term(pts[s:e], lpts[s:e], edges)
    return crossings, boundary
