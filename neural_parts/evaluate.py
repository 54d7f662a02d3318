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

``torchrun --nproc-per-node N -m neural_parts.evaluate ...`` shares the shapes among the N processes (one GPU
each): rank r > 0 appends its rows to <csv stem>.rank<r>.csv beside the CSV (the folder must be shared), and
rank 0 merges them into the one CSV and writes the summary and the report; a rerun (with or without torchrun)
first merges the rows a killed run left in those files.

Beside the CSV it writes an HTML report (<csv stem>.html): means, an IoU histogram, previews of the best and
worst shapes and a per-shape table sortable by every column. ``--views K`` also writes interactive viewers
(``neural_parts.viewer``) of the first K shapes to <csv stem>-views/<index>.html, linked from the table.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .atomic import atomic_path
from .checkpoint import load_model, resolve_path
from .cli import run_command
from .data.images import normalise_image
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
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="torchrun: seconds a rank waits for the others (at the start and at the end)")
    p.add_argument("--categories", help="comma-separated categories to keep")
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="write 3D viewers (view.html pages) of the first K shapes evaluated (default 0)")
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


def rank_csv(out: Path, rank: int) -> Path:
    """Where rank ``rank`` > 0 of a torchrun evaluation appends its rows; rank 0 merges them into ``out``."""
    return out.with_name(f"{out.stem}.rank{rank}.csv")


def merge_rank_rows(out: Path) -> None:
    """Move the rows of ``rank_csv`` files beside ``out`` into ``out`` (rewritten atomically, sorted by index;
    a shape in both keeps the row of ``out``), then delete those files."""
    parts = sorted(out.parent.glob(f"{out.stem}.rank*.csv"))
    if not parts:
        return
    rows = {int(r["index"]): r for part in parts for r in read_rows(part)}
    rows.update({int(r["index"]): r for r in read_rows(out)})
    write_rows(out, [rows[i] for i in sorted(rows)])
    for part in parts:
        part.unlink()


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


