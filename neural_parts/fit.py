"""Fit primitives to one mesh: ``python -m neural_parts.fit MESH --primitives M [--steps N]``.

The paper's representation-power experiment as a tool (also useful for shape abstraction): no image,
one learned latent code (``feature_extractor.type: latent``), trained with the five losses on points of
the mesh itself. The mesh is normalised (bounding-box centre to 0, longest side 1); surface points and
normals are sampled by area and volume points uniformly in its bounding box grown by 0.05, labelled with
npkernels.inside_mesh (winding numbers, so slightly open meshes work too).

Reports IoU (G(x) < 0 on all volume points) and Chamfer-L1 (0.5 (accuracy + completeness), the
normalised frame's units) and writes to ``--output`` (default fit-<mesh name>/): part_000.obj ...,
parts.ply, preview.png ([mesh | primitives] from two views), view.html (the interactive viewer, with the
mesh as the target), fit.pt (loadable with ``neural_parts.load``), metrics.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import engine
from .atomic import atomic_path, check_writable
from .checkpoint import save_checkpoint
from .cli import run_command
from .config import ConfigError, load_config
from .export import export_parts
from .initialise import initialise_primitives
from .meshing import primitive_meshes
from .metrics import shape_metrics
from .models import NeuralParts
from .preview import render_primitives, save_png, titled_grid, view_camera
from .runtime import configure
from .viewer import write_viewer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neural_parts.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mesh", help="mesh file (.obj, .ply, .off, .stl, .glb)")
    p.add_argument("--primitives", type=int, default=5, help="number of primitives M (default 5)")
    p.add_argument("--steps", type=int, help="optimiser updates (default: the config's training.max_steps)")
    p.add_argument("--config", default="fit", help="preset or YAML file (default: fit)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--output", help="output folder (default fit-<mesh name>)")
    p.add_argument("--up", choices=("y", "z"), default="y", help="up axis of the mesh (stored Y-up)")
    p.add_argument("--n-volume", type=int, default=100_000, help="labelled volume points")
    p.add_argument("--n-surface", type=int, default=100_000, help="surface points")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


MARGIN = 0.05  # volume box: the normalised mesh's bounding box grown by this much on every side


def mesh_record(path: str, n_volume: int, n_surface: int, up: str, rng: np.random.Generator) -> dict:
    """The training record of one mesh file (``process.make_record``, no rendered views) plus its
    normalised ``vertices`` (V, 3) and ``faces`` (F, 3) for the preview, and the volume ``box`` (2, 3).

    Training volume points fill the normalised mesh's bounding box plus ``MARGIN`` (a limb then holds ~5x more
    of them than in the unit cube); ``cube_points`` (n_volume, 3) / ``cube_labels`` fill [-0.55, 0.55]^3 for
    the reported IoU, so that primitives reaching out of the tight box are counted."""
    from .data.process import (
        UNIT_BOX,
        RecordConfig,
        SkipRecord,
        check_mesh,
        label,
        make_record,
        normalise,
        to_y_up,
    )
    from .data.readers import load_mesh
    from .data.sampling import sample_volume

    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh not found: {path}")
    try:
        v, f = load_mesh(path)
        vertices = normalise(to_y_up(check_mesh(v, f)[0], up), "unit_box")[0]
        box = (tuple(vertices.min(0) - MARGIN), tuple(vertices.max(0) + MARGIN))
        cfg = RecordConfig(n_volume=n_volume, n_surface=n_surface, n_views=0, up=up, box=box)
        record = make_record(v, f, cfg, rng, name=Path(path).stem, source=str(path))
    except SkipRecord as e:
        raise ValueError(f"{path}: {e}") from None
    if record["flags"] and {"no_inside_points", "no_outside_points"} & set(record["flags"]):
        raise ValueError(f"{path}: {'no' if 'no_inside_points' in record['flags'] else 'every'} volume point is "
                         "inside the mesh; is it a closed surface?")
    _, cube_points = sample_volume(np.asarray(UNIT_BOX), n_volume, rng)
    record.update(vertices=vertices, faces=f, box=cfg.box, cube_points=cube_points,
                  cube_labels=label(vertices, f, cube_points))
    return record


def up_note(vertices: np.ndarray, up: str) -> str:
    """The log line saying which axis of the mesh file is treated as up, with a hint when the mesh, stored
    Y-up (``vertices`` (V, 3)), is much deeper (Z) than tall (Y): a Z-up export read as Y-up, or the reverse.
    No silent guess: a car is longer than tall too, so the user decides."""
    extent = vertices.max(0) - vertices.min(0)
    note = f"fit: treating +{up.upper()} of the mesh as up (--up {up})"
    if extent[2] > 1.5 * extent[1]:
        other = "z" if up == "y" else "y"
        note += (f"; the mesh is {extent[2] / extent[1]:.1f}x deeper than tall in that frame: if it stands along "
                 f"{other.upper()} (Z-up files: Anny exports, many scans and CAD files), pass --up {other} so previews stand upright")
    return note


def initialise_on_parts(model, record: dict, rng: np.random.Generator, split: str) -> None:
    """Start each primitive on one part (``split``: "kmeans", "spectral" or "mesh") of the labelled points
    inside the mesh (its surface samples when too few are inside); see ``initialise``."""
    inside = record["volume_points"][record["volume_labels"]]
    solid = len(inside) >= 50 * model.n_primitives
    device = model.primitive_embedding.device
    initialise_primitives(model, torch.zeros(1, dtype=torch.long, device=device),
                          inside if solid else record["surface_points"], rng, solid=solid, split=split,
                          mesh=(record["vertices"], record["faces"]))


@torch.no_grad()
def measure(model, record: dict, device, seed: int) -> dict:
    """IoU on the cube's volume points and Chamfer-L1/L2, normal consistency, F-score vs the surface samples."""
    prims = model.predict(torch.zeros(1, dtype=torch.long, device=device))
    target = {k: torch.from_numpy(record[k]).to(device) for k in ("surface_points", "surface_normals")}
    target.update(volume_points=torch.from_numpy(record["cube_points"]).to(device),
                  volume_labels=torch.from_numpy(record["cube_labels"]).to(device))
    g = torch.Generator(device=device).manual_seed(seed)
    m = shape_metrics(prims, **target, n_points=min(len(record["surface_points"]), 100_000), generator=g)
    return {k: m[k] for k in ("iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore")}


