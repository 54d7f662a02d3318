"""Writing predicted primitives to mesh files: one OBJ per primitive plus one coloured mesh of all of them.

Every file is written to a temp name and renamed, so a crash never leaves a half-written mesh.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data.render import distinct_colours
from .meshing import primitive_meshes


def export_mesh(mesh, path: str | Path) -> Path:
    """Write a trimesh mesh or scene (format from the suffix) atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        mesh.export(tmp)
    return path


def export_parts(primitives, out_dir: str | Path, min_vertices: int = 5000, coloured: str = "ply") -> list[Path]:
    """Write part_000.obj ... (one closed mesh per primitive) and one coloured mesh ``parts.<ply|glb>``.

    ``primitives`` (a ``Primitives``) must hold one shape (batch size 1). Returns the written paths.
    """
    import trimesh

    if coloured not in ("ply", "glb"):
        raise ValueError(f"coloured mesh format must be 'ply' or 'glb', got {coloured!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, parts = [], []
    colours = distinct_colours(primitives.n_primitives)
    for k, ((v, f), rgb) in enumerate(zip(primitive_meshes(primitives, min_vertices), colours)):
        mesh = trimesh.Trimesh(v, f, process=False)
        mesh.visual.vertex_colors = np.array([*rgb, 255], dtype=np.uint8)
        parts.append(mesh)
        written.append(export_mesh(mesh, out / f"part_{k:03d}.obj"))
    written.append(export_mesh(trimesh.util.concatenate(parts), out / f"parts.{coloured}"))
    return written
