"""Several processes (torchrun): process group, rank facts, sharding, reductions and the DDP wrapper.

``torchrun --nproc-per-node N -m neural_parts.train`` (or ``.evaluate``) starts N processes whose environment
holds RANK, LOCAL_RANK and WORLD_SIZE; ``init`` joins them into one process group: NCCL with one GPU per local
rank on CUDA, gloo on CPU. Without torchrun, or with one process, there is no process group and every helper
of ``Ranks`` is a no-op, so a single-process run behaves exactly as before.

Gradients (``wrap``, ``engine.Trainer``): DistributedDataParallel averages the ranks' gradients, and each rank
scales its loss by the world size, so the update uses their SUM: every rank's mini-batch is one more
aggregation micro-batch, as in the authors' ``training.aggregate`` (gradients summed, not averaged). An
update on W ranks with aggregate A is the single-process update on the same W x A mini-batches with their
gradients summed, clipped once after the last (reduced) backward. (A communication hook that sums instead
would count the reduced part twice when gradients accumulate without ``no_sync``; scaled losses averaged are
exact either way.) ``find_unused_parameters`` must stay False: the coupling network's weights are used
after ``forward`` returns (``Primitives`` calls it from the losses), so DDP's unused-parameter search marks them
unused and then fails with "Expected to mark a variable ready only once"; every parameter gets a gradient in
every step in every preset, which plain DDP needs (measured: see README, "Several GPUs or machines").
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .atomic import atomic_path
from .checkpoint import rng_state, set_rng_state
from .config import ConfigError, TrainingConfig
from .errors import UserError
from .runtime import pick_device, seed_everything

RANK_SEED_STRIDE = 1_000_003  # rank r seeds its RNGs with seed + r * stride (rank 0: the single-process seed)
_GLOO_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Timed out", "gloo/transport")


class RankFailure(UserError, RuntimeError):
    """A collective failed: another rank died, was killed or stopped answering within the timeout."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank ``rank`` of ``world_size`` (``local_rank`` on its node), the
    backend ("nccl", "gloo", or None without a process group) and its device. Single process: rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files (checkpoints, metrics, logs, previews, CSVs)."""
        return self.rank == 0

    def shard(self, items) -> list:
        """This rank's share of ``items``: items[rank], items[rank + world_size], ..."""
        return list(items)[self.rank::self.world_size]

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each number (every rank passes the same keys); NaN on one rank gives NaN."""
        if not self.distributed:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        reduced = dict(zip(keys, (t / self.world_size).tolist()))
        return {k: reduced[k] for k in values}

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that evaluation-mode passes on
        any rank use what rank 0's checkpoint holds (in training each rank updates them from its own batches)."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def devices(self) -> list[str]:
        """"host:device" of every rank, in rank order (collective)."""
        return self.gather(f"{socket.gethostname()}:{self.device}")

    def describe(self, devices: list[str]) -> str:
        """One line for the log: world size, this rank, backend and every rank's host and device."""
        if not self.distributed:
            return f"processes: 1 (no process group), device {self.device}"
        return (f"processes: world size {self.world_size} (torchrun), backend {self.backend}; this is rank "
                f"{self.rank} (local rank {self.local_rank}); devices: "
                + ", ".join(f"rank {r} {d}" for r, d in enumerate(devices)))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s global RNGs (sphere samples of the objective): rank 0 keeps ``seed``."""
    return int(seed) + RANK_SEED_STRIDE * int(rank)


def _rank_device(name: str, local_rank: int) -> torch.device:
    """The device of local rank ``local_rank`` for ``runtime.device`` = name: auto/cuda -> cuda:LOCAL_RANK."""
    if name.startswith("cuda:"):
        raise ConfigError(f"runtime.device={name} names one GPU, but under torchrun every rank takes its own "
                          "(cuda:LOCAL_RANK): use runtime.device=auto or cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return pick_device("cpu")
    pick_device("cuda")  # checks that CUDA is there
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {local_rank} has no GPU: torchrun started more processes on this node than "
                          f"its {torch.cuda.device_count()} GPU(s) (--nproc-per-node), or use runtime.device=cpu")
    return torch.device("cuda", local_rank)


def init(device: str = "auto", timeout_s: float = 600.0) -> Ranks:
    """Join torchrun's process group (WORLD_SIZE > 1 in the environment) or describe the single process.

    ``device``: "auto" | "cpu" | "cuda" (| "cuda:N" without torchrun). ``timeout_s``: how long a collective
    waits for the other ranks before failing (``init_process_group(timeout=...)``; NCCL's watchdog then ends
    the process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device=pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _rank_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=dev if dev.type == "cuda" else None)
    return Ranks(rank, world, local, backend, dev)


def teardown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over ranks: scale the loss by the world size
    for their sum) when distributed, else ``model`` itself. DDP copies rank 0's parameters and buffers to every
    rank here."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ranks.device] if ranks.device.type == "cuda" else None,
                                   find_unused_parameters=False)


def no_sync(model: nn.Module, skip: bool):
    """``model.no_sync()`` (no all-reduce in this forward + backward) when ``skip`` and ``model`` is DDP."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failed collective (a lost or timed-out rank) rather than a bug of this rank."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError)
                                                 and any(s in str(error) for s in _GLOO_FAILURES))


def rank_failure(error: BaseException, ranks: Ranks, timeout: str, what: str) -> RankFailure:
    """The one-line error for a failed collective on this rank; ``timeout`` names the timeout setting, ``what``
    says what is left (e.g. the checkpoints)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RankFailure(f"rank {ranks.rank} of {ranks.world_size}: a collective failed: another rank died, was "
                       f"killed or did not answer within {timeout} ({first[:200]}); {what}")


