"""Load state dicts laid out like the authors' FlexiblePrimitives / SimpleNVP checkpoints.

Their keys differ from ours only by prefixes: ``feature_extractor._feature_extractor.*`` ->
``feature_extractor.*`` and ``invertible_network._projection.*`` -> ``invertible_network.projection.*``.
Their shared projection is stored under 5 keys (``_projection`` and each ``layers.i.projection``),
which must be equal. Their FrozenBatchNorm2d stores ``running_var + eps`` and no
``num_batches_tracked``; we subtract eps and add the counter.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

_PREFIXES = (("feature_extractor._feature_extractor.", "feature_extractor."),
             ("invertible_network._projection.", "invertible_network.projection."))


def _rename(key: str) -> str:
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_authors_state_dict(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map an authors' checkpoint to our key layout (no loading)."""
    out = {_rename(k): v for k, v in state.items()}
    ours = model.state_dict()
    shared = sorted(k for k in out if ".projection.proj." in k)
    for key in shared:
        base = "invertible_network.projection.proj." + key.split(".projection.proj.", 1)[1]
        if base in out and not torch.equal(out[key], out[base]):
            raise ValueError(f"checkpoint's shared projection differs between {key} and {base}")
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.BatchNorm2d):
            continue
        prefix = module_name + "."
        counter = prefix + "num_batches_tracked"
        if prefix + "running_var" in out and counter not in out and counter in ours:
            out[prefix + "running_var"] = out[prefix + "running_var"] - module.eps
            out[counter] = torch.zeros((), dtype=torch.long)
    return out


def load_authors_state_dict(model: nn.Module, state: Mapping[str, Tensor], strict: bool = True
                            ) -> tuple[list[str], list[str]]:
    """Load an authors'-layout state dict into our NeuralParts ``model``.

    Returns (missing, unexpected) keys; with ``strict`` any of them, or a shape mismatch, raises
    ValueError listing them.
    """
    converted = convert_authors_state_dict(state, model)
    ours = model.state_dict()
    missing = sorted(ours.keys() - converted.keys())
    unexpected = sorted(converted.keys() - ours.keys())
    mismatched = sorted(f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(ours[k].shape)}"
                        for k in ours.keys() & converted.keys() if converted[k].shape != ours[k].shape)
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError("checkpoint does not match the model:\n"
                         f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n"
                         f"  shape mismatches: {mismatched}")
    model.load_state_dict({k: v for k, v in converted.items() if k in ours}, strict=False)
    return missing, unexpected
