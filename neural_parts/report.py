"""HTML reports: ``python -m neural_parts.report RUN [--shapes N]`` writes RUN/report.html.

The run report shows, from RUN/metrics.jsonl: learning curves (every loss term, train and validation IoU with
the constant-shape floor, gradient norm, learning rate when logged, wall-clock seconds per step from
``elapsed_s``), the per-shape IoU of the latest validation, the validation previews over time (previews/step_*.png,
linked) and interactive viewers (``neural_parts.viewer``) of the first N validation shapes predicted by best.pt
(RUN/views/val_<k>.html, rebuilt only when best.pt is newer). ``train`` rewrites it at every validation.
``evaluate`` writes the evaluation report (``write_evaluation_report``) beside its CSV. Everything is inline SVG and
HTML: it opens from the file system with no server and no network.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from . import engine
from .viewer.pages import cards, esc, header, png_data_uri, section, table, viewer_frame, write_page
from .viewer.svg import Series, bar_chart, line_plot

log = logging.getLogger("neural_parts")

TRAIN_SHAPES = 3  # viewers of the run report written at every validation of ``train``
MAX_POINTS = 2000  # longer curves are drawn as means of consecutive rows
VIEWER_VERTICES = 2500  # vertices (at least) of each primitive in the reports' viewers (an icosphere: 2,562)
NOT_LOSSES = {"split", "step", "elapsed_s", "time", "iou", "grad_norm", "skipped", "lr", "iou_per_shape"}
LOSS_ORDER = ("total", "chamfer", "occupancy", "normal", "coverage", "overlap")
COLUMN_TITLES = {"index": "#", "iou": "IoU", "chamfer_l1": "Chamfer-L1", "chamfer_l2": "Chamfer-L2",
                 "normal_consistency": "normal consistency", "fscore": "F@0.01", "seconds": "s"}  # evaluation CSV
_reported: set[Path] = set()  # run folders whose report path ``training_report`` has logged


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a killed run) is dropped, any other bad line raises."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a run folder?)")
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ValueError(f"{path}: line {n} is not JSON") from None
    return rows


def thin(x: list[float], y: list[float], max_points: int = MAX_POINTS) -> tuple[list[float], list[float], int]:
    """Means of ``k`` consecutive points so that at most ``max_points`` remain; returns (x, y, k)."""
    k = max(1, math.ceil(len(x) / max_points))
    if k == 1:
        return list(x), list(y), 1
    xs = [float(np.mean(x[s:s + k])) for s in range(0, len(x), k)]
    ys = [float(np.nanmean(np.asarray(y[s:s + k], dtype=float))) for s in range(0, len(y), k)]
    return xs, ys, k


def seconds_per_step(train: list[dict]) -> tuple[list[int], list[float]]:
    """Wall-clock seconds per optimiser update between consecutive train rows (validations included)."""
    steps, seconds = [], []
    for a, b in itertools.pairwise(train):
        if b["step"] > a["step"] and "elapsed_s" in a and "elapsed_s" in b:
            steps.append(b["step"])
            seconds.append(max(b["elapsed_s"] - a["elapsed_s"], 0.0) / (b["step"] - a["step"]))
    return steps, seconds


def _series(rows: list[dict], key: str, name: str, **style) -> Series:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    x, y, k = thin([p[0] for p in pairs], [p[1] for p in pairs])
    return Series(name + (f" (mean of {k})" if k > 1 else ""), x, y, **style)


def learning_curves(rows: list[dict]) -> list[str]:
    """SVG plots of a run's metrics rows: IoU, every loss term, gradient norm, learning rate, seconds per step."""
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    floor = [r["iou"] for r in rows if r.get("split") == "floor" and "iou" in r]
    hlines = [("constant-shape floor", floor[-1], "#888888")] if floor else []
    plots = [line_plot([_series(train, "iou", "train"), _series(val, "iou", "validation", markers=True)],
                       "IoU", y_label="IoU", hlines=hlines, include_zero=True, log_y=False)]
    keys = {k for r in train + val for k, v in r.items() if k not in NOT_LOSSES and isinstance(v, (int, float))}
    for key in sorted(keys, key=lambda k: (LOSS_ORDER.index(k) if k in LOSS_ORDER else len(LOSS_ORDER), k)):
        series = [_series(train, key, "train"), _series(val, key, "validation", markers=True)]
        plots.append(line_plot(series, "loss" if key == "total" else f"{key} loss", y_label=key))
    if any("grad_norm" in r for r in train):
        plots.append(line_plot([_series(train, "grad_norm", "gradient norm")], "gradient norm (before clipping)"))
    if any("lr" in r for r in train):
        plots.append(line_plot([_series(train, "lr", "learning rate")], "learning rate", log_y=False))
    steps, seconds = seconds_per_step(train)
    x, y, k = thin(steps, seconds)
    plots.append(line_plot([Series("s/step" + (f" (mean of {k})" if k > 1 else ""), x, y)],
                           "wall clock per step (validation included)", y_label="seconds", include_zero=True))
    if any(r.get("skipped") for r in train):
        total, x, y = 0.0, [], []
        for r in train:
            total += r.get("skipped", 0.0)
            x.append(r["step"])
            y.append(total)
        plots.append(line_plot([Series("skipped", x, y)], "skipped updates (non-finite), cumulative",
                               include_zero=True, log_y=False))
    return plots


