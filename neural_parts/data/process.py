"""One mesh -> one training record: normalise, check watertightness, sample, label, render.

Occupancy labels come from ``npkernels.inside_mesh`` in winding mode, computed on the quantised (stored)
volume coordinates, so the labels are exact for the points that are read back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from ..geometry import merged_vertex_ids, orient_components
from . import render
from .sampling import face_normals, sample_surface, sample_volume

NORMALISATIONS = ("unit_box", "unit_sphere", "none")
UNIT_BOX = ((-0.55, -0.55, -0.55), (0.55, 0.55, 0.55))


class SkipRecord(Exception):
    """A source mesh that cannot become a record; the message is the reason shown in the summary."""


@dataclass(frozen=True)
class RecordConfig:
    """How records are made. Lengths are in the normalised frame; ``box`` is (min xyz, max xyz)."""

    n_volume: int = 100_000  # uniform points in the box, with occupancy labels
    n_surface: int = 100_000  # surface points with normals, uniform by area
    image_size: int = 224  # rendered views are image_size x image_size
    n_views: int = 1  # view 0 is render.FIXED_VIEW, the others random orbits
    normalisation: str = "unit_box"  # unit_box: bbox centre -> 0, longest side 1; unit_sphere: radius 0.5
    box: tuple = UNIT_BOX  # the volume box (the authors use 1x2x1 for metre-scale humans with "none")
    up: str = "y"  # up axis of the source meshes; records are always stored Y-up
    non_watertight: str = "flag"  # flag: label in winding mode and flag the record; skip: drop the mesh
    view: tuple = render.FIXED_VIEW  # (azimuth, elevation) in degrees of view 0; the others are random

    def __post_init__(self):
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.up not in ("y", "z"):
            raise ValueError(f"up must be 'y' or 'z', got {self.up!r}")
        for name in ("n_volume", "n_surface", "image_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (isinstance(self.n_views, int) and self.n_views >= 0):
            raise ValueError(f"n_views must be an integer >= 0, got {self.n_views!r}")
        if self.non_watertight not in ("flag", "skip"):
            raise ValueError(f"non_watertight must be 'flag' or 'skip', got {self.non_watertight!r}")
        box = np.asarray(self.box, dtype=np.float64)
        if box.shape != (2, 3) or not (box[1] > box[0]).all():
            raise ValueError(
                f"box must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with max > min, got {self.box}"
            )
        object.__setattr__(self, "box", tuple(map(tuple, box.tolist())))
        object.__setattr__(self, "view", tuple(float(a) for a in self.view))

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self, extra: dict | None = None) -> str:
        """Stable hash of this config plus ``extra`` (the source description)."""
        blob = json.dumps({"record": self.to_dict(), **(extra or {})}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_mesh(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, faces (F, 3) int64) of a usable mesh, or SkipRecord saying what is wrong."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if len(faces) == 0 or len(vertices) == 0:
        raise SkipRecord("empty mesh (no faces)")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise SkipRecord(f"not a triangle mesh (vertices {vertices.shape}, faces {faces.shape})")
    if not np.issubdtype(faces.dtype, np.integer):
        raise SkipRecord(f"face indices are not integers ({faces.dtype})")
    if not np.isfinite(vertices).all():
        raise SkipRecord(f"non-finite vertex coordinates ({int((~np.isfinite(vertices)).any(1).sum())} vertices)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise SkipRecord(f"face indices out of range: [{faces.min()}, {faces.max()}] for {len(vertices)} vertices")
    return vertices, faces.astype(np.int64)


def label(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Occupancy (N,) bool of ``points`` (N, 3) for a triangle soup, winding-number mode."""
    from npkernels.inside_mesh import inside_mesh

    return np.asarray(inside_mesh(vertices, faces, points, mode="winding"), dtype=bool)


def label_flags(labels: np.ndarray) -> list:
    """Flags of a record whose volume points are all outside or all inside (the "equal" sampler then
    falls back to uniform draws)."""
    if not labels.any():
        return ["no_inside_points"]
    return ["no_outside_points"] if labels.all() else []


def to_y_up(vertices: np.ndarray, up: str) -> np.ndarray:
    """Rotate a Z-up mesh to Y-up ((x, y, z) -> (x, z, -y)); Y-up meshes are returned unchanged."""
    v = np.asarray(vertices, dtype=np.float64)
    return v if up == "y" else np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def normalise(vertices: np.ndarray, mode: str):
    """Returns ``(normalised (V, 3), loc (3,), scale)`` with input = normalised * scale + loc."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    if mode == "none":
        return vertices, np.zeros(3), 1.0
    loc = (lo + hi) / 2
    scale = (
        float((hi - lo).max())
        if mode == "unit_box"
        else 2.0 * float(np.linalg.norm(vertices - loc, axis=1).max())
    )
    if not np.isfinite(scale):
        raise SkipRecord("non-finite vertex coordinates")
    if not scale > 0:
        raise SkipRecord("degenerate mesh: all vertices coincide")
    return (vertices - loc) / scale, loc, scale


def is_watertight(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Every edge shared by exactly two faces, after merging coincident vertices and dropping faces that
    then repeat a vertex (agrees with trimesh's ``is_watertight`` on all the shared test meshes)."""
    ids = merged_vertex_ids(vertices)
    f = ids[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges[:, 0] * (int(ids.max()) + 1) + edges[:, 1], return_counts=True)  # one key per edge
    return len(f) > 0 and bool((counts == 2).all())


