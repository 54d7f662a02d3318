"""Train Neural Parts: ``python -m neural_parts.train [--config NAME|FILE] [--set a.b=c ...]``.

With no arguments: builds the synthetic dataset if it is missing ($NEURAL_PARTS_DATA/synthetic-v1,
default ~/.cache/neural_parts) and trains the ``default`` preset (a small network that learns
visibly within ~10 minutes on a 2-core CPU) until interrupted (Ctrl-C or SIGTERM saves last.pt).

Run folder (``--output``, default runs/<config>-<YYYYmmdd-HHMMSS>): config.yaml, metrics.jsonl,
train.log, preview.png (+ previews/step_<n>.png), last.pt, best.pt (highest validation IoU on a
fixed seeded subset), step_<n>.pt. ``--resume DIR`` continues a run from its last.pt.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import engine
from .atomic import atomic_path
from .checkpoint import (
    CheckpointError,
    atomic_link,
    load_checkpoint,
    load_model_state,
    prune_step_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from .cli import run_command
from .config import Config, ConfigError, dump, from_dict, load_config
from .models import NeuralParts
from .preview import SIDE_VIEW, render_primitives, save_png, titled_grid, view_camera
from .runtime import configure

log = logging.getLogger("neural_parts")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neural_parts.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="default", help="preset name or YAML file (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. training.lr=1e-4")
    p.add_argument("--output", help="run folder (default runs/<config>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (runtime.device)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser updates (training.max_steps)")
    p.add_argument("--seed", type=int, help="runtime.seed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _overrides(args) -> list[str]:
    extra = list(args.set)
    if args.device is not None:
        extra.append(f"runtime.device={args.device}")
    if args.max_steps is not None:
        extra.append(f"training.max_steps={args.max_steps}")
    if args.seed is not None:
        extra.append(f"runtime.seed={args.seed}")
    return extra


def load_encoder_weights(model: NeuralParts, cfg: Config) -> None:
    """Apply ``feature_extractor.weights`` (a torchvision resnet18 file, or "none") to a new model."""
    weights = cfg.feature_extractor.weights
    if cfg.feature_extractor.type != "resnet18" or (weights is not None and weights.lower() == "none"):
        return
    if weights is None:
        raise ConfigError(
            f"config {cfg.name!r} expects pretrained encoder weights: set feature_extractor.weights="
            "PATH (a torchvision resnet18 state dict) or feature_extractor.weights=none to train from scratch")
    try:
        model.feature_extractor.load_torchvision_weights(weights)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"feature_extractor.weights {weights}: {e}") from None


def data_folder(cfg: Config, progress: bool = True) -> Path:
    """The dataset folder of ``data.dataset``; builds the built-in synthetic dataset when missing."""
    from .data import SYNTHETIC_NAME, default_data_dir, prepare_synthetic

    name = cfg.data.dataset
    folder = Path(name) if ("/" in name or Path(name).is_dir()) else default_data_dir(name)
    splits = (cfg.data.train_split, cfg.data.val_split)
    if all((folder / f"{s}.h5").is_file() for s in splits):
        return folder
    if name == SYNTHETIC_NAME:
        log.info("preparing the built-in dataset in %s (once; resumable)", folder)
        t0 = time.perf_counter()
        prepare_synthetic(folder, progress=progress)
        log.info("dataset ready in %.0f s", time.perf_counter() - t0)
        return folder
    missing = [str(folder / f"{s}.h5") for s in splits if not (folder / f"{s}.h5").is_file()]
    raise FileNotFoundError(f"dataset files not found: {', '.join(missing)}; build them with "
                            "`python -m neural_parts.prepare ...` or set data.dataset to a folder")


def _setup_logging(run_dir: Path) -> list[logging.Handler]:
    """Log to stdout and run_dir/train.log (npkernels' messages to the file too); returns the handlers."""
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "train.log")]
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    logging.getLogger("npkernels").setLevel(logging.INFO)
    logging.getLogger("npkernels").addHandler(handlers[1])
    return handlers