def category_means(rows: list[dict]) -> dict[str, tuple[int, dict[str, float]]]:
    """category -> (shapes, mean of each of ``METRICS``), plus "all" when there are several categories."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["category"] or "-", []).append(r)
    if len(groups) > 1:
        groups["all"] = rows
    return {cat: (len(rs), {k: float(np.mean([float(r[k]) for r in rs])) for k in METRICS})
            for cat, rs in groups.items()}


def summary(rows: list[dict], protocol: str, data: str) -> str:
    """A text table of the means per category and overall; the header states the protocol."""
    lines = [f"# {len(rows)} shapes of {data}", f"# {PROTOCOLS[protocol]}",
             ("# units: the records' normalised frame (bounding box centred, longest side 1); Chamfer-L1 = "
              "0.5*(accuracy+completeness), Euclidean; Chamfer-L2 squared; F-score at tau = 0.01"),
             (f"{'category':<12} {'shapes':>6} {'IoU':>7} {'Ch-L1':>8} {'Ch-L1 x10 (ONet tables)':>24} {'Ch-L2':>9} "
              f"{'normals':>8} {'F@0.01':>7}")]
    for cat, (n, mean) in category_means(rows).items():
        lines.append(f"{cat:<12} {n:>6} {mean['iou']:>7.4f} {mean['chamfer_l1']:>8.5f} "
                     f"{10 * mean['chamfer_l1']:>24.4f} {mean['chamfer_l2']:>9.6f} "
                     f"{mean['normal_consistency']:>8.4f} {mean['fscore']:>7.4f}")
    return "\n".join(lines)


def write_views(model, dataset, rows: list[dict], folder: Path, device) -> dict[int, str]:
    """A viewer per row (``report.record_viewer``) in ``folder``/<index>.html, with the row's metrics; returns
    index -> relative path."""
    from .report import record_viewer

    views = {}
    for r in rows:
        i = int(r["index"])
        metrics = {"IoU": float(r["iou"]), "Chamfer-L1": float(r["chamfer_l1"]), "Chamfer-L2": float(r["chamfer_l2"]),
                   "normal consistency": float(r["normal_consistency"]), "F@0.01": float(r["fscore"]),
                   "category": r["category"], "checkpoint step": model.step}
        path = record_viewer(folder / f"{i}.html", model, dataset, i, device, metrics, f"#{i} {r['name']}")
        views[i] = f"{folder.name}/{path.name}"
    return views


def best_and_worst(rows: list[dict], n: int = 3) -> list[tuple[str, dict]]:
    """("best k" | "worst k", row) for the n highest and the n lowest IoUs (each row once)."""
    ranked = sorted(rows, key=lambda r: -float(r["iou"]))
    best = ranked[:n]
    worst = [r for r in ranked[::-1][:n] if r not in best]
    return [(f"best {k + 1}", r) for k, r in enumerate(best)] + [(f"worst {k + 1}", r) for k, r in enumerate(worst)]


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
    ranks = distributed.init(args.device, args.timeout)  # one process without torchrun
    try:
        return _run(args, ranks)
    except RuntimeError as e:
        if ranks.distributed and distributed.is_collective_failure(e):
            raise distributed.rank_failure(e, ranks, "--timeout", "the rows written so far are kept (beside the "
                                           "CSV); rerun the same command to finish") from None
        raise
    finally:
        distributed.teardown()


def _run(args, ranks: distributed.Ranks) -> int:
    from .data import NeuralPartsDataset

    shard, n_shards = _shard(args.shard)
    for name in ("n_points", "n_surface", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if (args.checkpoint is None) == (args.baseline is None):
        raise ValueError("give a run folder or checkpoint, or --baseline constant (not both)")
    if args.views < 0 or (args.views and args.baseline):
        raise ValueError(f"--views must be >= 0 and needs a model (not --baseline), got --views {args.views}")
    data = Path(args.data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: file not found")
    device = ranks.device
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
    if ranks.main:
        merge_rank_rows(out)  # rows a killed torchrun evaluation left beside the CSV
    ranks.barrier()
    rows = read_rows(out)
    done = {int(r["index"]) for r in rows}
    todo = list(range(shard, len(dataset), n_shards))
    if args.limit is not None:
        todo = todo[:args.limit]
    pending = [i for i in todo if i not in done]
    mine, target = ranks.shard(pending), (out if ranks.main else rank_csv(out, ranks.rank))
    if ranks.main:
        print(f"evaluate: {what} on {data}: {len(todo)} shapes, {len(todo) - len(pending)} already in {out}, "
              f"device {device}" + (f", shared among {ranks.world_size} ranks" if ranks.distributed else ""),
              file=sys.stderr)
    from tqdm import tqdm
    t_all = time.perf_counter()
    if mine or (pending and ranks.main):  # drops a torn line, writes the header
        write_rows(target, sorted(rows, key=lambda r: int(r["index"])) if ranks.main else [])
    for i in tqdm(mine, unit="shape", disable=not mine or not ranks.main):
        t0 = time.perf_counter()
        row = evaluate_shape(model, dataset, i, args.protocol, device, args.n_points, args.seed)
        rows.append({"index": i, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()},
                     "seconds": f"{time.perf_counter() - t0:.2f}"})
        append_row(target, rows[-1])
    if ranks.distributed:
        ranks.barrier()  # every rank has written its rows
        if not ranks.main:
            return 0
        merge_rank_rows(out)
        rows = read_rows(out)
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
    write_report(args, model, dataset, selected, todo, out, device, f"{what} on {data}")
    return 0


def write_report(args, model, dataset, rows: list[dict], todo: list[int], out: Path, device, title: str) -> None:
    """<csv stem>.html beside the CSV ``out`` (``report.write_evaluation_report``) with previews of the best and
    worst ``rows`` (a model only), and with ``--views K`` viewers of the first K shapes of ``todo``."""
    from .report import write_evaluation_report

    t0 = time.perf_counter()
    views_dir = out.with_name(f"{out.stem}-views")
    shown = {int(r["index"]) for r in rows}
    views = {int(p.stem): f"{views_dir.name}/{p.name}" for p in views_dir.glob("*.html")
             if p.stem.isdigit() and int(p.stem) in shown}  # written by an earlier run into this CSV
    if args.views:
        by_index = {int(r["index"]): r for r in rows}
        views.update(write_views(model, dataset, [by_index[i] for i in todo[:args.views]], views_dir, device))
    shots = []
    if not args.baseline:
        from .preview import record_preview

        shots = [(label, r, record_preview(model, dataset, [int(r["index"])], device))
                 for label, r in best_and_worst(rows)]
    report = write_evaluation_report(out.with_suffix(".html"), rows, title, args.protocol, shots, views)
    print(f"report: {report}" + (f" and {args.views} viewers in {views_dir}" if args.views else "") +
          f" ({time.perf_counter() - t0:.1f} s)")


def main(argv=None) -> int:
    return run_command("evaluate", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
