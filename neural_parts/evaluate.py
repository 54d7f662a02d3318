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

Appends one CSV row per shape as it is evaluated (a killed run loses at most the row being written;
re-running skips shapes already there) and rewrites the CSV sorted by index at the end (atomically), so a
job can be resumed, split with ``--shard i/n`` and limited with ``--limit``.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .checkpoint import load_model, resolve_path
from .cli import run_command
from .data.images import normalise_image
from .metrics import shape_metrics
from .runtime import pick_device

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
    p.add_argument("checkpoint", nargs="?", help="run folder (uses best.pt, else last.pt) or checkpoint file")
    p.add_argument("--data", required=True, help="record file, e.g. $NEURAL_PARTS_DATA/synthetic-v1/test.h5")
    p.add_argument("--baseline", choices=("constant",),
                   help="evaluate the best constant shape of --train-data instead of a model (the IoU floor)")
    p.add_argument("--train-data", help="--baseline: the training record file (default: train.h5 beside --data)")
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
    """Complete rows already written to a result CSV (empty when it does not exist; a torn last line,
    left by a kill during an append, is dropped)."""
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is not None and set(reader.fieldnames) != set(COLUMNS):
        raise ValueError(f"{path} is not an evaluation CSV of this version (columns {reader.fieldnames}); "
                         "choose another --output")
    return [row for row in reader if None not in row.values() and None not in row]


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV atomically (temp file + os.replace)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def append_row(path: Path, row: dict) -> None:
    """Append one complete line to the CSV (written in one call and flushed to disk)."""
    import io
    import os

    line = io.StringIO()
    csv.DictWriter(line, fieldnames=COLUMNS).writerow(row)
    with open(path, "a", newline="") as f:
        f.write(line.getvalue())
        f.flush()
        os.fsync(f.fileno())


@torch.no_grad()
def evaluate_shape(model, dataset, i: int, protocol: str, device, n_points: int, seed: int) -> dict:
    """Metrics of shape i of ``dataset`` (a NeuralPartsDataset) predicted by ``model`` (a trained model or a
    ``baseline.ConstantShape``)."""
    from .baseline import ConstantShape, constant_shape_metrics

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
    if isinstance(model, ConstantShape):
        m = constant_shape_metrics(model, **target, volume_weights=weights, n_points=n_pred, generator=g)
    else:
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


def _constant_shape(args, data: Path, categories):
    """The best constant shape of the training records (``--train-data``, default train.h5 beside --data)."""
    from .baseline import ConstantShape
    from .data import H5Records
    from .data.dataset import NeuralPartsDataset

    train = Path(args.train_data) if args.train_data else data.parent / "train.h5"
    if not train.is_file():
        raise FileNotFoundError(f"--train-data {train}: file not found (the constant shape is fitted to it)")
    selected = NeuralPartsDataset(train, n_surface=1, categories=categories).indices
    return ConstantShape.fit(H5Records(train), selected)


def run(args) -> int:
    from .data import NeuralPartsDataset

    shard, n_shards = _shard(args.shard)
    for name in ("n_points", "n_surface", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if (args.checkpoint is None) == (args.baseline is None):
        raise ValueError("give a run folder or checkpoint, or --baseline constant (not both)")
    data = Path(args.data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: file not found")
    device = pick_device(args.device)
    categories = args.categories.split(",") if args.categories else None
    if args.baseline:
        model, what, image_size = _constant_shape(args, data, categories), "the constant shape", 64
        folder, name = data.parent, f"eval-{data.stem}-{args.protocol}-constant"
    else:
        ckpt = resolve_path(args.checkpoint)
        model = load_model(ckpt, device)
        if model.config.feature_extractor.type != "resnet18":
            raise ValueError(f"{ckpt}: a model without an image encoder ({model.config.feature_extractor.type}) "
                             "cannot be evaluated on images")
        what, image_size = f"{ckpt} (step {model.step})", model.config.data.image_size
        folder, name = ckpt.parent, f"eval-{data.stem}-{args.protocol}"
    dataset = NeuralPartsDataset(data, n_volume=5000, n_surface=args.n_surface, equal=True,
                                 image_size=image_size, seed=args.seed, categories=categories)
    suffix = f"-shard{shard}of{n_shards}" if n_shards > 1 else ""
    out = Path(args.output) if args.output else folder / f"{name}{suffix}.csv"
    rows = read_rows(out)
    done = {int(r["index"]) for r in rows}
    todo = list(range(shard, len(dataset), n_shards))
    if args.limit is not None:
        todo = todo[:args.limit]
    pending = [i for i in todo if i not in done]
    print(f"evaluate: {what} on {data}: {len(todo)} shapes, {len(todo) - len(pending)} "
          f"already in {out}, device {device}", file=sys.stderr)
    from tqdm import tqdm
    t_all = time.perf_counter()
    if pending:
        write_rows(out, sorted(rows, key=lambda r: int(r["index"])))  # drops a torn line, writes the header
    for i in tqdm(pending, unit="shape", disable=not pending):
        t0 = time.perf_counter()
        row = evaluate_shape(model, dataset, i, args.protocol, device, args.n_points, args.seed)
        rows.append({"index": i, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()},
                     "seconds": f"{time.perf_counter() - t0:.2f}"})
        append_row(out, rows[-1])
    if pending:
        write_rows(out, sorted(rows, key=lambda r: int(r["index"])))
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
