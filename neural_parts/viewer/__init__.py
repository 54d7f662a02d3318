"""A self-contained interactive part viewer: one HTML file that opens from ``file://`` with no server or network.

``write_viewer`` inlines the package's own WebGL code (``viewer.js``, ``viewer.css``, no library, no CDN) and the
shape's data into ``viewer.html``: the primitives in their preview colours (``data.render.distinct_colours``), an
optional target (mesh or point cloud), the input image and the shape's metrics. Geometry is stored compactly:
positions quantised to uint16 in the scene's bounding box (error below 1e-5 of its size), indices as uint16 when
a mesh has at most 65,536 vertices (uint32 otherwise), one copy of an index buffer that several parts share (every
primitive is the same icosphere), point normals as int8; each buffer base64 encoded.
"""
from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .pages import png_data_uri

MAX_TARGET_POINTS = 20_000  # a target point cloud is subsampled (fixed seed) to at most this many points


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def _quantise(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = np.where(hi > lo, hi - lo, 1.0)
    return np.rint(np.clip((points - lo) / scale, 0.0, 1.0) * 65535).astype(np.uint16)


def _check_mesh(vertices, faces, what: str) -> tuple[np.ndarray, np.ndarray]:
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"viewer: {what} needs vertices (V, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"viewer: {what} has face indices outside [0, {len(v)})")
    if not np.isfinite(v).all():
        raise ValueError(f"viewer: {what} has non-finite vertices")
    return v, f


def _target_geometry(target: dict) -> dict:
    """Validated target arrays: {"vertices", "faces"} (a mesh) or {"points", "normals" (optional)}."""
    if "vertices" in target:
        v, f = _check_mesh(target["vertices"], target["faces"], "the target mesh")
        return {"vertices": v, "faces": f}
    if "points" not in target:
        raise ValueError(f"viewer: target must have 'vertices' and 'faces' or 'points', got keys {sorted(target)}")
    points = np.asarray(target["points"], dtype=np.float64)
    normals = target.get("normals")
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise ValueError(f"viewer: target points must be finite (N, 3), got shape {points.shape}")
    if len(points) > MAX_TARGET_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(points), MAX_TARGET_POINTS, replace=False))
        points, normals = points[keep], None if normals is None else np.asarray(normals)[keep]
    return {"points": points, "normals": None if normals is None else np.asarray(normals, dtype=np.float64)}


def scene_data(parts, colours=None, target: dict | None = None, names=None) -> dict:
    """The JSON-ready geometry of a viewer page.

    ``parts``: M pairs (vertices (V, 3) float, faces (F, 3) int) in one frame; ``colours``: (M, 3) uint8
    (default: ``distinct_colours(M)``); ``target``: {"vertices", "faces"} or {"points", "normals"?}; ``names``: M
    labels (default "part 0", ...). Positions are uint16 in ``box`` [[lo], [hi]]; ``indices`` holds the distinct
    index buffers and each part names its buffer by position there.
    """
    from ..data.render import distinct_colours

    meshes = [_check_mesh(v, f, f"part {k}") for k, (v, f) in enumerate(parts)]
    colours = distinct_colours(len(meshes)) if colours is None else np.asarray(colours, dtype=np.uint8)
    if colours.shape != (len(meshes), 3):
        raise ValueError(f"viewer: colours must be ({len(meshes)}, 3) uint8, got shape {colours.shape}")
    names = [f"part {k}" for k in range(len(meshes))] if names is None else [str(n) for n in names]
    if len(names) != len(meshes):
        raise ValueError(f"viewer: {len(names)} names for {len(meshes)} parts")
    geometry = _target_geometry(target) if target is not None else None
    every = [v for v, _ in meshes] + ([geometry.get("vertices", geometry.get("points"))] if geometry else [])
    every = [v for v in every if len(v)]
    lo, hi = (np.min([v.min(0) for v in every], 0), np.max([v.max(0) for v in every], 0)) if every else \
        (np.full(3, -0.5), np.full(3, 0.5))
    buffers: dict[str, int] = {}  # base64 index buffer -> its position in scene["indices"]

    def mesh_entry(v, f):
        index = _b64(f.astype(np.uint16 if len(v) <= 65536 else np.uint32))
        position = buffers.setdefault(index, len(buffers))
        return {"positions": _b64(_quantise(v, lo, hi)), "n_vertices": len(v), "n_faces": len(f),
                "index_type": "uint16" if len(v) <= 65536 else "uint32", "indices": position}

    scene = {"box": [lo.tolist(), hi.tolist()], "indices": [],
             "parts": [{"name": n, "colour": [int(c) for c in rgb], **mesh_entry(v, f)}
                       for n, rgb, (v, f) in zip(names, colours, meshes)], "target": None}
    if geometry and "vertices" in geometry:
        scene["target"] = {"kind": "mesh", **mesh_entry(geometry["vertices"], geometry["faces"])}
    elif geometry:
        points, normals = geometry["points"], geometry["normals"]
        scene["target"] = {"kind": "points", "positions": _b64(_quantise(points, lo, hi)), "n_points": len(points)}
        if normals is not None:
            unit = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
            scene["target"]["normals"] = _b64(np.rint(unit * 127).astype(np.int8))
    scene["indices"] = list(buffers)  # insertion order = the positions the entries name
    return scene


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def viewer_html(parts, colours=None, image: np.ndarray | None = None, target: dict | None = None,
                metrics: dict | None = None, title: str = "Neural Parts", names=None) -> str:
    """The viewer page as one HTML string (see ``write_viewer``)."""
    data = {"title": title, "scene": scene_data(parts, colours, target, names),
            "image": None if image is None else png_data_uri(image),
            "metrics": [[str(k), _format(v)] for k, v in (metrics or {}).items()]}
    package = resources.files(__package__)
    text = (package / "viewer.html").read_text()
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # safe inside <script>
    for key, value in (("TITLE", html.escape(title)), ("STYLE", (package / "viewer.css").read_text()),
                       ("SCRIPT", (package / "viewer.js").read_text()), ("DATA", payload)):
        text = text.replace(f"{{{{{key}}}}}", value)  # {{KEY}}
    return text


def write_viewer(path: str | Path, parts, colours=None, image: np.ndarray | None = None, target: dict | None = None,
                 metrics: dict | None = None, title: str = "Neural Parts", names=None) -> Path:
    """Write an interactive viewer of one shape to ``path`` (atomically); returns the path.

    ``parts``: M pairs (vertices (V, 3), faces (F, 3)), e.g. ``meshing.primitive_meshes(primitives)``;
    ``colours``: (M, 3) uint8 (default ``distinct_colours(M)``, the PNG previews' palette); ``image``: the
    input, (H, W, 3) uint8; ``target``: {"vertices", "faces"} (a mesh) or {"points", "normals"?} (a point
    cloud, subsampled to ``MAX_TARGET_POINTS``); ``metrics``: label -> value, shown in a table.
    """
    path = Path(path)
    text = viewer_html(parts, colours, image, target, metrics, title, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
