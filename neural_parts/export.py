"""Writing predicted primitives to mesh files: one OBJ per primitive plus one coloured mesh of all of them.

The coloured mesh is a PLY with per-vertex colours, or a GLB scene with one named node per primitive
(``part_000``, ...), each with its own PBR material in the previews' colour (Blender, MeshLab and glTF
viewers list the parts by name). Every file is written to a temp name and renamed, so a crash never leaves a
half-written mesh.
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
    if coloured == "ply":
        written.append(export_mesh(trimesh.util.concatenate(parts), out / "parts.ply"))
    else:
        written.append(export_glb(parts, colours, out / "parts.glb"))
    return written


def srgb_to_linear(rgb) -> np.ndarray:
    """sRGB 0-255 colours (..., 3) -> linear 0-1 (glTF's baseColorFactor is linear; viewers re-encode to sRGB)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def export_glb(meshes, colours, path: str | Path) -> Path:
    """One GLB scene: node ``part_<k>`` holds mesh k with a PBR material of colour k (sRGB 0-255, (M, 3)),
    stored linear so that glTF viewers show the previews' colours; vertex normals included."""
    import trimesh
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    scene = trimesh.Scene()
    for k, (mesh, rgb) in enumerate(zip(meshes, colours)):
        name = f"part_{k:03d}"
        material = PBRMaterial(name=name, baseColorFactor=[*srgb_to_linear(rgb), 1.0], metallicFactor=0.0,
                               roughnessFactor=0.7, doubleSided=True)
        node = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False, visual=TextureVisuals(material=material))
        scene.add_geometry(node, node_name=name, geom_name=name)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(trimesh.exchange.gltf.export_glb(scene, include_normals=True))
    return path
