"""Training and validation steps with the authors' optimiser semantics.

One optimiser update = ``aggregate`` mini-batches: gradients are zeroed at the start of the window,
each mini-batch's backward adds to them (sum, not mean), and ``clip_grad_norm_`` is applied to the
running sum after every backward (clip(clip(g1) + g2) for aggregate 2), exactly as
``train_on_batch`` of the authors' code. RAdam is ``torch.optim.RAdam``. An update whose loss or
gradients are not finite is skipped (the weights and the optimiser state stay as they were).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .config import Config, LossConfig
from .metrics import weighted_iou
from .models import NeuralParts
from .objective import compute_losses


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """Adam or RAdam (torch.optim) with the config's lr and weight decay."""
    train = cfg.training
    kind = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[train.optimizer]
    return kind(params, lr=train.lr, weight_decay=train.weight_decay)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def gradient_norm(params: list[nn.Parameter]) -> Tensor:
    """The L2 norm of all gradients together (0 when none has a gradient)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class Trainer:
    """Runs optimiser updates. ``step(batches)`` takes ``aggregate`` mini-batches (dicts of tensors).

    A non-finite loss or gradient skips the update; ``max_nonfinite`` skipped updates in a row raise
    FloatingPointError. ``skipped`` counts every skipped update.
    """

    def __init__(self, model: NeuralParts, optimizer: torch.optim.Optimizer, loss_cfg: LossConfig,
                 clip: float = 1.0, max_nonfinite: int = 10):
        self.model, self.optimizer, self.loss_cfg = model, optimizer, loss_cfg
        self.clip, self.max_nonfinite = clip, max_nonfinite
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.skipped, self._in_a_row = 0, 0

    def step(self, batches: list[dict]) -> dict[str, float]:
        """One update; returns the mini-batch mean of every loss term, "total", "iou", "grad_norm" and
        "skipped" (1.0 when the update was not applied)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for batch in batches:
            out = compute_losses(self.model(self.model.inputs(batch)), batch, self.loss_cfg)
            out["total"].backward()
            out["grad_norm"] = (torch.nn.utils.clip_grad_norm_(self.params, self.clip) if self.clip > 0
                                else gradient_norm(self.params))
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        values = {k: v / len(batches) for k, v in sums.items()}
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


def infinite_batches(dataset, batch_size: int, seed: int, start: int = 0, num_workers: int = 0,
                     device: torch.device | None = None) -> Iterator[dict]:
    """Endless shuffled mini-batches, the same stream however often the run was resumed.

    Epoch e is a permutation drawn with seed (seed, e), cut into ``len // batch_size`` batches (the
    last partial one dropped); ``start`` mini-batches are skipped without loading them (a resumed run
    passes how many it already consumed). Items draw their points with ``dataset.set_epoch(e)``.
    """
    per_epoch = len(dataset) // batch_size
    if per_epoch == 0:
        raise ValueError(f"the training set has {len(dataset)} shapes, fewer than training.batch_size={batch_size}")
    epoch, skip = divmod(start, per_epoch)
    while True:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)
        order = torch.randperm(len(dataset), generator=g).tolist()
        plan = [order[k * batch_size:(k + 1) * batch_size] for k in range(skip, per_epoch)]
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan, num_workers=num_workers, generator=g)
        for batch in loader:
            yield batch if device is None else to_device(batch, device)
        epoch, skip = epoch + 1, 0


@torch.no_grad()
def validate(model: NeuralParts, dataset, indices: list[int], device: torch.device,
             batch_size: int = 8) -> dict[str, float]:
    """Mean IoU of G < 0 (the true implicit, the authors' evaluation) on the seeded volume samples of
    ``indices`` (importance-weighted), plus the IoU of each shape in ``iou_per_shape``."""
    model.eval()
    return validation_iou(lambda batch: model(model.inputs(batch)).implicit(batch["volume_points"]).value < 0,
                          dataset, indices, device, batch_size)


@torch.no_grad()
def validation_iou(inside: Callable[[dict], Tensor], dataset, indices: list[int], device: torch.device,
                   batch_size: int = 8) -> dict[str, float]:
    """The validation protocol for any predictor: ``inside(batch)`` -> (B, N) bool at batch["volume_points"];
    the importance-weighted IoU of each shape of ``indices`` and their mean."""
    ious = []
    for s in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[s:s + batch_size]]
        batch = to_device({k: torch.stack([it[k] for it in items]) for k in items[0]}, device)
        ious.append(weighted_iou(inside(batch), batch["volume_labels"] > 0.5, batch["volume_weights"]).cpu())
    iou = torch.cat(ious)
    return {"iou": float(iou.mean()), "iou_per_shape": [round(float(v), 4) for v in iou]}


def constant_shape_floor(train_set, val_set, indices: list[int], device: torch.device,
                         max_records: int = 512) -> dict[str, float]:
    """The validation protocol applied to the best constant shape of the training set (``baseline``),
    fitted to at most ``max_records`` training records (a fixed random subset of larger sets)."""
    from .baseline import ConstantShape

    chosen = train_set.indices
    if len(chosen) > max_records:
        chosen = np.sort(np.random.default_rng(0).choice(chosen, max_records, replace=False))
    shape = ConstantShape.fit(train_set.records, chosen)

    def inside(batch):
        points = batch["volume_points"]
        return torch.from_numpy(shape.inside(points.reshape(-1, 3).cpu().numpy())).view(points.shape[:2]).to(device)

    return validation_iou(inside, val_set, indices, device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
