"""Exact inside-mesh labelling: ``inside_mesh`` and ``inside_mesh_batch``.

The label is the generalized winding number w of the mesh at each point, computed exactly as a
signed ray-crossing count plus an open-boundary correction (antipodal method; see
``csrc/inside_mesh.h``): inside iff |w| > 0.5. On closed meshes w is the exact integer winding
number, so overlapping or self-intersecting closed parts count as inside and inward-oriented
meshes work too; on meshes with holes it is the generalized winding number. ``mode="parity"``
counts unsigned crossings (odd = inside) for meshes with inconsistent face orientation.
Coordinates snap to a 2^30 lattice of the mesh's bounding box (finer than float32); points
exactly on the surface get a deterministic label (the same on every backend).

Backends (``npkernels._dispatch``): "extension" (``npkernels._C``, built by setup.py or on first use:
the CUDA kernel for CUDA points, the C++ kernel otherwise), "reference" (pure PyTorch, O(N*F)) and
"auto" (the extension when it loads, else the reference; ``NPKERNELS_BACKEND`` applies); a log line
on the ``npkernels`` logger says which one runs.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from .._dispatch import log_once, select_backend
from .._ext import get_ext
from .._utils import check_finite
from .reference import winding_reference

__all__ = ["inside_mesh", "inside_mesh_batch"]

def _as_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def _validate(vertices, faces, points, suffix: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes, dtypes, finiteness and face indices; returns float vertices, int64 faces, points."""
    v, f, p = (_as_tensor(n + suffix, x) for n, x in (("vertices", vertices), ("faces", faces), ("points", points)))
    for name, t in (("vertices", v), ("points", p)):
        if t.dim() != 2 or t.shape[1] != 3:
            raise ValueError(f"{name}{suffix} must have shape (n, 3), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name}{suffix} must be a floating-point array, got {t.dtype}")
    if f.dim() != 2 or f.shape[1] != 3:
        raise ValueError(f"faces{suffix} must have shape (F, 3), got {tuple(f.shape)}")
    if f.is_floating_point() or f.is_complex() or f.dtype == torch.bool:
        raise ValueError(f"faces{suffix} must be an integer array, got {f.dtype}")
    if f.shape[0] == 0:
        raise ValueError(f"faces{suffix} is empty: a mesh needs at least one face")
    if v.shape[0] == 0:
        raise ValueError(f"vertices{suffix} is empty")
    check_finite(f"vertices{suffix}", v)
    check_finite(f"points{suffix}", p)
    lo, hi = int(f.min()), int(f.max())
    if lo < 0 or hi >= v.shape[0]:
        raise ValueError(f"faces{suffix} index out of range: indices span [{lo}, {hi}] for {v.shape[0]} vertices")
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()
    return v, f.long(), p


def _backend(device: torch.device, chosen: str) -> str:
    """'cuda', 'cpu' (C++ kernels) or 'reference' for points on ``device``; chosen: select_backend's."""
    if chosen == "reference":
        return "reference"
    if device.type == "cuda":
        if get_ext().has_cuda():
            return "cuda"
        log_once("inside_mesh_cuda_copy", "npkernels.inside_mesh: extension built without CUDA; "
                  "CUDA points are labelled by the CPU kernel (copied to host and back)", logging.WARNING)
    return "cpu"


