"""Evaluate a trained model: ``python -m neural_parts.evaluate RUN_DIR_OR_CHECKPOINT --data FILE.h5``.

Protocols (``--protocol``):
  onet     Occupancy Networks: IoU of G(x) < 0 on the record's 100k uniform volume points; the predicted
           surface is sampled (100k points, union of the mapped icospheres, points inside another
           primitive dropped) and compared with the record's 100k surface points and normals.
  authors  the authors' evaluate.py: importance-weighted IoU on 5,000 "equal" volume points; 10,000
           predicted points vs the record's N_s (--n-surface, 1500 = D-FAUST) surface points; fixed seed.
Chamfer-L1 = 0.5 (accuracy + completeness) of Euclidean distances, Chamfer-L2 the same with squared ones,
normal consistency = mean |cos| both ways, F-score at tau = 0.01; units are the records' normalised frame
(longest side 1). The summary also shows Chamfer-L1 x10 (the unit of ONet's tables).

Writes one CSV row per shape (atomically rewritten; re-running skips shapes already there), so a job
can be resumed, split with ``--shard i/n`` and limited with ``--limit``.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import api
from .atomic import atomic_path
from .checkpoint import resolve_path
from .cli import run_command
from .data.dataset import normalise_image
from .metrics import shape_metrics

COLUMNS = ("index", "name", "category", "iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore",
           "accuracy", "completeness", "seconds")
METRICS = ("iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore")
PROTOCOLS = {
    "onet": ("Occupancy Networks protocol: IoU on the record's 100k uniform volume points (unweighted); "
             "100k predicted surface points vs 100k ground-truth surface points"),
    "authors": ("authors' protocol: importance-weighted IoU on 5,000 equal-sampled volume points; "
                "10,000 predicted points vs N_s ground-truth surface points (fixed seed)"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neural_parts.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run folder (uses best.pt, else last.pt) or checkpoint file")
    p.add_argument("--data", required=True, help="record file, e.g. $NEURAL_PARTS_DATA/synthetic-v1/test.h5")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default="onet")
    p.add_argument("--output", help="CSV path (default: <run folder>/eval-<data>-<protocol>[-shard].csv)")
    p.add_argument("--limit", type=int, help="evaluate at most the first N shapes (of this shard)")
    p.add_argument("--shard", default="0/1", help="i/n: evaluate shapes i, i+n, i+2n, ... (default 0/1)")
    p.add_argument("--n-points", type=int, default=100_000, help="onet: predicted surface points")
    p.add_argument("--n-surface", type=int, default=1500, help="authors: ground-truth surface points")
    p.add_argument("--seed", type=int, default=0, help="authors / surface sampling seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--categories", help="comma-separated categories to keep")
    return p


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def read_rows(path: Path) -> list[dict]:
    """Rows already written to a result CSV (empty when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(rows[0]) != set(COLUMNS):
        raise ValueError(f"{path} is not an evaluation CSV of this version (columns {list(rows[0])}); "
                         "choose another --output")
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV atomically (temp file + os.replace)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@torch.no_grad()
def evaluate_shape(model, dataset, i: int, protocol: str, device, n_points: int, seed: int) -> dict:
    """Metrics of shape i of ``dataset`` (a NeuralPartsDataset)."""
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
    rec = dataset.record(i)
    if protocol == "onet":
        image = normalise_image(rec["images"][0], dataset.image_size)[None].to(device)
        target = {k: torch.from_numpy(rec[k]).to(device)
                  for k in ("volume_points", "volume_labels", "surface_points", "surface_normals")}
        weights, n_pred, min_vertices = None, n_points, 5000
    else:
        item = dataset[i]
        image = item["image"][None].to(device)
        target = {k: item[k].to(device) for k in ("volume_points", "surface_points", "surface_normals")}
        target["volume_labels"] = item["volume_labels"].to(device) > 0.5
        weights, n_pred, min_vertices = item["volume_weights"].to(device), 10_000, 1000
    m = shape_metrics(model.predict(image), **target, volume_weights=weights, n_points=n_pred,
                      min_vertices=min_vertices, generator=g)
    return {"name": rec["name"], "category": rec["category"],
            **{k: m[k] for k in ("iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore",
                                 "accuracy", "completeness")}}


def summary(rows: list[dict], protocol: str, data: str) -> str:
    """A text table of the means per category and overall; the header states the protocol."""
    lines = [f"# {len(rows)} shapes of {data}", f"# {PROTOCOLS[protocol]}",
             ("# units: the records' normalised frame (bounding box centred, longest side 1); Chamfer-L1 = "
              "0.5*(accuracy+completeness), Euclidean; Chamfer-L2 squared; F-score at tau = 0.01"),
             (f"{'category':<12} {'shapes':>6} {'IoU':>7} {'Ch-L1':>8} {'Ch-L1 x10 (ONet tables)':>24} {'Ch-L2':>9} "
              f"{'normals':>8} {'F@0.01':>7}")]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["category"] or "-", []).append(r)
    if len(groups) > 1:
        groups["all"] = rows
    for cat, rs in groups.items():
        mean = {k: float(np.mean([float(r[k]) for r in rs])) for k in METRICS}
        lines.append(f"{cat:<12} {len(rs):>6} {mean['iou']:>7.4f} {mean['chamfer_l1']:>8.5f} "
                     f"{10 * mean['chamfer_l1']:>24.4f} {mean['chamfer_l2']:>9.6f} "
                     f"{mean['normal_consistency']:>8.4f} {mean['fscore']:>7.4f}")
    return "\n".join(lines)