def run(args) -> int:
    from .data import NeuralPartsDataset
    from .data.storage import MemoryRecords

    overrides = [f"network.n_primitives={args.primitives}", f"runtime.seed={args.seed}", f"runtime.device={args.device}",
                 *args.set]
    if args.steps is not None:
        overrides.append(f"training.max_steps={args.steps}")
    cfg = load_config(args.config, overrides)
    if cfg.feature_extractor.type != "latent":
        raise ConfigError("fit needs feature_extractor.type=latent (one learned code per shape)")
    steps = cfg.training.max_steps
    if steps <= 0:
        raise ConfigError("fit needs a positive number of steps (--steps N)")
    for name in ("n_volume", "n_surface"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    out = Path(args.output or f"fit-{Path(args.mesh).stem}")
    check_writable(out, "--output")
    device = configure(cfg.runtime)
    t0 = time.perf_counter()
    record = mesh_record(args.mesh, args.n_volume, args.n_surface, args.up, np.random.default_rng(args.seed))
    dataset = NeuralPartsDataset(MemoryRecords([record], record["box"]), n_volume=cfg.data.n_points_in_mesh,
                                 n_surface=cfg.data.n_points_on_mesh, equal=cfg.data.equal, seed=args.seed)
    target = dataset.record(0)  # all points, as stored
    target.update(cube_points=record["cube_points"], cube_labels=record["cube_labels"], vertices=record["vertices"],
                  faces=record["faces"])
    print(up_note(record["vertices"], args.up), file=sys.stderr)
    print(f"fit: {args.mesh}: {len(record['faces'])} faces, inside fraction {target['volume_labels'].mean():.3f}, "
          f"sampled and labelled in {time.perf_counter() - t0:.1f} s; {cfg.network.n_primitives} primitives, "
          f"{steps} steps on {device}", file=sys.stderr)
    model = NeuralParts.from_config(cfg, n_shapes=1).to(device)
    if cfg.network.init == "parts":
        initialise_on_parts(model, target, np.random.default_rng(args.seed), cfg.network.part_split)
        print(f"fit: primitives start on {cfg.network.n_primitives} {cfg.network.part_split} parts of the "
              "mesh (network.init=parts)", file=sys.stderr)
    trainer = engine.Trainer(model, engine.make_optimizer(cfg, model), cfg.loss,
                             cfg.training.clip_grad_norm, cfg.training.max_nonfinite_steps)
    average = engine.WeightAverage(model, cfg.training.ema_decay) if cfg.training.ema_decay else None
    batches = engine.infinite_batches(dataset, 1, args.seed, device=device)
    from tqdm import tqdm
    bar = tqdm(range(steps), unit="step", disable=args.quiet, mininterval=2)
    t1 = time.perf_counter()
    for step in bar:
        engine.set_learning_rate(trainer.optimizer, engine.learning_rate(cfg.training, step))
        values = trainer.step([next(batches) for _ in range(cfg.training.aggregate)])
        if average is not None:
            average.update(model, step + 1)
        bar.set_postfix(loss=f"{values['total']:.4f}", iou=f"{values.get('iou', float('nan')):.3f}")
    train_s = time.perf_counter() - t1
    fitted = model if average is None else average.model  # measured, exported and saved
    result = {"mesh": str(args.mesh), "primitives": cfg.network.n_primitives, "steps": steps,
              "train_seconds": round(train_s, 1), **measure(fitted, target, device, args.seed)}
    prims = fitted.predict(torch.zeros(1, dtype=torch.long, device=device))
    written = export_parts(prims, out)
    from .data.render import render_meshes

    row = []
    for view in ((30.0, 20.0), (120.0, 20.0)):
        cam = view_camera(view, 256)
        row += [render_meshes([(record["vertices"], record["faces"], None)], cam), render_primitives(prims, cam, 256)]
    grid = titled_grid([row], ["target", "primitives", "target (side)", "primitives (side)"], 256)
    written.append(save_png(grid, out / "preview.png"))
    metrics = {"IoU": result["iou"], "Chamfer-L1": result["chamfer_l1"], "normal consistency":
               result["normal_consistency"], "F@0.01": result["fscore"], "steps": steps}
    written.append(write_viewer(out / "view.html", primitive_meshes(prims), title=f"fit: {Path(args.mesh).name}",
                                target={"vertices": record["vertices"], "faces": record["faces"]}, metrics=metrics))
    save_checkpoint(out / "fit.pt", model=fitted, config=cfg, step=steps, metrics=result,
                    extra=None if average is None else {"optimised_model": model.state_dict()})
    written.append(out / "fit.pt")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    written.append(out / "metrics.json")
    print(f"IoU {result['iou']:.4f}  Chamfer-L1 {result['chamfer_l1']:.5f} (x10: {10 * result['chamfer_l1']:.4f})  "
          f"normal consistency {result['normal_consistency']:.4f}  F@0.01 {result['fscore']:.4f}  "
          f"({steps} steps in {train_s:.0f} s; units: normalised frame, longest side 1)")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv=None) -> int:
    return run_command("fit", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
