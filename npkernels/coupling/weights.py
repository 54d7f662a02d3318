"""Typed views of a coupling stack's parameters and of the per-primitive affine map.

``CouplingWeights.from_module`` is duck-typed on the authors' attribute names
(``layers[i].map_s / map_t`` Sequentials with Linear at 0, 2, 4, a ``projection`` shared by
all layers, a ``mask`` buffer of shape (1, 1, 1, 3) with 1 = kept coordinate), so one adapter
serves our model, the authors' ``SimpleNVP`` and their checkpoints. Nothing is copied.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class Affine(NamedTuple):
    """Per-primitive map applied after the couplings (sphere -> world).

    scale: (B, M, 3) positive sigma; rotation: (B, M, 3, 3) R; translation: (B, M, 3) T.
    sphere->world: ``y = (z / sigma) @ R + T``; world->sphere: ``z = ((x - T) @ R^T) * sigma``.
    """

    scale: Tensor
    rotation: Tensor
    translation: Tensor


class LayerWeights(NamedTuple):
    """One coupling layer. ``w1`` columns are [condition (C) | projection (P)].

    mask: (3,) float, 1 = kept; s_w1/t_w1: (H, C + P); s_b1/t_b1: (H,); s_w2/t_w2: (H, H);
    s_b2/t_b2: (H,); s_w3/t_w3: (3, H); s_b3/t_b3: (3,). ``s`` is clamped to [-10, 10].
    """

    mask: Tensor
    s_w1: Tensor
    s_b1: Tensor
    s_w2: Tensor
    s_b2: Tensor
    s_w3: Tensor
    s_b3: Tensor
    t_w1: Tensor
    t_b1: Tensor
    t_w2: Tensor
    t_b2: Tensor
    t_w3: Tensor
    t_b3: Tensor


class CouplingWeights(NamedTuple):
    """The whole stack: shared projection 3 -> Hp -> P, then ``layers`` (applied 0..L-1 sphere->world).

    proj_w1: (Hp, 3); proj_b1: (Hp,); proj_w2: (P, Hp); proj_b2: (P,).
    """

    proj_w1: Tensor
    proj_b1: Tensor
    proj_w2: Tensor
    proj_b2: Tensor
    layers: tuple[LayerWeights, ...]

    @property
    def cond_dims(self) -> int:
        """C, the width of the per-primitive condition."""
        return self.layers[0].s_w1.shape[1] - self.proj_w2.shape[0]

    @property
    def hidden(self) -> int:
        return self.layers[0].s_w1.shape[0]

    @classmethod
    def from_module(cls, module: nn.Module) -> "CouplingWeights":
        """Build views of the parameters of a SimpleNVP-like ``module`` (ours or the authors')."""
        layers = getattr(module, "layers", None)
        if layers is None or len(layers) == 0:
            raise ValueError(f"{type(module).__name__} has no coupling `layers`")
        projection = _projection_linears(layers[0].projection)
        for i, layer in enumerate(layers):
            other = _projection_linears(layer.projection)
            if any(a.weight is not b.weight for a, b in zip(projection, other)):
                raise ValueError(f"layers[{i}].projection is not the projection shared by all layers")
        out = []
        for i, layer in enumerate(layers):
            s = _mlp_linears(layer.map_s, f"layers[{i}].map_s", clamp=True)
            t = _mlp_linears(layer.map_t, f"layers[{i}].map_t", clamp=False)
            mask = layer.mask.reshape(-1)
            if mask.numel() != 3:
                raise ValueError(f"layers[{i}].mask must hold 3 values, got shape {tuple(layer.mask.shape)}")
            out.append(LayerWeights(mask, *(v for lin in s for v in (lin.weight, lin.bias)),
                                    *(v for lin in t for v in (lin.weight, lin.bias))))
        (p1, p2) = projection
        return cls(p1.weight, p1.bias, p2.weight, p2.bias, tuple(out))


def _projection_linears(projection: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    seq = getattr(projection, "proj", projection)
    try:
        first, last = seq[0], seq[2]
    except (TypeError, IndexError) as err:
        raise ValueError("projection must be Sequential(Linear(3, Hp), ReLU, Linear(Hp, P))") from err
    if not (isinstance(first, nn.Linear) and isinstance(seq[1], nn.ReLU) and isinstance(last, nn.Linear)):
        raise ValueError("projection must be Sequential(Linear(3, Hp), ReLU, Linear(Hp, P))")
    if first.in_features != 3:
        raise ValueError(f"projection input must be 3-d, got {first.in_features}")
    return first, last


def _mlp_linears(seq: nn.Module, name: str, clamp: bool) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    try:
        linears = (seq[0], seq[2], seq[4])
        acts = (seq[1], seq[3])
    except (TypeError, IndexError) as err:
        raise ValueError(f"{name} must be Sequential(Linear, ReLU, Linear, ReLU, Linear[, Hardtanh])") from err
    if not all(isinstance(m, nn.Linear) for m in linears) or not all(isinstance(a, nn.ReLU) for a in acts):
        raise ValueError(f"{name} must be Sequential(Linear, ReLU, Linear, ReLU, Linear[, Hardtanh])")
    if linears[2].out_features != 3:
        raise ValueError(f"{name} must output 3 values, got {linears[2].out_features}")
    if clamp:
        tail = seq[5] if len(seq) > 5 else None
        if not (isinstance(tail, nn.Hardtanh) and tail.min_val == -10 and tail.max_val == 10):
            raise ValueError(f"{name} must end with Hardtanh(-10, 10)")
    elif len(seq) != 5:
        raise ValueError(f"{name} must be exactly Linear, ReLU, Linear, ReLU, Linear")
    return linears


def check_affine(affine: Affine, B: int, M: int) -> None:
    """Validate ``affine`` against batch size B and primitive count M."""
    if not isinstance(affine, Affine):
        raise TypeError(f"affine must be an npkernels.Affine, got {type(affine).__name__}")
    expected = {"scale": (B, M, 3), "rotation": (B, M, 3, 3), "translation": (B, M, 3)}
    for name, shape in expected.items():
        t = getattr(affine, name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"affine.{name} must have shape {shape}, got {got}")
