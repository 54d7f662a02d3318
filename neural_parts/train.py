"""Train Neural Parts: ``python -m neural_parts.train [--config NAME|FILE] [--set a.b=c ...]``.

With no arguments: builds the built-in Anny humans if they are missing ($NEURAL_PARTS_DATA/humans-v1,
default ~/.cache/neural_parts; needs ``pip install anny``) and trains the ``humans`` preset (sized for a
2-core CPU) until interrupted (Ctrl-C or SIGTERM finishes the update and saves last.pt; a second one stops at
once). ``--config default`` trains the synthetic capsule humanoids instead (no extra package).

Run folder (``--output``, default runs/<config>-<YYYYmmdd-HHMMSS>): config.yaml, metrics.jsonl,
train.log, preview.png (+ previews/step_<n>.png), last.pt, best.pt (highest validation IoU on a
fixed seeded subset), step_<n>.pt, run_info.json (world size and global batch of each start).
``--resume DIR`` continues a run from its last.pt.

Several processes: ``torchrun --nproc-per-node N -m neural_parts.train ...`` trains with DistributedDataParallel
(see ``distributed.py`` and the README, "Several GPUs or machines"); rank 0 writes the run folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed, engine
from .atomic import atomic_path
from .checkpoint import (
    CheckpointError,
    atomic_link,
    load_checkpoint,
    load_model_state,
    prune_step_checkpoints,
    save_checkpoint,
)
from .cli import run_command
from .config import Config, ConfigError, dump, from_dict, load_config
from .models import NeuralParts
from .preview import record_preview, save_png
from .report import training_report
from .runtime import configure

log = logging.getLogger("neural_parts")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neural_parts.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="humans", help="preset name or YAML file (default: humans)")
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


def start_on_parts(model: NeuralParts, train_set, constant, device: torch.device, seed: int, split: str,
                   n_images: int = 32) -> None:
    """``network.init: parts``: primitives start on the parts (``network.part_split``) of the training set's
    constant shape, fitted over the first ``n_images`` training images' conditions
    (``initialise.initialise_primitives``)."""
    from .initialise import initialise_primitives

    if split == "mesh":
        raise ConfigError("network.part_split=mesh splits a mesh's own surface graph (fit); the training set's "
                          "constant shape has no mesh: use spectral or kmeans")
    images = torch.stack([train_set[i]["image"] for i in range(min(n_images, len(train_set)))]).to(device)
    initialise_primitives(model, images, constant.inside_cells(), np.random.default_rng(seed), split=split)


def data_folder(cfg: Config, progress: bool = True, build: bool = True) -> Path:
    """The dataset folder of ``data.dataset``; builds a missing built-in dataset (when ``build``)."""
    from .data import SYNTHETIC_NAME, default_data_dir, prepare_humans, prepare_synthetic
    from .data.sources import HUMANS_NAME

    name = cfg.data.dataset
    folder = Path(name) if ("/" in name or Path(name).is_dir()) else default_data_dir(name)
    splits = (cfg.data.train_split, cfg.data.val_split)
    if all((folder / f"{s}.h5").is_file() for s in splits):
        return folder
    built_in = {SYNTHETIC_NAME: prepare_synthetic, HUMANS_NAME: prepare_humans}
    if name in built_in and build:
        log.info("preparing the built-in dataset %s in %s (once; resumable)", name, folder)
        t0 = time.perf_counter()
        built_in[name](folder, progress=progress)
        log.info("dataset ready in %.0f s", time.perf_counter() - t0)
        return folder
    missing = [str(folder / f"{s}.h5") for s in splits if not (folder / f"{s}.h5").is_file()]
    raise FileNotFoundError(f"dataset files not found: {', '.join(missing)}; build them with "
                            "`python -m neural_parts.prepare ...` or set data.dataset to a folder"
                            + ("" if build else " (torchrun on several machines: every node must see the dataset)"))


def _setup_logging(run_dir: Path, ranks: distributed.Ranks) -> list[logging.Handler]:
    """Log to stdout and run_dir/train.log (npkernels' messages to the file too); returns the handlers.
    Ranks > 0 log only warnings and errors, to stderr."""
    log.setLevel(logging.INFO)
    if not ranks.main:
        handler = distributed.other_rank_handler(ranks.rank)
        log.addHandler(handler)
        logging.getLogger("npkernels").addHandler(handler)
        return [handler]
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
    """metrics.jsonl (appended, one JSON object per line) and TensorBoard when available; writes nothing
    unless ``enabled`` (ranks > 0)."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True):
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115 (closed by close())
        self.tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def write(self, split: str, step: int, elapsed: float, values: dict) -> None:
        if self.file is None:
            return
        row = {"split": split, "step": step, "elapsed_s": round(elapsed, 1), "time": time.strftime("%H:%M:%S"),
               **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _effective_backend(requested: str, device: torch.device) -> str:
    """What npkernels runs for this model's coupling maps on ``device`` (asking its dispatcher, which on CUDA
    runs the kernels' first-use check): "triton (fused kernels)" or "reference (PyTorch)"."""
    from npkernels._dispatch import select_backend

    try:
        chosen = select_backend("coupling", torch.zeros(1, device=device), backend=requested)
    except RuntimeError as e:
        raise ConfigError(f"runtime.kernel_backend={requested}: {e}") from None
    return "triton (fused kernels)" if chosen == "triton" else "reference (PyTorch)"


class StopRequest:
    """Ctrl-C or SIGTERM (``kill PID``; torchrun forwards it to every rank) asks the training loop to stop after
    the current update; a second one raises KeyboardInterrupt at once. A flag, not an exception raised from
    the handler: Python drops an exception raised while it runs a weakref callback or ``__del__``, and such a
    SIGTERM was lost (the run trained on). Use as ``with StopRequest() as stop: ... if stop.signum: ...``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None  # the first signal received, None before one
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def run(args) -> int:
    """Resolve the config, join torchrun's ranks (if any) and the run folder (new run or --resume), then train."""
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        resume = load_checkpoint(run_dir / "last.pt")
        cfg = from_dict(resume["config"]).replace(_overrides(args))
    else:
        cfg = load_config(args.config, _overrides(args))
    ranks = distributed.init(cfg.runtime.device, cfg.runtime.collective_timeout_s)
    try:
        if resume is None:
            stamp = ranks.broadcast(time.strftime("%Y%m%d-%H%M%S"))  # one run folder for every rank
            run_dir = Path(args.output or f"runs/{cfg.name}-{stamp}")
            if (run_dir / "last.pt").exists():
                raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                                  "or choose another --output")
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run folder {run_dir} exists and is not a folder")
        if ranks.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_text(run_dir / "config.yaml", dump(cfg))
        handlers = _setup_logging(run_dir, ranks)
        try:
            return _train(args, cfg, run_dir, resume, ranks)
        except RuntimeError as e:
            if ranks.distributed and distributed.is_collective_failure(e):
                raise distributed.rank_failure(e, ranks, "runtime.collective_timeout_s", f"the checkpoints in "
                                               f"{run_dir} are complete (written atomically); continue with "
                                               f"--resume {run_dir}") from None
            raise
        finally:
            _remove_logging(handlers)
    finally:
        distributed.teardown()


def _best_iou(run_dir: Path, resume: dict) -> float:
    """The best validation IoU so far: best.pt's own record (it may be newer than last.pt's)."""
    best = resume["metrics"].get("best_iou", -1.0)
    if (run_dir / "best.pt").is_file():
        best = max(best, load_checkpoint(run_dir / "best.pt")["metrics"].get("best_iou", -1.0))
    return best


def _train(args, cfg: Config, run_dir: Path, resume: dict | None, ranks: distributed.Ranks) -> int:
    """Build data, model and optimiser (restored when resuming), then train until max_steps or Ctrl-C."""
    rt, train_cfg, val_cfg, data_cfg = cfg.runtime, cfg.training, cfg.validation, cfg.data
    configure(rt, ranks.rank)
    device = ranks.device
    model = NeuralParts.from_config(cfg).to(device)
    if resume is None:
        load_encoder_weights(model, cfg)

    from .data import NeuralPartsDataset
    if not ranks.main:
        ranks.barrier()  # rank 0 builds a missing built-in dataset first
    folder = data_folder(cfg, progress=not args.quiet, build=ranks.main)
    if ranks.main:
        ranks.barrier()
    common = {"n_surface": data_cfg.n_points_on_mesh, "equal": data_cfg.equal, "image_size": data_cfg.image_size,
              "categories": data_cfg.categories}
    train_set = NeuralPartsDataset(folder / f"{data_cfg.train_split}.h5", n_volume=data_cfg.n_points_in_mesh,
                                   random_view=data_cfg.random_view, seed=rt.seed, **common)
    val_set = NeuralPartsDataset(folder / f"{data_cfg.val_split}.h5", n_volume=val_cfg.n_points_in_mesh,
                                 seed=val_cfg.seed, **common)
    val_indices = engine.validation_indices(len(val_set), val_cfg)

    optimizer = engine.make_optimizer(cfg, model)
    step, best_iou, elapsed0, position = 0, -1.0, 0.0, (0, 0)
    if resume is not None:
        load_model_state(model, resume.get("optimised_model", resume["model"]), source=resume["path"])
        optimizer.load_state_dict(resume["optimizer"])
        saved_rng = distributed.restore_rng(resume, ranks, rt.seed)
        step = resume["step"]
        position = distributed.resume_position(resume, len(train_set))
        best_iou = _best_iou(run_dir, resume)
        elapsed0 = resume["metrics"].get("elapsed_s", 0.0)
        removed = truncate_metrics(run_dir / "metrics.jsonl", step) if ranks.main else 0
        log.info("resumed %s at step %d%s", resume["path"], step,
                 f" (dropped {removed} metrics.jsonl rows written after it)" if removed else "")
        for note in distributed.resume_notes(resume, ranks, train_cfg, position, saved_rng):
            log.info(note)

    from npkernels.env import report
    info = report()  # the same facts as `python -m npkernels.env`, labeller tier included
    log.info("run folder: %s", run_dir.resolve())
    devices = ranks.devices()
    log.info("%s", ranks.describe(devices))
    log.info("batch: %s", distributed.batch_description(train_cfg, ranks.world_size))
    if ranks.main:
        distributed.write_run_info(run_dir, ranks, train_cfg, step, devices)
    log.info("device: %s | kernel backend: %s (runtime.kernel_backend=%s) | float32 matmul precision: %s (tf32 %s)",
             device, _effective_backend(model.kernel_backend, device), model.kernel_backend,
             torch.get_float32_matmul_precision(), "on" if rt.tf32 else "off")
    log.info("environment: %s", ", ".join(f"{k}={v}" for k, v in info.items()))
    log.info("config %s: M=%d, F=%d, hidden %d, projection %d, image %d, N=%d, N_s=%d, S=%d, batch %dx%d, %s lr %g; "
             "%d parameters; %d training / %d validation shapes (%s)", cfg.name, cfg.network.n_primitives,
             cfg.feature_extractor.feature_size, cfg.invertible_network.hidden_size, cfg.projection_layer.proj_dims,
             data_cfg.image_size, data_cfg.n_points_in_mesh, data_cfg.n_points_on_mesh, cfg.loss.n_points_on_sphere,
             train_cfg.batch_size, train_cfg.aggregate, train_cfg.optimizer, train_cfg.lr,
             engine.count_parameters(model), len(train_set), len(val_set), folder)

    t0 = time.perf_counter()
    constant = engine.fit_constant_shape(train_set)
    floor = engine.constant_shape_floor(constant, val_set, val_indices, device, ranks=ranks)["iou"]
    log.info("constant-shape floor: validation IoU %.4f (the best single shape of the training set; %.1f s)", floor,
             time.perf_counter() - t0)
    if resume is None and cfg.network.init == "parts":
        start_on_parts(model, train_set, constant, device, rt.seed, cfg.network.part_split)
        log.info("primitives start on the %d %s parts of the constant shape (network.init=parts)",
                 cfg.network.n_primitives, cfg.network.part_split)

    trainer = engine.Trainer(model, optimizer, cfg.loss, train_cfg.clip_grad_norm, train_cfg.max_nonfinite_steps,
                             ranks=ranks)
    average = None
    if train_cfg.ema_decay:  # after the Trainer, whose DDP wrapper gives every rank rank 0's weights
        average = engine.WeightAverage(model, train_cfg.ema_decay)
        if resume is not None and "optimised_model" in resume:
            load_model_state(average.model, resume["model"], source=resume["path"])
        elif resume is not None:
            log.info("%s holds no weight average: it starts from the resumed weights", resume["path"])
        log.info("validation, previews and checkpoints use the moving average of the weights "
                 "(training.ema_decay=%g)", train_cfg.ema_decay)
    shown = model if average is None else average.model  # what validation, previews and "model" use
    batches = engine.infinite_batches(train_set, train_cfg.batch_size, rt.seed, start=position,
                                      num_workers=data_cfg.num_workers, device=device, rank=ranks.rank,
                                      world_size=ranks.world_size)
    metrics = MetricsLog(run_dir, rt.tensorboard, enabled=ranks.main)
    t_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def checkpoint(name: str, every_rank: bool = False) -> None:
        """Rank 0 writes ``name``; ``every_rank`` (a point all ranks reach) also stores each rank's RNG state."""
        rng_ranks = distributed.gather_rng_states(ranks) if every_rank and ranks.distributed else None
        if ranks.main:
            optimised = {} if average is None else {"optimised_model": model.state_dict()}
            save_checkpoint(run_dir / name, model=shown, config=cfg, step=step, optimizer=optimizer,
                            metrics={"best_iou": best_iou, "elapsed_s": elapsed()},
                            extra={"data_position": list(position), "world_size": ranks.world_size,
                                   **optimised, **({"rng_ranks": rng_ranks} if rng_ranks else {})})

    def validation() -> None:
        nonlocal best_iou
        t0 = time.perf_counter()
        ranks.broadcast_buffers(shown)  # rank 0's BatchNorm statistics, which its checkpoints hold
        result = engine.validate(shown, val_set, val_indices, device, ranks=ranks)
        improved = result["iou"] > best_iou
        if improved:
            best_iou = result["iou"]
        if not ranks.main:
            return
        metrics.write("val", step, elapsed(), result)
        if improved:
            checkpoint("best.pt")
        if val_cfg.preview_shapes > 0:
            image = record_preview(shown, val_set, val_indices[:val_cfg.preview_shapes], device)
            (run_dir / "previews").mkdir(exist_ok=True)
            save_png(image, run_dir / "previews" / f"step_{step:07d}.png")
            save_png(image, run_dir / "preview.png")
        training_report(run_dir)  # report.html: curves, previews, viewers of best.pt
        log.info("step %d (%.0f s): validation IoU %.4f on %d shapes%s (constant-shape floor %.4f; %.1f s)", step,
                 elapsed(), result["iou"], len(val_indices), " (best)" if improved else "", floor,
                 time.perf_counter() - t0)

    max_steps = train_cfg.max_steps
    from tqdm import tqdm
    bar = tqdm(total=max_steps or None, initial=step, unit="step", disable=args.quiet or not ranks.main,
               mininterval=2, dynamic_ncols=True)
    last_val_time, last_val_step = time.perf_counter(), step
    running: dict[str, list[float]] = {}
    if resume is None:
        metrics.write("floor", 0, elapsed(), {"iou": floor})
        validation()
    with StopRequest() as stop:
        while not max_steps or step < max_steps:
            lr = engine.learning_rate(train_cfg, step)
            engine.set_learning_rate(optimizer, lr)
            values = {**trainer.step([next(batches) for _ in range(train_cfg.aggregate)]), "lr": lr}
            step += 1
            if average is not None:
                average.update(model, step)
            position = batches.position
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
            stopping = stop.signum is not None
            if ranks.distributed:  # one collective: rank 0's clock decides `due`, any rank's signal stops all
                flags = ranks.mean({"due": float(due and ranks.main), "stop": float(stopping)})
                due = due if not val_cfg.every_seconds else flags["due"] > 0
                stopping = flags["stop"] > 0
            if due:  # before the checkpoint: last.pt then holds this validation's best IoU
                validation()
                last_val_time, last_val_step = time.perf_counter(), step
            if step % train_cfg.checkpoint_every == 0:
                checkpoint(f"step_{step}.pt", every_rank=True)
                if ranks.main:
                    atomic_link(run_dir / f"step_{step}.pt", run_dir / "last.pt")
                    prune_step_checkpoints(run_dir, train_cfg.keep_checkpoints)
            if stopping:
                bar.close()
                checkpoint("last.pt", every_rank=True)
                log.info("interrupted (%s) at step %d; saved last.pt (continue with --resume %s)",
                         signal.Signals(stop.signum).name if stop.signum else "another rank", step, run_dir)
                metrics.close()
                return 130
    bar.close()
    if last_val_step != step:
        validation()
    checkpoint("last.pt", every_rank=True)
    metrics.close()
    log.info("finished %d steps in %.0f s; best validation IoU %.4f; run folder %s", step, elapsed(), best_iou,
             run_dir)
    return 0


def main(argv=None) -> int:
    return run_command("train", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
