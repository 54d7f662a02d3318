"""Our checkpoints: one file with model, optimizer, step, config and RNG states; atomic writes; loading
a trained model. (The authors' checkpoint layout is read by ``models.authors_weights``.)

Everything stored is a tensor, a number, a string or a container of them, so files load with
``torch.load(weights_only=True)`` (no pickled code runs). The numpy RNG state is stored as its
PCG64/MT19937 state dict with arrays converted to tensors.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .errors import UserError

FORMAT = "neural_parts.checkpoint"
VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, or not matching the model."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then os.replace (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_link(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a hard link of ``src`` (a copy where links are unsupported), replacing it atomically."""
    with atomic_path(dst) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            import shutil
            shutil.copyfile(src, tmp)


def rng_state() -> dict:
    """Python, numpy (global), torch CPU and CUDA RNG states in weights_only-loadable types."""
    np_state = np.random.get_state(legacy=False)
    inner = {k: torch.from_numpy(np.asarray(v).copy()) if isinstance(v, np.ndarray) else v
             for k, v in np_state["state"].items()}
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {**{k: v for k, v in np_state.items() if k != "state"}, "state": inner}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = {k: v.numpy() if torch.is_tensor(v) else v for k, v in np_state["state"].items()}
    np.random.set_state(np_state)
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, *, model: nn.Module, config, step: int,
                    optimizer: torch.optim.Optimizer | None = None, metrics: dict | None = None,
                    extra: dict | None = None) -> None:
    """Write a training checkpoint atomically. ``model``: the weights every command loads (train: the moving
    average when ``training.ema_decay`` > 0); ``config``: a ``config.Config``; ``metrics``: plain numbers;
    ``extra``: more top-level entries (train: "data_position", "world_size", "rng_ranks", and
    "optimised_model", the optimiser's own weights, when "model" is their average)."""
    atomic_save({
        "format": FORMAT, "version": VERSION, "step": int(step), "config": config.to_dict(),
        "model": model.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": rng_state(), "metrics": dict(metrics or {}), **(extra or {}),
    }, path)


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its best.pt, else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: run folder has no best.pt or last.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and check a checkpoint (weights_only=True). ``path`` may be a run folder."""
    path = resolve_path(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (truncated zip, pickle with code, not a torch file: all user errors)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = (" (it looks like a bare state dict; authors' checkpoints load with "
                "neural_parts.models.load_authors_state_dict)") if isinstance(data, dict) else ""
        raise CheckpointError(f"{path}: not a neural_parts checkpoint{hint}")
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data['version']} is newer than this code ({VERSION})")
    data["path"] = str(path)
    return data


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Strict load that fails with a readable list of missing/unexpected/mismatched keys."""
    ours = model.state_dict()
    missing = sorted(ours.keys() - state.keys())
    unexpected = sorted(state.keys() - ours.keys())
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}"
                    for k in ours.keys() & state.keys() if state[k].shape != ours[k].shape)
    if missing or unexpected or shapes:
        def show(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"
        raise CheckpointError(f"{source} does not match the model built from its config: missing keys: "
                              f"{show(missing)}; unexpected keys: {show(unexpected)}; shape mismatches: {show(shapes)}")
    model.load_state_dict(state)


def prune_step_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step_<n>.pt files of a run folder (keep <= 0: keep all)."""
    if keep <= 0:
        return
    files = sorted((p for p in Path(run_dir).glob("step_*.pt") if p.stem[5:].isdigit()), key=lambda p: int(p.stem[5:]))
    for path in files[:-keep]:
        path.unlink(missing_ok=True)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """The trained ``NeuralParts`` of a checkpoint file or run folder (best.pt, else last.pt), in eval mode.

    The model gets ``.config`` (the run's ``Config``) and ``.step``. Raises CheckpointError when the
    file is missing, unreadable or does not match the model its config describes.
    """
    from .config import ConfigError, from_dict
    from .models import NeuralParts

    data = load_checkpoint(checkpoint)
    try:
        cfg = from_dict(data["config"])
    except ConfigError as e:
        raise CheckpointError(f"{data['path']}: stored config is invalid: {e}") from None
    n_shapes = None
    if cfg.feature_extractor.type == "latent":
        n_shapes = int(data["model"]["feature_extractor.codes.weight"].shape[0])
    model = NeuralParts.from_config(cfg, n_shapes)
    load_model_state(model, data["model"], source=data["path"])
    model.config, model.step = cfg, int(data["step"])
    return model.to(device).eval()