def other_rank_handler(rank: int) -> logging.Handler:
    """Log handler of ranks > 0: warnings and errors only, on stderr, prefixed with the rank."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S"))
    return handler


def batch_description(training: TrainingConfig, world_size: int) -> str:
    """What one update uses, e.g. "4 per rank x 2 ranks x aggregate 1 = 8 samples per update; ..."."""
    b, a, w = training.batch_size, training.aggregate, world_size
    if w == 1:
        return (f"{b} x aggregate {a} = {b * a} samples per update; the gradient is the sum over the {a} "
                "mini-batch(es), clipped after every backward (the authors' semantics)")
    return (f"{b} per rank x {w} ranks x aggregate {a} = {b * w * a} samples per update (global batch); the "
            f"gradient is the sum over the {w * a} mini-batches (DDP all-reduce sum), clipped once after the reduction")


def write_run_info(run_dir: Path, ranks: Ranks, training: TrainingConfig, step: int, devices: list[str]) -> None:
    """Append this start's geometry (world size, batch per rank, aggregate, global batch, devices, first step) to
    ``run_dir/run_info.json`` (a list: one entry per start or resume); rank 0 only."""
    path = run_dir / "run_info.json"
    starts = json.loads(path.read_text()) if path.is_file() else []
    starts = [s for s in starts if s["step"] < step]  # a resumed run replaces what came after its checkpoint
    starts.append({"step": int(step), "world_size": ranks.world_size, "backend": ranks.backend,
                   "batch_size_per_rank": training.batch_size, "aggregate": training.aggregate,
                   "global_batch": training.batch_size * ranks.world_size * training.aggregate,
                   "clip": "every backward" if ranks.world_size == 1 else "once, after the all-reduce",
                   "devices": devices})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(starts, indent=2))


def gather_rng_states(ranks: Ranks) -> list[dict]:
    """Every rank's ``checkpoint.rng_state()``, in rank order (collective). They travel as torch.save bytes:
    all_gather_object cannot unpickle the uint64 tensors of numpy's state."""
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return [torch.load(io.BytesIO(b), weights_only=True) for b in ranks.gather(buffer.getvalue())]


def restore_rng(resume: dict, ranks: Ranks, seed: int) -> int:
    """Restore this rank's RNG states from a checkpoint ("rng_ranks": every rank's, saved where all ranks met;
    else "rng": rank 0's). A rank without a saved state is seeded with rank_seed(seed + step, rank). Returns
    how many ranks had a saved state."""
    states = resume.get("rng_ranks") or [resume["rng"]]
    if ranks.rank < len(states):
        set_rng_state(states[ranks.rank])
    else:
        seed_everything(rank_seed(seed + int(resume["step"]), ranks.rank))
    return len(states)


def resume_position(resume: dict, n_samples: int) -> tuple[int, int]:
    """Where a resumed run's data stream starts, (epoch, offset) (``engine.infinite_batches``): the checkpoint's
    "data_position", or for checkpoints written without one (single-process runs of earlier versions) the
    position after step x aggregate mini-batches of batch_size samples."""
    if "data_position" in resume:
        return int(resume["data_position"][0]), int(resume["data_position"][1])
    training = resume["config"]["training"]
    batch = training.get("batch_size", TrainingConfig.batch_size)
    epoch, k = divmod(int(resume["step"]) * training.get("aggregate", TrainingConfig.aggregate), n_samples // batch)
    return epoch, k * batch


def resume_notes(resume: dict, ranks: Ranks, training: TrainingConfig, position: tuple[int, int],
                 saved_rng: int) -> list[str]:
    """Log lines on what a resume keeps and what changes when the world size or the batch geometry differ."""
    old = resume["config"]["training"]
    w0, w1 = int(resume.get("world_size", 1)), ranks.world_size
    b0, a0 = old.get("batch_size", TrainingConfig.batch_size), old.get("aggregate", TrainingConfig.aggregate)
    b1, a1 = training.batch_size, training.aggregate
    clip = {True: "after every backward", False: "once, after the all-reduce"}
    notes = []
    if (w0, b0, a0) != (w1, b1, a1):
        notes.append(
            f"resuming a run of {w0} process(es) on {w1}: kept: the weights, the optimiser state, the step count "
            f"({resume['step']}), the best IoU and the data stream, which continues at epoch {position[0]}, sample "
            f"{position[1]} of its permutation (the samples the run would have used next); changed: an update now "
            f"takes {b1} x {w1} rank(s) x aggregate {a1} = {b1 * w1 * a1} samples (before: {b0} x {w0} x {a0} = "
            f"{b0 * w0 * a0}) and its gradient sums {w1 * a1} mini-batches (before: {w0 * a0}), clipped "
            f"{clip[w1 == 1]} (before: {clip[w0 == 1]}); the learning rate is unchanged")
    if saved_rng < w1:
        notes.append(f"ranks {saved_rng}..{w1 - 1} have no RNG state in {resume['path']} (saved only where every "
                     "rank met, not by an interrupted run): they draw fresh sphere samples")
    return notes