def _remove_logging(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        log.removeHandler(handler)
        logging.getLogger("npkernels").removeHandler(handler)
        handler.close()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the rows of metrics.jsonl up to ``step`` (a resumed run rewrites what came after its checkpoint;
    a torn last line is dropped); atomic. Returns the number of rows removed."""
    if not path.is_file():
        return 0
    kept, removed = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            removed += 1
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
        else:
            removed += 1
    _write_text(path, "".join(f"{line}\n" for line in kept))
    return removed


class MetricsLog:
    """metrics.jsonl (appended, one JSON object per line) and TensorBoard when available."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed by close())
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def write(self, split: str, step: int, elapsed: float, values: dict) -> None:
        row = {"split": split, "step": step, "elapsed_s": round(elapsed, 1), "time": time.strftime("%H:%M:%S"),
               **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _effective_backend(requested: str, device: torch.device, info: dict) -> str:
    """What npkernels will run for this model: "triton (fused kernels)" or "reference (PyTorch)"."""
    if requested == "auto":
        requested = info["env_override"]
    if requested == "auto":
        requested = info["auto_backend_on_cuda"] if device.type == "cuda" else "reference"
    return "triton (fused kernels)" if requested == "triton" else "reference (PyTorch)"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def preview(model, dataset, indices: list[int], device) -> np.ndarray:
    """Rows of [input image, primitives seen from the input camera, from the side] for validation shapes."""
    from .data.render import Camera

    rows, size = [], 0
    for i in indices:
        rec = dataset.record(i)
        image = rec["images"][0]
        size = image.shape[0]
        item = dataset[i]
        prims = model.predict(model.inputs({k: v[None].to(device) for k, v in item.items()}))
        cam = Camera(rec["camera_K"][0], rec["camera_Rt"][0], size, size)
        rows.append([image, render_primitives(prims, cam, size),
                     render_primitives(prims, view_camera(SIDE_VIEW, size), size)])
    return titled_grid(rows, ["input", "prediction (input view)", "prediction (side)"], size)


def run(args) -> int:
    """Resolve the config and run folder (new run or --resume), then train."""
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        resume = load_checkpoint(run_dir / "last.pt")
        cfg = from_dict(resume["config"]).replace(_overrides(args))
    else:
        cfg = load_config(args.config, _overrides(args))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.output or f"runs/{cfg.name}-{stamp}")
        if (run_dir / "last.pt").exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              "or choose another --output")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} exists and is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "config.yaml", dump(cfg))
    handlers = _setup_logging(run_dir)
    try:
        return _train(args, cfg, run_dir, resume)
    finally:
        _remove_logging(handlers)


def _best_iou(run_dir: Path, resume: dict) -> float:
    """The best validation IoU so far: best.pt's own record (it may be newer than last.pt's)."""
    best = resume["metrics"].get("best_iou", -1.0)
    if (run_dir / "best.pt").is_file():
        best = max(best, load_checkpoint(run_dir / "best.pt")["metrics"].get("best_iou", -1.0))
    return best


