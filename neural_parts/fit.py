"""Fit primitives to one mesh: ``python -m neural_parts.fit MESH --primitives M [--steps N]``.

The paper's representation-power experiment as a tool (also useful for shape abstraction): no image,
one learned latent code (``feature_extractor.type: latent``), trained with the five losses on points of
the mesh itself. The mesh is normalised (bounding-box centre to 0, longest side 1); surface points and
normals are sampled by area and volume points uniformly in [-0.55, 0.55]^3, labelled inside/outside with
npkernels.inside_mesh (winding numbers, so slightly open meshes work too).

Reports IoU (G(x) < 0 on all volume points) and Chamfer-L1 (0.5 (accuracy + completeness), the
normalised frame's units) and writes to ``--output`` (default fit-<mesh name>/): part_000.obj ...,
parts.ply, preview.png ([mesh | primitives] from two views), fit.pt (loadable with
``neural_parts.api.load``), metrics.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import api, engine
from .atomic import atomic_path
from .checkpoint import save_checkpoint
from .cli import run_command
from .config import ConfigError, load_config
from .metrics import shape_metrics

BOX = np.array([[-0.55, -0.55, -0.55], [0.55, 0.55, 0.55]])


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


def sample_mesh(path: str, n_volume: int, n_surface: int, up: str, rng: np.random.Generator) -> dict:
    """Normalised mesh and its samples: vertices (V, 3), faces (F, 3), volume_points (Nv, 3),
    volume_labels (Nv,) bool, surface_points / surface_normals (Ns, 3); float32 points."""
    from npkernels import inside_mesh

    from .data.process import SkipRecord, normalise, to_y_up
    from .data.readers import load_mesh
    from .data.sampling import sample_surface, sample_volume

    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh not found: {path}")
    try:
        v, f = load_mesh(path)
    except SkipRecord as e:
        raise ValueError(f"{path}: {e}") from None
    v, _, _ = normalise(to_y_up(v, up), "unit_box")
    surface, normals, _ = sample_surface(v, f, n_surface, rng)
    _, volume = sample_volume(BOX, n_volume, rng)
    labels = np.asarray(inside_mesh(v, f, volume.astype(np.float64), mode="winding"), dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError(f"{path}: {'every' if labels.all() else 'no'} volume point is inside the mesh; "
                         "is it a closed surface?")
    return {"vertices": v, "faces": f, "volume_points": volume.astype(np.float32), "volume_labels": labels,
            "surface_points": surface.astype(np.float32), "surface_normals": normals.astype(np.float32)}


def draw_batch(samples: dict, cfg: dict, rng: np.random.Generator, device) -> dict:
    """One training mini-batch (batch size 1) of random subsets, the authors' "equal" volume draw."""
    from .data.sampling import draw_equal

    idx, weights, _ = draw_equal(samples["volume_labels"], cfg["data"]["n_points_in_mesh"], rng)
    surf = rng.choice(len(samples["surface_points"]), size=cfg["data"]["n_points_on_mesh"], replace=False)
    batch = {"volume_points": samples["volume_points"][idx], "volume_labels": samples["volume_labels"][idx],
             "volume_weights": weights, "surface_points": samples["surface_points"][surf],
             "surface_normals": samples["surface_normals"][surf]}
    out = {k: torch.as_tensor(np.asarray(v, dtype=np.float32))[None].to(device) for k, v in batch.items()}
    out["index"] = torch.zeros(1, dtype=torch.long, device=device)
    return out


@torch.no_grad()
def measure(model, samples: dict, device, seed: int) -> dict:
    """IoU on all volume points and Chamfer-L1/L2, normal consistency, F-score vs the surface samples."""
    prims = model.predict(torch.zeros(1, dtype=torch.long, device=device))
    target = {k: torch.from_numpy(samples[k]).to(device)
              for k in ("volume_points", "volume_labels", "surface_points", "surface_normals")}
    g = torch.Generator(device=device).manual_seed(seed)
    m = shape_metrics(prims, **target, n_points=min(len(samples["surface_points"]), 100_000), generator=g)
    return {k: m[k] for k in ("iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore")}


def run(args) -> int:
    overrides = [f"network.n_primitives={args.primitives}", *args.set]
    if args.steps is not None:
        overrides.append(f"training.max_steps={args.steps}")
    cfg = load_config(args.config, overrides)
    if cfg["feature_extractor"]["type"] != "latent":
        raise ConfigError("fit needs feature_extractor.type=latent (one learned code per shape)")
    steps = cfg["training"]["max_steps"]
    if steps <= 0:
        raise ConfigError("fit needs a positive number of steps (--steps N)")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = api.pick_device(args.device)
    torch.set_float32_matmul_precision("high" if cfg["runtime"]["tf32"] else "highest")
    out = Path(args.output or f"fit-{Path(args.mesh).stem}")
    t0 = time.perf_counter()
    samples = sample_mesh(args.mesh, args.n_volume, args.n_surface, args.up, rng)
    print(f"fit: {args.mesh}: {len(samples['faces'])} faces, inside fraction "
          f"{samples['volume_labels'].mean():.3f}, sampled and labelled in {time.perf_counter() - t0:.1f} s; "
          f"{cfg['network']['n_primitives']} primitives, {steps} steps on {device}", file=sys.stderr)
    model = api.build_model(cfg, n_shapes=1).to(device)
    trainer = engine.Trainer(model, engine.make_optimizer(cfg, model.parameters()), engine.loss_config(cfg),
                             cfg["training"]["clip_grad_norm"])
    from tqdm import tqdm
    bar = tqdm(range(steps), unit="step", disable=args.quiet, mininterval=2)
    t1 = time.perf_counter()
    for _ in bar:
        values = trainer.step([draw_batch(samples, cfg, rng, device)
                               for _ in range(cfg["training"]["aggregate"])])
        bar.set_postfix(loss=f"{values['total']:.4f}", iou=f"{values.get('iou', float('nan')):.3f}")
    train_s = time.perf_counter() - t1
    result = {"mesh": str(args.mesh), "primitives": cfg["network"]["n_primitives"], "steps": steps,
              "train_seconds": round(train_s, 1), **measure(model, samples, device, args.seed)}
    model.eval()
    prims = model.predict(torch.zeros(1, dtype=torch.long, device=device))
    written = api.export_parts(prims, out)
    from .data.render import orbit_camera, render_meshes

    tiles = []
    for azimuth in (30.0, 120.0):
        cam = orbit_camera(azimuth, 20.0, BOX, 256)
        tiles += [render_meshes([(samples["vertices"], samples["faces"], None)], cam),
                  api.render_primitives(prims, cam, 256)]
    written.append(api.save_png(api.side_by_side(tiles, 256), out / "preview.png"))
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