def record_viewer(path: Path, model, dataset, i: int, device, metrics: dict, title: str) -> Path:
    """A viewer (``write_viewer``) of ``model``'s primitives for record ``i`` of ``dataset``, with its input image
    and its surface points as the target."""
    import torch

    from .meshing import primitive_meshes
    from .viewer import write_viewer

    rec, item = dataset.record(i), dataset[i]
    with torch.no_grad():
        prims = model.predict(model.inputs({k: v[None].to(device) for k, v in item.items()}))
    return write_viewer(path, primitive_meshes(prims, VIEWER_VERTICES), image=rec["images"][0], title=title,
                        metrics=metrics, target={"points": rec["surface_points"], "normals": rec["surface_normals"]})


def _validation_set(cfg):
    """train's validation dataset of a run config, or None when its records are not on this machine."""
    from .data import NeuralPartsDataset
    from .train import data_folder

    try:
        folder = data_folder(cfg, progress=False, build=False)
    except FileNotFoundError:
        return None
    return NeuralPartsDataset(folder / f"{cfg.data.val_split}.h5", n_volume=cfg.validation.n_points_in_mesh,
                              n_surface=cfg.data.n_points_on_mesh, equal=cfg.data.equal, image_size=cfg.data.image_size,
                              seed=cfg.validation.seed, categories=cfg.data.categories)


def run_viewers(run_dir: Path, shapes: int, val_rows: list[dict], device="cpu") -> tuple[list[tuple[str, str]], str]:
    """Viewers of best.pt on the first ``shapes`` validation shapes, RUN/views/val_<k>.html. RUN/views/index.json
    records them with best.pt's modification time: while best.pt is unchanged they are reused without loading it.
    Returns ([(relative path, caption)], a note on what is shown or why nothing is)."""
    best, index_path = run_dir / "best.pt", run_dir / "views" / "index.json"
    if shapes <= 0:
        return [], "viewers not requested (python -m neural_parts.report RUN --shapes N writes them)"
    if not best.is_file():
        return [], "no best.pt yet"
    stamp = best.stat().st_mtime_ns
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if (index.get("best_mtime_ns") == stamp and index.get("requested", 0) >= shapes
            and all((run_dir / src).is_file() for src, _ in index["viewers"][:shapes])):
        return [tuple(v) for v in index["viewers"][:shapes]], index["note"]
    from .checkpoint import load_model

    model = load_model(best, device)
    cfg = model.config
    if cfg.feature_extractor.type != "resnet18":
        return [], f"the model has no image encoder ({cfg.feature_extractor.type}); no validation viewers"
    dataset = _validation_set(cfg)
    if dataset is None:
        return [], f"the validation records of data.dataset={cfg.data.dataset} are not on this machine"
    indices = engine.validation_indices(len(dataset), cfg.validation)
    at_best = next((r for r in reversed(val_rows) if r["step"] == model.step), {})
    out = []
    for k, i in enumerate(indices[:shapes]):
        record = int(dataset.indices[i])
        name = dataset.records.read(record, views=[])["name"]
        metrics = {"validation IoU": at_best["iou_per_shape"][k]} if k < len(at_best.get("iou_per_shape", [])) else {}
        metrics.update({"record": f"{cfg.data.val_split} #{record}", "checkpoint": f"best.pt, step {model.step}",
                        "primitives": model.n_primitives})
        path = record_viewer(run_dir / "views" / f"val_{k}.html", model, dataset, i, device, metrics,
                             f"{name} · {run_dir.name} step {model.step}")
        out.append((f"views/{path.name}", f"validation shape {k}: {name}"))
    note = f"best.pt (step {model.step}) on the first {len(out)} validation shapes; grey: the target's surface"
    with atomic_path(index_path) as tmp:
        tmp.write_text(json.dumps({"best_mtime_ns": stamp, "requested": shapes, "viewers": out, "note": note}))
    return out, note