def _surface_of_soup(vertices, faces, face_part, n, rng):
    """Surface samples of a part soup that lie outside every other part (part ids kept)."""
    parts = []
    for q in range(int(face_part.max()) + 1):
        used, local = np.unique(faces[face_part == q], return_inverse=True)
        parts.append((vertices[used], local.reshape(-1, 3)))
    pts, nrm, pid = [], [], []
    total = 0
    while total < n:
        p, nm, fid = sample_surface(vertices, faces, int(1.3 * (n - total)) + 64, rng)
        part = face_part[fid]
        keep = np.ones(len(p), dtype=bool)
        for q, (qverts, qfaces) in enumerate(parts):
            lo, hi = qverts.min(axis=0), qverts.max(axis=0)
            near = np.flatnonzero((part != q) & ((p >= lo) & (p <= hi)).all(axis=1))  # in part q's bbox
            keep[near[label(qverts, qfaces, p[near])]] = False
        pts.append(p[keep])
        nrm.append(nm[keep])
        pid.append(part[keep])
        total += int(keep.sum())
    pts, nrm, pid = np.concatenate(pts), np.concatenate(nrm), np.concatenate(pid)
    pick = np.sort(rng.choice(len(pts), size=n, replace=False))
    order = np.argsort(pid[pick], kind="stable")  # group by part: spatially coherent, compresses well
    pick = pick[order]
    return pts[pick], nrm[pick], pid[pick]


def make_record(
    vertices,
    faces,
    cfg: RecordConfig,
    rng: np.random.Generator,
    *,
    name: str,
    source: str,
    category: str = "",
    face_part=None,
    flags=(),
) -> dict:
    """Build a record (see ``storage.encode`` for its keys) from one mesh or part soup.

    ``vertices`` (V, 3) in the source frame (``cfg.up``), ``faces`` (F, 3) int; ``face_part`` (F,) int marks a
    soup of closed parts: surface samples then keep only points outside every other part.
    Raises ``SkipRecord`` with a reason for unusable meshes.
    """
    vertices, faces = check_mesh(vertices, faces)
    flags = list(flags)
    vertices, loc, scale = normalise(to_y_up(vertices, cfg.up), cfg.normalisation)
    if face_part is None:
        watertight = is_watertight(vertices, faces)
        if not watertight:
            if cfg.non_watertight == "skip":
                raise SkipRecord("not watertight (an edge is not shared by exactly two faces)")
            flags.append("non_watertight")
        if not (face_normals(vertices, faces) ** 2).sum(axis=1).any():
            raise SkipRecord("all faces are degenerate (zero area)")
        faces, flipped = orient_components(vertices, faces)  # outward normals for the signed normal loss
        if flipped:
            flags.append("normals_flipped")
        surf, normals, _ = sample_surface(vertices, faces, cfg.n_surface, rng)
        part_ids = np.full(cfg.n_surface, -1, dtype=np.int16)
    else:
        watertight = True  # every part is closed by construction
        surf, normals, part_ids = _surface_of_soup(vertices, faces, np.asarray(face_part), cfg.n_surface, rng)
    q, points = sample_volume(np.asarray(cfg.box), cfg.n_volume, rng)
    labels = label(vertices, faces, points)
    flags += label_flags(labels)
    size = cfg.image_size
    images, Ks, Rts = np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 3, 3)), np.zeros((0, 3, 4))
    if cfg.n_views:
        angles = render.view_angles(cfg.n_views, rng, cfg.view)
        cams = [render.orbit_camera(az, el, cfg.box, size) for az, el in angles]
        images = np.stack([render.render_meshes([(vertices, faces, None)], cam) for cam in cams])
        Ks, Rts = np.stack([cam.K for cam in cams]), np.stack([cam.Rt for cam in cams])
    return {
        "volume_q": q,
        "volume_labels": labels,
        "surface_points": surf,
        "surface_normals": normals,
        "surface_part_ids": part_ids,
        "images": images,
        "camera_K": Ks,
        "camera_Rt": Rts,
        "name": name,
        "source": source,
        "category": category,
        "flags": flags,
        "loc": loc,
        "scale": scale,
        "watertight": watertight,
    }