def inside_mesh_batch(vertices: Sequence, faces: Sequence, points: Sequence, *, mode: str = "winding",
                      return_winding: bool = False, backend: str = "auto") -> list:
    """Label many point sets, each against its own mesh (one kernel launch on CUDA).

    Args:
        vertices: M arrays (V_m, 3) float32/float64 (torch tensors or numpy arrays).
        faces: M arrays (F_m, 3) int32/int64 of vertex indices (F_m >= 1; degenerate faces allowed).
        points: M arrays (N_m, 3) float, all numpy or all torch on one device (N_m may be 0).
        mode: "winding" (inside iff |w| > 0.5) or "parity" (odd number of crossings).
        return_winding: also return w (float64); winding mode only.
        backend: "auto", "extension" (C++/CUDA kernels or RuntimeError) or "reference"; see
            ``npkernels._dispatch`` (``NPKERNELS_BACKEND`` replaces "auto").

    Returns:
        A list of M results as ``inside_mesh`` returns them. On CUDA every mesh's structure is
        built on the device, all meshes at once (about 0.5 KB of device memory per face while
        building), so split very large batches.
    """
    if not (len(vertices) == len(faces) == len(points)):
        raise ValueError(f"vertices, faces and points must have the same length, got "
                         f"{len(vertices)}, {len(faces)}, {len(points)}")
    if mode not in ("winding", "parity"):
        raise ValueError(f"mode must be 'winding' or 'parity', got {mode!r}")
    if return_winding and mode == "parity":
        raise ValueError("return_winding=True needs mode='winding' (parity has no winding number)")
    chosen = select_backend("inside_mesh", backend=backend)
    if not len(points):
        return []
    as_numpy = isinstance(points[0], np.ndarray)
    if any(isinstance(p, np.ndarray) != as_numpy for p in points):
        raise ValueError("points must be all numpy arrays or all torch tensors")
    single = len(points) == 1
    checked = [_validate(v, f, p, "" if single else f"[{i}]")
               for i, (v, f, p) in enumerate(zip(vertices, faces, points))]
    device = checked[0][2].device
    if any(c[2].device != device for c in checked):
        raise ValueError("points must all be on the same device")
    sizes = [c[2].shape[0] for c in checked]
    parity = mode == "parity"
    chosen = _backend(device, chosen)
    log_once(f"inside_mesh_{chosen}", f"npkernels.inside_mesh: backend {chosen!r}"
              + (" (pure PyTorch, O(N*F): slow on large inputs)" if chosen == "reference" else ""))
    if chosen == "reference":
        results = []
        for v, f, p in checked:
            crossings, boundary = winding_reference(v, f, p, parity)
            winding = crossings.double() + boundary
            results.append((crossings % 2 == 1 if parity else winding.abs() > 0.5, winding))
    else:
        run_device = device if chosen == "cuda" else torch.device("cpu")
        pts = [c[2].to(run_device) for c in checked]
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in pts) else torch.float32
        packed = pts[0].to(dtype) if single else torch.cat([p.to(dtype) for p in pts])
        offsets = torch.tensor([0] + sizes, dtype=torch.long).cumsum(0)
        inside, winding = get_ext().inside_mesh([c[0] for c in checked], [c[1] for c in checked],
                                                packed, offsets, parity, return_winding)
        windings = winding.split(sizes) if return_winding else [winding] * len(sizes)
        results = [(i.to(device), w.to(device)) for i, w in zip(inside.split(sizes), windings)]
    out = []
    for inside, winding in results:
        if as_numpy:
            inside, winding = inside.cpu().numpy(), winding.cpu().numpy()
        out.append((inside, winding) if return_winding else inside)
    return out


def inside_mesh(vertices, faces, points, *, mode: str = "winding", return_winding: bool = False,
                backend: str = "auto"):
    """Label points inside a triangle mesh by its exact (generalized) winding number.

    Args:
        vertices: (V, 3) float32/float64 vertex positions (torch tensor or numpy array).
        faces: (F, 3) int32/int64 vertex indices, F >= 1 (degenerate faces are allowed).
        points: (N, 3) float query points in the vertices' unit; N may be 0.
        mode: "winding" (inside iff |w| > 0.5) or "parity" (odd number of ray crossings).
        return_winding: also return the winding number w (float64); winding mode only.
        backend: "auto" (the extension when it loads, else the reference), "extension" or "reference".

    Returns:
        inside (N,) bool of the type of ``points`` (numpy, or torch on the points' device);
        with ``return_winding``, the tuple (inside, winding (N,) float64).

    Raises:
        ValueError: wrong shapes, no faces, NaN/inf coordinates, face indices out of range,
            an unknown mode, or return_winding in parity mode.

    Example:
        >>> inside = inside_mesh(verts, faces, torch.rand(100_000, 3) - 0.5)
    """
    return inside_mesh_batch([vertices], [faces], [points], mode=mode, return_winding=return_winding,
                             backend=backend)[0]