def _previews(run_dir: Path, val_rows: list[dict]) -> str:
    frames = []
    iou_at = {r["step"]: r.get("iou") for r in val_rows}
    for p in sorted((run_dir / "previews").glob("step_*.png")):
        try:
            step = int(p.stem[5:])
        except ValueError:
            continue
        frames.append({"src": f"previews/{p.name}", "step": step, "iou": iou_at.get(step)})
    if not frames:
        return '<p class="np-note">no validation previews yet</p>'
    last = len(frames) - 1
    return (f'<div class="np-previews" data-frames="{esc(json.dumps(frames))}"><div class="np-slider">'
            f'<input type="range" min="0" max="{last}" value="{last}" aria-label="validation"> '
            f'<span class="np-frame-label"></span></div><img alt="validation preview" src="{frames[-1]["src"]}"></div>')


def _summary_cards(rows: list[dict]) -> str:
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    floor = [r for r in rows if r.get("split") == "floor"]
    best = max(val, key=lambda r: r["iou"]) if val else None
    last = rows[-1] if rows else {"step": 0}
    return cards([
        ("validation IoU", f"{val[-1]['iou']:.4f}" if val else "–", f"step {val[-1]['step']:,}" if val else ""),
        ("best validation IoU", f"{best['iou']:.4f}" if best else "–", f"step {best['step']:,}" if best else ""),
        ("constant-shape floor", f"{floor[-1]['iou']:.4f}" if floor else "–", "IoU of one fixed shape"),
        ("train loss", f"{train[-1]['total']:.4g}" if train and "total" in train[-1] else "–",
         f"step {train[-1]['step']:,}" if train else ""),
        ("steps", f"{last['step']:,}", f"{last.get('elapsed_s', 0) / 60:.1f} min of training"),
    ])


def _latest_validation(val: list[dict]) -> str:
    ious = val[-1]["iou_per_shape"]
    chart = bar_chart([str(k) for k in range(len(ious))], ious, f"IoU per validation shape, step {val[-1]['step']:,}",
                      y_label="IoU")
    listing = table(["shape", "IoU"], [[k, v] for k, v in enumerate(ious)], sortable=True, table_id="np-val-iou")
    return f'<div class="np-columns"><div>{chart}</div><div class="np-scroll">{listing}</div></div>'