def run(args) -> int:
    from .data import NeuralPartsDataset

    shard, n_shards = _shard(args.shard)
    ckpt = resolve_path(args.checkpoint)
    data = Path(args.data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: file not found")
    device = api.pick_device(args.device)
    model = api.load(ckpt, device)
    cfg = model.config
    if cfg["feature_extractor"]["type"] != "resnet18":
        raise ValueError(f"{ckpt}: a model without an image encoder ({cfg['feature_extractor']['type']}) "
                         "cannot be evaluated on images")
    categories = args.categories.split(",") if args.categories else None
    dataset = NeuralPartsDataset(data, n_volume=5000, n_surface=args.n_surface, equal=True,
                                 image_size=cfg["data"]["image_size"], seed=args.seed, categories=categories)
    suffix = f"-shard{shard}of{n_shards}" if n_shards > 1 else ""
    out = Path(args.output) if args.output else ckpt.parent / f"eval-{data.stem}-{args.protocol}{suffix}.csv"
    rows = read_rows(out)
    done = {int(r["index"]) for r in rows}
    todo = list(range(shard, len(dataset), n_shards))
    if args.limit is not None:
        todo = todo[:args.limit]
    pending = [i for i in todo if i not in done]
    print(f"evaluate: {ckpt} (step {model.step}) on {data}: {len(todo)} shapes, {len(todo) - len(pending)} "
          f"already in {out}, device {device}", file=sys.stderr)
    from tqdm import tqdm
    t_all = time.perf_counter()
    for i in tqdm(pending, unit="shape", disable=not pending):
        t0 = time.perf_counter()
        row = evaluate_shape(model, dataset, i, args.protocol, device, args.n_points, args.seed)
        rows.append({"index": i, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()},
                     "seconds": f"{time.perf_counter() - t0:.2f}"})
        write_rows(out, sorted(rows, key=lambda r: int(r["index"])))
    if pending:
        elapsed = time.perf_counter() - t_all
        print(f"evaluated {len(pending)} shapes in {elapsed:.1f} s ({len(pending) / elapsed:.2f} shapes/s)",
              file=sys.stderr)
    selected = [r for r in rows if int(r["index"]) in set(todo)]
    if not selected:
        raise ValueError("no shapes to evaluate (empty data file, shard or category filter)")
    print(summary(selected, args.protocol, str(data)))
    print(f"per-shape results: {out}")
    return 0


def main(argv=None) -> int:
    return run_command("evaluate", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
