"""Training and validation steps with the authors' optimiser semantics.

One optimiser update = ``aggregate`` mini-batches: gradients are zeroed at the start of the window,
each mini-batch's backward adds to them (sum, not mean), and ``clip_grad_norm_`` is applied to the
running sum after every backward (clip(clip(g1) + g2) for aggregate 2), exactly as
``train_on_batch`` of the authors' code. RAdam is ``torch.optim.RAdam``. An update whose loss or
gradients are not finite is skipped (the weights and the optimiser state stay as they were).

Several ranks (torchrun, ``distributed.py``): each rank runs its ``aggregate`` mini-batches under
``no_sync`` but the last, whose backward all-reduces the ranks' gradient sums (DDP averages; each rank's
loss is scaled by the world size, so the result is their sum); the clip is applied
once, to that reduced gradient (the per-backward clips would need the other ranks' gradients). One update
on W ranks is therefore the single-process update on the same W x aggregate mini-batches with their
gradients summed and clipped once at the end; with aggregate 1 and one rank that is the authors' step.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .config import Config, LossConfig, TrainingConfig
from .distributed import Ranks
from .metrics import weighted_iou
from .models import NeuralParts
from .objective import compute_losses


COUPLING_PARAMETERS = ("invertible_network.layers.", "invertible_network.projection.")


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or RAdam (torch.optim) with the config's lr and weight decay over ``model``'s parameters. With
    ``training.placement_lr_scale`` != 1, two groups: the couplings and their projection
    (``COUPLING_PARAMETERS``) at lr, everything else at lr x the scale (each group's ``lr_scale``, which
    ``set_learning_rate`` applies); otherwise one group, as in checkpoints from before the option."""
    train = cfg.training
    kind = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[train.optimizer]
    if train.placement_lr_scale == 1:
        return kind(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    coupling, placement = [], []
    for name, p in model.named_parameters():
        (coupling if any(part in name for part in COUPLING_PARAMETERS) else placement).append(p)
    groups = [{"params": ps, "lr_scale": scale, "lr": train.lr * scale}
              for ps, scale in ((coupling, 1.0), (placement, train.placement_lr_scale)) if ps]
    return kind(groups, lr=train.lr, weight_decay=train.weight_decay)


def learning_rate(train: TrainingConfig, step: int) -> float:
    """The learning rate of update ``step`` (0-based): a pure function of the step, so resumes are exact.

    Linear warm-up over ``warmup_steps``, then constant, or (``cosine``) a half cosine from ``lr`` to
    ``lr * lr_final`` over ``lr_steps`` updates (``max_steps`` when 0; constant when both are 0), then flat.
    """
    lr = train.lr * min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else train.lr
    horizon = train.lr_steps or train.max_steps
    if train.lr_schedule == "constant" or not horizon:
        return lr
    t = min(1.0, max(0, step - train.warmup_steps) / max(1, horizon - train.warmup_steps))
    return lr * (train.lr_final + (1 - train.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set each group's lr to ``lr`` times its ``lr_scale`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def gradient_norm(params: list[nn.Parameter]) -> Tensor:
    """The L2 norm of all gradients together (0 when none has a gradient)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class Trainer:
    """Runs optimiser updates. ``step(batches)`` takes ``aggregate`` mini-batches (dicts of tensors).

    A non-finite loss or gradient skips the update; ``max_nonfinite`` skipped updates in a row raise
    FloatingPointError. ``skipped`` counts every skipped update. ``ranks`` (several processes): the model
    is wrapped in DistributedDataParallel (``distributed.wrap``), which copies rank 0's weights to every rank.
    """

    def __init__(self, model: NeuralParts, optimizer: torch.optim.Optimizer, loss_cfg: LossConfig,
                 clip: float = 1.0, max_nonfinite: int = 10, ranks: Ranks | None = None):
        self.model, self.optimizer, self.loss_cfg = model, optimizer, loss_cfg
        self.clip, self.max_nonfinite = clip, max_nonfinite
        self.ranks = ranks or Ranks()
        self.forward = distributed.wrap(model, self.ranks)  # the model itself in one process
        self.clip_every_backward = not self.ranks.distributed
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.skipped, self._in_a_row = 0, 0

    def step(self, batches: list[dict]) -> dict[str, float]:
        """One update; returns the mini-batch mean (over ranks too) of every loss term, "total", "iou",
        "grad_norm" (one process: the mean of the norms before each clip; several: the norm of the reduced
        gradient before its clip) and "skipped" (1.0 when the update was not applied, on every rank alike)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for k, batch in enumerate(batches):
            with distributed.no_sync(self.forward, skip=k < len(batches) - 1):  # all-reduce in the last only
                out = compute_losses(self.forward(self.model.inputs(batch)), batch, self.loss_cfg)
                loss = out["total"] * self.ranks.world_size if self.ranks.distributed else out["total"]
                loss.backward()  # DDP averages over ranks: world size x the mean = the sum
            if self.clip_every_backward:
                out["grad_norm"] = self._clip()
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        values = {k: v / len(batches) for k, v in sums.items()}
        if not self.clip_every_backward:
            values["grad_norm"] = float(self._clip())
        values = self.ranks.mean(values)  # the same numbers, hence the same skip decision, on every rank
        finite = np.isfinite(values["total"]) and np.isfinite(values["grad_norm"])
        if finite:
            self.optimizer.step()
            self._in_a_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self._in_a_row += 1
            if self._in_a_row >= self.max_nonfinite:
                raise FloatingPointError(
                    f"the loss or its gradient was not finite in {self._in_a_row} updates in a row (loss "
                    f"{values['total']}, gradient norm {values['grad_norm']}); lower training.lr or check the data")
        values["skipped"] = 0.0 if finite else 1.0
        return values

    def _clip(self) -> Tensor:
        """Clip the gradients to ``clip`` (when > 0); returns their norm before clipping."""
        return (torch.nn.utils.clip_grad_norm_(self.params, self.clip) if self.clip > 0
                else gradient_norm(self.params))


class WeightAverage:
    """An exponential moving average of a model's weights (``training.ema_decay``): what validation, previews
    and a checkpoint's "model" hold when the average is on; the optimiser keeps updating the model itself.

    ``update(model, step)`` after update ``step`` (1-based) moves every floating-point parameter and buffer
    (BatchNorm running statistics included) as avg <- avg + (1 - d) (w - avg) with
    d = min(decay, (1 + step) / (10 + step)): the short ramp keeps the first weights from dominating the
    average. Integer buffers are copied. The average is a pure function of the weights seen and the steps,
    so a resumed run that restores it continues exactly.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"WeightAverage: decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self._tensors(self.model), self._tensors(model)):
            if average.dtype.is_floating_point:
                average.lerp_(current, weight)
            else:
                average.copy_(current)

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [*model.parameters(), *model.buffers()]


def infinite_batches(dataset, batch_size: int, seed: int, start: tuple[int, int] = (0, 0), num_workers: int = 0,
                     device: torch.device | None = None, rank: int = 0, world_size: int = 1) -> BatchStream:
    """Endless shuffled mini-batches of one rank, the same stream however often (and on however many ranks)
    the run was resumed: a ``BatchStream``.

    Epoch e is a permutation drawn with seed (seed, e). From ``start`` = (epoch, offset) on (the first
    ``offset`` samples of that epoch's permutation already used) each epoch is cut into global batches of
    ``world_size * batch_size`` consecutive samples, the last partial one dropped so that every rank takes
    as many steps; rank r gets the r-th ``batch_size`` slice of each, so the ranks' shards are disjoint.
    Only the batches yielded are loaded. Items draw their points with ``dataset.set_epoch(e)``.
    """
    return BatchStream(dataset, batch_size, seed, start, num_workers, device, rank, world_size)


class BatchStream:
    """The iterator of ``infinite_batches``. ``position`` = (epoch, offset) after the batches yielded so far
    (where a resumed run starts, with any world size or batch size: it then continues with the samples this
    stream would have used next; an epoch's remainder smaller than this stream's global batch is skipped)."""

    def __init__(self, dataset, batch_size: int, seed: int, start: tuple[int, int], num_workers: int,
                 device: torch.device | None, rank: int, world_size: int):
        self.dataset, self.batch_size, self.seed, self.rank = dataset, batch_size, int(seed), rank
        self.global_batch = batch_size * world_size
        if len(dataset) < self.global_batch:
            what = f"training.batch_size={batch_size}" + (f" x {world_size} ranks" if world_size > 1 else "")
            raise ValueError(f"the training set has {len(dataset)} shapes, fewer than {what}")
        self.num_workers, self.device = num_workers, device
        self.position = (int(start[0]), int(start[1]))
        self._batches = self._generate()

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return next(self._batches)

    def _generate(self) -> Iterator[dict]:
        (epoch, offset), n, size = self.position, len(self.dataset), self.global_batch
        first = self.rank * self.batch_size
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
            starts = range(offset, n - size + 1, size)
            plan = [order[s + first:s + first + self.batch_size] for s in starts]
            self.dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=plan, num_workers=self.num_workers,
                                                 generator=g)
            for s, batch in zip(starts, loader):
                self.position = (epoch, s + size) if s + 2 * size <= n else (epoch + 1, 0)
                yield batch if self.device is None else to_device(batch, self.device)
            epoch, offset = epoch + 1, 0


@torch.no_grad()
def validation_indices(n_records: int, validation) -> list[int]:
    """The fixed validation subset: the first ``validation.n_shapes`` of a permutation seeded by
    ``validation.seed`` of the validation split's ``n_records`` records, sorted."""
    order = np.random.default_rng(validation.seed).permutation(n_records)
    return sorted(order[:validation.n_shapes].tolist())


def validate(model: NeuralParts, dataset, indices: list[int], device: torch.device,
             batch_size: int = 8, ranks: Ranks | None = None) -> dict[str, float]:
    """Mean IoU of G < 0 (the true implicit, the authors' evaluation) on the seeded volume samples of
    ``indices`` (importance-weighted), plus the IoU of each shape in ``iou_per_shape``. With ``ranks``
    every rank must call it (see ``validation_iou``); ``model`` is the plain model, not its DDP wrapper."""
    model.eval()
    return validation_iou(lambda batch: model(model.inputs(batch)).implicit(batch["volume_points"]).value < 0,
                          dataset, indices, device, batch_size, ranks)


@torch.no_grad()
def validation_iou(inside: Callable[[dict], Tensor], dataset, indices: list[int], device: torch.device,
                   batch_size: int = 8, ranks: Ranks | None = None) -> dict[str, float]:
    """The validation protocol for any predictor: ``inside(batch)`` -> (B, N) bool at batch["volume_points"];
    the importance-weighted IoU of each shape of ``indices`` and their mean.

    ``ranks`` (several processes): the batches of ``batch_size`` shapes are dealt out to the ranks and their
    IoUs gathered, so every rank returns exactly what one process computes (the same batches run).
    """
    ranks = ranks or Ranks()
    starts = range(0, len(indices), batch_size)
    mine = {}
    for s in ranks.shard(starts):
        items = [dataset[i] for i in indices[s:s + batch_size]]
        batch = to_device({k: torch.stack([it[k] for it in items]) for k in items[0]}, device)
        mine[s] = weighted_iou(inside(batch), batch["volume_labels"] > 0.5, batch["volume_weights"]).cpu()
    gathered = {s: v for part in ranks.gather(mine) for s, v in part.items()}
    iou = torch.cat([gathered[s] for s in starts])
    return {"iou": float(iou.mean()), "iou_per_shape": [round(float(v), 4) for v in iou]}


def fit_constant_shape(train_set, max_records: int = 256):
    """The best constant shape (``baseline.ConstantShape``) of the training set, fitted to at most
    ``max_records`` training records (a fixed random subset of larger sets; deterministic on every rank)."""
    from .baseline import ConstantShape

    chosen = train_set.indices
    if len(chosen) > max_records:
        chosen = np.sort(np.random.default_rng(0).choice(chosen, max_records, replace=False))
    return ConstantShape.fit(train_set.records, chosen)


def constant_shape_floor(shape, val_set, indices: list[int], device: torch.device,
                         ranks: Ranks | None = None) -> dict[str, float]:
    """The validation protocol applied to a ``baseline.ConstantShape``; ``validation_iou`` shares the
    validation shapes among ``ranks``."""

    def inside(batch):
        points = batch["volume_points"]
        return torch.from_numpy(shape.inside(points.reshape(-1, 3).cpu().numpy())).view(points.shape[:2]).to(device)

    return validation_iou(inside, val_set, indices, device, ranks=ranks)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
