"""Training and validation steps with the authors' optimiser semantics.

One optimiser update = ``aggregate`` mini-batches: gradients are zeroed at the start of the window,
each mini-batch's backward adds to them (sum, not mean), and ``clip_grad_norm_`` is applied to the
running sum after every backward (clip(clip(g1) + g2) for aggregate 2), exactly as
``train_on_batch`` of the authors' code. RAdam is ``torch.optim.RAdam``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .metrics import weighted_iou
from .models import NeuralParts
from .models.primitives import Primitives
from .objective import LossConfig, compute_losses


def loss_config(cfg: dict) -> LossConfig:
    """The objective's settings from the ``loss`` section of a config."""
    loss = cfg["loss"]
    return LossConfig(weights=dict(loss["weights"]), sharpness=loss["sharpness"], min_n_points=loss["min_n_points"],
                      max_shared_points=loss["max_shared_points"], coverage_eps=loss["coverage_eps"],
                      n_points_on_sphere=loss["n_points_on_sphere"], volume_implicit=loss["volume_implicit"],
                      test_own_primitive=loss["test_own_primitive"], union_surface=loss["union_surface"])


def make_optimizer(cfg: dict, params) -> torch.optim.Optimizer:
    """Adam or RAdam (torch.optim) with the config's lr and weight decay."""
    train = cfg["training"]
    kind = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[train["optimizer"]]
    return kind(params, lr=train["lr"], weight_decay=train["weight_decay"])


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def predict(model: NeuralParts, inputs: Tensor, amp_encoder: bool = False) -> Primitives:
    """model(inputs), with the image encoder optionally under bf16 autocast (CUDA); the invertible
    network always runs in fp32."""
    use_amp = amp_encoder and inputs.is_cuda
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    with ctx:
        features = model.feature_extractor(inputs)
    cond = model.conditions(features.float())
    return Primitives(cond, model.invertible_network.affine(cond), model.invertible_network, model.radius)


def model_inputs(batch: dict, model: NeuralParts) -> Tensor:
    """Images (B, 3, H, W), or shape indices (B,) for the latent encoder."""
    return batch["image"] if "image" in batch and not hasattr(model.feature_extractor, "codes") else batch["index"]


class Trainer:
    """Runs optimiser updates. ``step(batches)`` takes ``aggregate`` mini-batches (dicts of tensors)."""

    def __init__(self, model: NeuralParts, optimizer: torch.optim.Optimizer, loss_cfg: LossConfig,
                 clip: float = 1.0, amp_encoder: bool = False):
        self.model, self.optimizer, self.loss_cfg = model, optimizer, loss_cfg
        self.clip, self.amp_encoder = clip, amp_encoder
        self.params = [p for p in model.parameters() if p.requires_grad]

    def step(self, batches: list[dict]) -> dict[str, float]:
        """One update; returns the mini-batch mean of every loss term, "total", "iou" and "grad_norm"."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for batch in batches:
            out = compute_losses(predict(self.model, model_inputs(batch, self.model), self.amp_encoder),
                                 batch, self.loss_cfg)
            out["total"].backward()
            if self.clip > 0:
                out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        self.optimizer.step()
        values = {k: v / len(batches) for k, v in sums.items()}
        if not np.isfinite(values["total"]):
            raise FloatingPointError(f"the loss became {values['total']}; lower training.lr or check the data")
        return values


def infinite_batches(dataset, batch_size: int, seed: int, start_epoch: int = 0, num_workers: int = 0,
                     device: torch.device | None = None) -> Iterator[dict]:
    """Endless shuffled mini-batches; epoch e is shuffled with seed (seed, e) (reproducible after resume)."""
    epoch = start_epoch
    if len(dataset) < batch_size:
        raise ValueError(f"the training set has {len(dataset)} shapes, fewer than training.batch_size={batch_size}")
    while True:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g,
                                             drop_last=True, num_workers=num_workers,
                                             persistent_workers=False)
        for batch in loader:
            yield batch if device is None else to_device(batch, device)
        epoch += 1


@torch.no_grad()
def validate(model: NeuralParts, dataset, indices: list[int], device: torch.device,
             batch_size: int = 8) -> dict[str, float]:
    """Mean IoU of G < 0 (the true implicit, the authors' evaluation) on the seeded volume samples of
    ``indices`` (importance-weighted), plus the mean IoU of each shape in ``iou_per_shape``."""
    model.eval()
    ious = []
    for s in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[s:s + batch_size]]
        batch = to_device({k: torch.stack([it[k] for it in items]) for k in items[0]}, device)
        prims = model(model_inputs(batch, model))
        inside = prims.implicit(batch["volume_points"]).value < 0
        ious.append(weighted_iou(inside, batch["volume_labels"] > 0.5, batch["volume_weights"]).cpu())
    iou = torch.cat(ious)
    return {"iou": float(iou.mean()), "iou_per_shape": [round(float(v), 4) for v in iou]}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