def write_run_report(run_dir: str | Path, shapes: int = TRAIN_SHAPES, device="cpu") -> Path:
    """Write RUN/report.html (and RUN/views/ for ``shapes`` > 0); returns its path."""
    import yaml

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    cfg = yaml.safe_load(config) or {}
    val = [r for r in rows if r.get("split") == "val"]
    name = run_dir.resolve().name
    subtitle = (f"Neural Parts training run · {cfg.get('network', {}).get('n_primitives', '?')} primitives · data "
                f"{cfg.get('data', {}).get('dataset', '?')} · {run_dir.resolve()} · written "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    files = " · ".join(f'<a href="{f}">{f}</a>' for f in ("config.yaml", "train.log", "metrics.jsonl", "preview.png"))
    plots = "".join(f'<div class="np-plot-box">{svg}</div>' for svg in learning_curves(rows))
    viewers, note = run_viewers(run_dir, shapes, val, device)
    body = [header(name, subtitle), "<main>",
            section("", _summary_cards(rows) + f'<p class="np-note">files: {files}</p>'),
            section("Learning curves", f'<div class="np-plots">{plots}</div>',
                    "train rows are means over training.log_every updates; hover a plot for values"),
            section("Validation shapes in 3D", '<div class="np-viewers">' +
                    "".join(viewer_frame(src, caption) for src, caption in viewers) + "</div>", note)]
    if val and val[-1].get("iou_per_shape"):
        body.append(section("Latest validation, per shape", _latest_validation(val),
                            "shape k is the k-th record of the fixed validation subset; the viewers above show the "
                            "first ones"))
    body.append(section("Validation previews over time", _previews(run_dir, val),
                        "input · prediction from the input camera · from the side (previews/step_*.png)"))
    if config:
        body.append(section("", f"<details><summary>config.yaml</summary><pre>{esc(config)}</pre></details>"))
    body.append("</main><footer>neural_parts.report · metrics from metrics.jsonl</footer>")
    return write_page(run_dir / "report.html", f"{name} · Neural Parts run", "".join(body))


def training_report(run_dir: str | Path, shapes: int = TRAIN_SHAPES) -> None:
    """``train``'s call after each validation: rewrite RUN/report.html. A failure is logged as one warning and
    never stops training; the first success logs the report's path."""
    try:
        path = write_run_report(run_dir, shapes)
    except Exception as e:  # noqa: BLE001 (a report must never end a training run)
        log.warning("report.html not updated: %s: %s", type(e).__name__, e)
        return
    if path.resolve() not in _reported:
        _reported.add(path.resolve())
        log.info("report: %s (rewritten at every validation)", path)


def _shot(label: str, row: dict, image) -> str:
    caption = (f"{label}: #{row['index']} {row['name']} · IoU {float(row['iou']):.4f} · Chamfer-L1 "
               f"{float(row['chamfer_l1']):.5f}")
    return (f'<figure class="np-shot"><img alt="{esc(label)}" src="{png_data_uri(image)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def write_evaluation_report(path: str | Path, rows: list[dict], title: str, protocol: str, shots=(),
                            views: dict | None = None) -> Path:
    """An evaluation's HTML report: means per category, an IoU histogram, previews of the best and worst shapes
    (``shots``: (label, row, (H, W, 3) uint8 preview)) and a per-shape table sortable by every column, linking
    the viewers in ``views`` (index -> path relative to the report)."""
    from .evaluate import COLUMNS, PROTOCOLS, category_means

    views = views or {}
    summary = table(["category", "shapes", "IoU", "Chamfer-L1", "Chamfer-L1 x10", "Chamfer-L2", "normal consistency",
                     "F@0.01"], [[esc(c), n, m["iou"], m["chamfer_l1"], 10 * m["chamfer_l1"], m["chamfer_l2"],
                                  m["normal_consistency"], m["fscore"]] for c, (n, m) in category_means(rows).items()])
    counts, edges = np.histogram([float(r["iou"]) for r in rows], bins=20, range=(0.0, 1.0))
    histogram = bar_chart([f"{a:.2f}" for a in edges[:-1]], counts.tolist(), "shapes per IoU bin (width 0.05)",
                          y_label="shapes", y_limits=(0, max(int(counts.max()), 1)))
    text_columns = ("name", "category")
    table_rows = [[esc(str(r[c])) if c in text_columns else float(r[c]) for c in COLUMNS] +
                  [f'<a href="{esc(views[int(r["index"])])}">view</a>' if int(r["index"]) in views else ""]
                  for r in rows]
    per_shape = table([COLUMN_TITLES.get(c, c) for c in COLUMNS] + ["3D"], table_rows, sortable=True,
                      table_id="np-shapes")
    body = [header(title, f"{PROTOCOLS[protocol]}. Units: the normalised frame (longest side 1); Chamfer-L1 = "
                          "0.5 (accuracy + completeness)."), "<main>",
            section(f"Means ({len(rows)} shapes)", summary), section("IoU distribution", histogram)]
    if shots:
        body.append(section("Best and worst shapes by IoU", '<div class="np-shots">' +
                            "".join(_shot(*shot) for shot in shots) + "</div>",
                            "input · prediction from the input camera · from the side · the target surface from "
                            "the side"))
    body.append(section("Per shape", f'<div class="np-scroll">{per_shape}</div>',
                        f"click a column to sort; {len(views)} shapes have a 3D viewer (evaluate --views K)"))
    body.append("</main><footer>neural_parts.evaluate</footer>")
    return write_page(path, title, "".join(body))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neural_parts.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (holds metrics.jsonl)")
    p.add_argument("--shapes", type=int, default=TRAIN_SHAPES,
                   help=f"viewers of best.pt on this many validation shapes (default {TRAIN_SHAPES}; 0: none)")
    p.add_argument("--device", default="cpu", help="device of the viewers' predictions (default cpu)")
    return p


def run(args) -> int:
    if args.shapes < 0:
        raise ValueError(f"--shapes must be >= 0, got {args.shapes}")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    from .runtime import pick_device

    t0 = time.perf_counter()
    path = write_run_report(run_dir, args.shapes, pick_device(args.device))
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    from .cli import run_command

    return run_command("report", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
