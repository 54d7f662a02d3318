"""Fit primitives to one mesh: ``python -m neural_parts.fit MESH --primitives M [--steps N]``.

The paper's representation-power experiment as a tool (also useful for shape abstraction): no image,
one learned latent code (``feature_extractor.type: latent``), trained with the five losses on points of
the mesh itself. The mesh is normalised (bounding-box centre to 0, longest side 1); surface points and
normals are sampled by area and volume points uniformly in [-0.55, 0.55]^3, labelled inside/outside with
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
from .data.process import UNIT_BOX
from .export import export_parts
from .initialise import initialise_primitives
from .meshing import primitive_meshes
from .metrics import shape_metrics
from .models import NeuralParts
from .preview import render_primitives, save_png, titled_grid, view_camera
from .runtime import pick_device, seed_everything
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


def mesh_record(path: str, n_volume: int, n_surface: int, up: str, rng: np.random.Generator) -> dict:
    """The training record of one mesh file (``process.make_record``, no rendered views) plus its
    normalised ``vertices`` (V, 3) and ``faces`` (F, 3) for the preview."""
    from .data.process import RecordConfig, SkipRecord, make_record, normalise, to_y_up
    from .data.readers import load_mesh

    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh not found: {path}")
    cfg = RecordConfig(n_volume=n_volume, n_surface=n_surface, n_views=0, up=up)
    try:
        v, f = load_mesh(path)
        record = make_record(v, f, cfg, rng, name=Path(path).stem, source=str(path))
    except SkipRecord as e:
        raise ValueError(f"{path}: {e}") from None
    if record["flags"] and {"no_inside_points", "no_outside_points"} & set(record["flags"]):
        raise ValueError(f"{path}: {'no' if 'no_inside_points' in record['flags'] else 'every'} volume point is "
                         "inside the mesh; is it a closed surface?")
    record["vertices"], record["faces"] = normalise(to_y_up(v, up), cfg.normalisation)[0], f
    return record


def initialise_on_parts(model, record: dict, rng: np.random.Generator) -> None:
    """Start each primitive on one part of the mesh: k-means of the labelled points inside it (its surface
    samples when too few are inside); see ``initialise``."""
    inside = record["volume_points"][record["volume_labels"]]
    solid = len(inside) >= 50 * model.n_primitives
    device = model.primitive_embedding.device
    initialise_primitives(model, torch.zeros(1, dtype=torch.long, device=device),
                          inside if solid else record["surface_points"], rng, solid=solid)


@torch.no_grad()
def measure(model, record: dict, device, seed: int) -> dict:
    """IoU on all volume points and Chamfer-L1/L2, normal consistency, F-score vs the surface samples."""
    prims = model.predict(torch.zeros(1, dtype=torch.long, device=device))
    target = {k: torch.from_numpy(record[k]).to(device)
              for k in ("volume_points", "volume_labels", "surface_points", "surface_normals")}
    g = torch.Generator(device=device).manual_seed(seed)
    m = shape_metrics(prims, **target, n_points=min(len(record["surface_points"]), 100_000), generator=g)
    return {k: m[k] for k in ("iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore")}


def run(args) -> int:
    from .data import NeuralPartsDataset
    from .data.storage import MemoryRecords

    overrides = [f"network.n_primitives={args.primitives}", *args.set]
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
    seed_everything(args.seed)
    device = pick_device(args.device)
    torch.set_float32_matmul_precision("high" if cfg.runtime.tf32 else "highest")
    t0 = time.perf_counter()
    record = mesh_record(args.mesh, args.n_volume, args.n_surface, args.up, np.random.default_rng(args.seed))
    dataset = NeuralPartsDataset(MemoryRecords([record], UNIT_BOX), n_volume=cfg.data.n_points_in_mesh,
                                 n_surface=cfg.data.n_points_on_mesh, equal=cfg.data.equal, seed=args.seed)
    target = dataset.record(0)  # all points, as stored
    print(f"fit: {args.mesh}: {len(record['faces'])} faces, inside fraction {target['volume_labels'].mean():.3f}, "
          f"sampled and labelled in {time.perf_counter() - t0:.1f} s; {cfg.network.n_primitives} primitives, "
          f"{steps} steps on {device}", file=sys.stderr)
    model = NeuralParts.from_config(cfg, n_shapes=1).to(device)
    trainer = engine.Trainer(model, engine.make_optimizer(cfg, model.parameters()), cfg.loss,
                             cfg.training.clip_grad_norm, cfg.training.max_nonfinite_steps)
    batches = engine.infinite_batches(dataset, 1, args.seed, device=device)
    from tqdm import tqdm
    bar = tqdm(range(steps), unit="step", disable=args.quiet, mininterval=2)
    t1 = time.perf_counter()
    for step in bar:
        engine.set_learning_rate(trainer.optimizer, engine.learning_rate(cfg.training, step))
        values = trainer.step([next(batches) for _ in range(cfg.training.aggregate)])
        bar.set_postfix(loss=f"{values['total']:.4f}", iou=f"{values.get('iou', float('nan')):.3f}")
    train_s = time.perf_counter() - t1
    result = {"mesh": str(args.mesh), "primitives": cfg.network.n_primitives, "steps": steps,
              "train_seconds": round(train_s, 1), **measure(model, target, device, args.seed)}
    prims = model.predict(torch.zeros(1, dtype=torch.long, device=device))
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
    save_checkpoint(out / "fit.pt", model=model, config=cfg, step=steps, metrics=result)
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