def _train(args, cfg: Config, run_dir: Path, resume: dict | None) -> int:
    """Build data, model and optimiser (restored when resuming), then train until max_steps or Ctrl-C."""
    rt, train_cfg, val_cfg, data_cfg = cfg.runtime, cfg.training, cfg.validation, cfg.data
    device = configure(rt)
    model = NeuralParts.from_config(cfg).to(device)
    if resume is None:
        load_encoder_weights(model, cfg)

    from .data import NeuralPartsDataset
    folder = data_folder(cfg, progress=not args.quiet)
    common = {"n_surface": data_cfg.n_points_on_mesh, "equal": data_cfg.equal, "image_size": data_cfg.image_size,
              "categories": data_cfg.categories}
    train_set = NeuralPartsDataset(folder / f"{data_cfg.train_split}.h5", n_volume=data_cfg.n_points_in_mesh,
                                   random_view=data_cfg.random_view, seed=rt.seed, **common)
    val_set = NeuralPartsDataset(folder / f"{data_cfg.val_split}.h5", n_volume=val_cfg.n_points_in_mesh,
                                 seed=val_cfg.seed, **common)
    order = np.random.default_rng(val_cfg.seed).permutation(len(val_set))
    val_indices = sorted(order[:val_cfg.n_shapes].tolist())

    optimizer = engine.make_optimizer(cfg, model.parameters())
    step, best_iou, elapsed0 = 0, -1.0, 0.0
    if resume is not None:
        load_model_state(model, resume["model"], source=resume["path"])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        step = resume["step"]
        best_iou = _best_iou(run_dir, resume)
        elapsed0 = resume["metrics"].get("elapsed_s", 0.0)
        removed = truncate_metrics(run_dir / "metrics.jsonl", step)
        log.info("resumed %s at step %d%s", resume["path"], step,
                 f" (dropped {removed} metrics.jsonl rows written after it)" if removed else "")

    from npkernels.env import report
    info = report()  # the same facts as `python -m npkernels.env`, labeller tier included
    log.info("run folder: %s", run_dir.resolve())
    log.info("device: %s | kernel backend: %s (runtime.kernel_backend=%s) | float32 matmul precision: %s (tf32 %s)",
             device, _effective_backend(model.kernel_backend, device, info), model.kernel_backend,
             torch.get_float32_matmul_precision(), "on" if rt.tf32 else "off")
    log.info("environment: %s", ", ".join(f"{k}={v}" for k, v in info.items()))
    log.info("config %s: M=%d, F=%d, hidden %d, projection %d, image %d, N=%d, N_s=%d, S=%d, batch %dx%d, %s lr %g; "
             "%d parameters; %d training / %d validation shapes (%s)", cfg.name, cfg.network.n_primitives,
             cfg.feature_extractor.feature_size, cfg.invertible_network.hidden_size, cfg.projection_layer.proj_dims,
             data_cfg.image_size, data_cfg.n_points_in_mesh, data_cfg.n_points_on_mesh, cfg.loss.n_points_on_sphere,
             train_cfg.batch_size, train_cfg.aggregate, train_cfg.optimizer, train_cfg.lr,
             engine.count_parameters(model), len(train_set), len(val_set), folder)

    t0 = time.perf_counter()
    floor = engine.constant_shape_floor(train_set, val_set, val_indices, device)["iou"]
    log.info("constant-shape floor: validation IoU %.4f (the best single shape of the training set; %.1f s)", floor,
             time.perf_counter() - t0)

    trainer = engine.Trainer(model, optimizer, cfg.loss, train_cfg.clip_grad_norm, train_cfg.max_nonfinite_steps)
    batches = engine.infinite_batches(train_set, train_cfg.batch_size, rt.seed, start=step * train_cfg.aggregate,
                                      num_workers=data_cfg.num_workers, device=device)
    metrics = MetricsLog(run_dir, rt.tensorboard)
    t_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def checkpoint(name: str) -> None:
        save_checkpoint(run_dir / name, model=model, config=cfg, step=step, optimizer=optimizer,
                        metrics={"best_iou": best_iou, "elapsed_s": elapsed()})

    def validation() -> None:
        nonlocal best_iou
        t0 = time.perf_counter()
        result = engine.validate(model, val_set, val_indices, device)
        metrics.write("val", step, elapsed(), result)
        improved = result["iou"] > best_iou
        if improved:
            best_iou = result["iou"]
            checkpoint("best.pt")
        if val_cfg.preview_shapes > 0:
            image = preview(model, val_set, val_indices[:val_cfg.preview_shapes], device)
            (run_dir / "previews").mkdir(exist_ok=True)
            save_png(image, run_dir / "previews" / f"step_{step:07d}.png")
            save_png(image, run_dir / "preview.png")
        log.info("step %d (%.0f s): validation IoU %.4f on %d shapes%s (constant-shape floor %.4f; %.1f s)", step,
                 elapsed(), result["iou"], len(val_indices), " (best)" if improved else "", floor,
                 time.perf_counter() - t0)

    max_steps = train_cfg.max_steps
    from tqdm import tqdm
    bar = tqdm(total=max_steps or None, initial=step, unit="step", disable=args.quiet, mininterval=2,
               dynamic_ncols=True)
    last_val_time, last_val_step = time.perf_counter(), step
    running: dict[str, list[float]] = {}
    if resume is None:
        metrics.write("floor", 0, elapsed(), {"iou": floor})
        validation()
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` saves last.pt like Ctrl-C
    try:
        while not max_steps or step < max_steps:
            values = trainer.step([next(batches) for _ in range(train_cfg.aggregate)])
            step += 1
            bar.update(1)
            if values["skipped"]:
                log.warning("step %d: non-finite loss or gradient (loss %s); update skipped (%d so far)", step,
                            values["total"], trainer.skipped)
            for k, v in values.items():
                running.setdefault(k, []).append(v)
            if step % train_cfg.log_every == 0:
                means = {k: float(np.nanmean(v)) if k != "skipped" else float(np.sum(v)) for k, v in running.items()}
                running.clear()
                metrics.write("train", step, elapsed(), means)
                bar.set_postfix(loss=f"{means['total']:.4f}", iou=f"{means.get('iou', float('nan')):.3f}")
            due = (time.perf_counter() - last_val_time >= val_cfg.every_seconds if val_cfg.every_seconds
                   else step % val_cfg.every_steps == 0)
            if due:  # before the checkpoint: last.pt then holds this validation's best IoU
                validation()
                last_val_time, last_val_step = time.perf_counter(), step
            if step % train_cfg.checkpoint_every == 0:
                checkpoint(f"step_{step}.pt")
                atomic_link(run_dir / f"step_{step}.pt", run_dir / "last.pt")
                prune_step_checkpoints(run_dir, train_cfg.keep_checkpoints)
    except KeyboardInterrupt:
        bar.close()
        checkpoint("last.pt")
        log.info("interrupted at step %d; saved last.pt (continue with --resume %s)", step, run_dir)
        metrics.close()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    bar.close()
    if last_val_step != step:
        validation()
    checkpoint("last.pt")
    metrics.close()
    log.info("finished %d steps in %.0f s; best validation IoU %.4f; run folder %s", step, elapsed(), best_iou,
             run_dir)
    return 0


def main(argv=None) -> int:
    return run_command("train", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
