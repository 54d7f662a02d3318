"""Reconstruct one input: ``python -m neural_parts.reconstruct CHECKPOINT INPUT [--output DIR] [--union]``.

INPUT is an image file (PNG/JPEG; transparent pixels become white, resized to the model's input size)
or a dataset record ``FILE.h5:INDEX`` (its view 0). Writes to ``--output`` (default reconstruction/):
  part_000.obj ...   one closed mesh per primitive (an icosphere mapped by phi)
  parts.ply|glb      all primitives in one mesh, each in its own colour
  preview.png        [input | primitives from the input camera | from the side | target (a record's surface
                     points) from the side], headless renderer
  view.html          the interactive viewer: parts in their colours, the input image, the target (a record)
  union.obj          with --union: one watertight mesh of {G(x) < 0} by multiresolution marching cubes
Units: the records' normalised frame (longest side 1, centred).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from .checkpoint import load_model
from .cli import run_command
from .data.render import render_meshes
from .export import export_mesh, export_parts
from .meshing import primitive_meshes, union_mesh
from .preview import (
    RECORD_TITLES,
    SIDE_VIEW,
    coloured_meshes,
    render_target,
    save_png,
    titled_grid,
    view_camera,
)
from .runtime import pick_device
from .viewer import write_viewer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neural_parts.reconstruct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run folder (best.pt, else last.pt) or checkpoint file")
    p.add_argument("input", help="image file, or FILE.h5:INDEX for a dataset record")
    p.add_argument("--output", default="reconstruction", help="output folder (default: reconstruction)")
    p.add_argument("--format", choices=("ply", "glb"), default="ply", help="format of the coloured mesh")
    p.add_argument("--min-vertices", type=int, default=5000, help="vertices per primitive mesh (>=)")
    p.add_argument("--union", action="store_true", help="also extract one watertight union mesh (union.obj)")
    p.add_argument("--resolution", type=int, default=32, help="--union: coarse grid cells per side")
    p.add_argument("--levels", type=int, default=2, help="--union: refinements (final grid resolution*2^levels)")
    p.add_argument("--preview-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    return p


def read_input(text: str, image_size: int):
    """(model input (1, 3, S, S), RGB uint8 image, data.render.Camera or None, description, the record or None)."""
    from .data.render import Camera

    match = re.fullmatch(r"(.+\.h5):(-?\d+)", text)
    if match:
        from .data import H5Records
        from .data.images import normalise_image

        path = Path(match.group(1))
        if not path.is_file():
            raise FileNotFoundError(f"record file not found: {path}")
        rec = H5Records(path).read(int(match.group(2)), views=[0])
        image = rec["images"][0]
        size = image.shape[0]
        camera = Camera(rec["camera_K"][0], rec["camera_Rt"][0], size, image.shape[1])
        what = f"{path} record {match.group(2)} ({rec['name']})"
        return normalise_image(image, image_size)[None], image, camera, what, rec
    if text.endswith(".h5"):
        raise ValueError(f"{text}: address a record as FILE.h5:INDEX")
    from .data.images import read_image

    inputs, image = read_image(text, image_size)
    return inputs, image, None, text, None


def run(args) -> int:
    for name in ("min_vertices", "resolution", "preview_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.levels < 0:
        raise ValueError(f"--levels must be >= 0, got {args.levels}")
    device = pick_device(args.device)
    model = load_model(args.checkpoint, device)
    cfg = model.config
    if cfg.feature_extractor.type != "resnet18":
        raise ValueError(f"{args.checkpoint}: this model has no image encoder; use the fit command's exports")
    inputs, image, camera, what, record = read_input(args.input, cfg.data.image_size)
    t0 = time.perf_counter()
    prims = model.predict(inputs.to(device))
    out = Path(args.output)
    written = export_parts(prims, out, args.min_vertices, args.format)
    size = args.preview_size
    view = camera if camera is not None else view_camera(size=size)
    side, meshes = view_camera(SIDE_VIEW, size), coloured_meshes(prims)
    tiles = [image, render_meshes(meshes, view, size), render_meshes(meshes, side, size)]
    if record is not None:
        tiles.append(render_target(record, side, size))
    written.append(save_png(titled_grid([tiles], RECORD_TITLES[:len(tiles)], size), out / "preview.png"))
    target = None if record is None else {"points": record["surface_points"], "normals": record["surface_normals"]}
    written.append(write_viewer(out / "view.html", primitive_meshes(prims, args.min_vertices), image=image,
                                target=target, title=what, metrics={"primitives": model.n_primitives,
                                                                    "checkpoint step": model.step}))
    if args.union:
        import trimesh

        verts, faces = union_mesh(prims, resolution=args.resolution, levels=args.levels)
        mesh = trimesh.Trimesh(verts, faces, process=True)
        written.append(export_mesh(mesh, out / "union.obj"))
        print(f"union mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, watertight {mesh.is_watertight}, "
              f"grid {args.resolution * 2 ** args.levels}^3")
    print(f"reconstructed {what} with {model.n_primitives} primitives (step {model.step}) in "
          f"{time.perf_counter() - t0:.1f} s:")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv=None) -> int:
    return run_command("reconstruct", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
