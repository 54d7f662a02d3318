"""Swap the fused kernels into an existing model: ``accelerate(model)`` / ``restore(model)``.

Two kinds of submodules are handled (found with ``model.modules()``, duck-typed, nothing imported):
- modules with a ``kernel_backend`` attribute (ours): the attribute is set to ``backend``;
- modules laid out like the authors' ``SimpleNVP`` (``layers[i].map_s / map_t / projection / mask``
  plus the ``scales`` / ``rotations`` / ``translations`` heads, no ``kernel_backend``): their bound
  ``forward`` / ``inverse`` are replaced by instance attributes calling the npkernels ops with the
  authors' signatures and return types:
      forward(F (B, M, C), x (B, N, M, 3) sphere points) -> y (B, N, M, 3) world points
      inverse(F, y (B, N, M, 3) world points) -> (x (B, N, M, 3), ldj (B, N, M)), ldj = sum over
      layers of all 3 s outputs (the authors' definition).
``restore(model)`` undoes exactly what ``accelerate`` did (previous attribute values and any
instance-level methods that existed before); accelerating an accelerated model restores it first,
so calls do not stack.

``backend="triton"`` raises RuntimeError unless Triton is usable and CUDA is available or
``TRITON_INTERPRET=1``; ``backend="auto"`` never raises: the ops pick Triton for CUDA tensors and
fall back to the reference otherwise, with one log line here when Triton cannot run at all.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ._dispatch import interpreter_enabled, log_once, triton_status
from .coupling import coupling_forward, coupling_inverse
from .coupling.affine import affine_from_heads
from .coupling.weights import CouplingWeights

__all__ = ["accelerate", "restore"]

_STATE = "_npkernels_accelerated"
_MISSING = object()


def _is_authors_nvp(module: nn.Module) -> bool:
    if hasattr(module, "kernel_backend"):
        return False
    layers = getattr(module, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    if not all(hasattr(layer, name) for layer in layers for name in ("map_s", "map_t", "projection", "mask")):
        return False
    return all(hasattr(module, head) for head in ("scales", "rotations", "translations"))


def _check_backend(backend: str) -> None:
    if backend not in ("triton", "auto"):
        raise ValueError(f"backend must be 'triton' or 'auto', got {backend!r}")
    usable, why = triton_status()
    runnable = usable and (torch.cuda.is_available() or interpreter_enabled())
    if runnable:
        return
    reason = why if not usable else "no CUDA device and TRITON_INTERPRET is not 1"
    if backend == "triton":
        raise RuntimeError(f"accelerate(backend='triton'): Triton cannot run here ({reason})")
    log_once(
        "accelerate:fallback",
        f"npkernels.accelerate: Triton cannot run here ({reason}); the ops use the PyTorch reference",
        logging.INFO,
    )


def _patched_methods(module: nn.Module, backend: str):
    CouplingWeights.from_module(module)  # fail now, not at the first call, if the layout differs

    def affine(F):
        return affine_from_heads(F, module.scales, module.rotations, module.translations)

    def forward(F, x):
        return coupling_forward(x, F, CouplingWeights.from_module(module), affine(F), backend=backend)

    def inverse(F, y):
        return coupling_inverse(
            y, F, CouplingWeights.from_module(module), affine(F), return_authors_ldj=True, backend=backend
        )

    return forward, inverse


def accelerate(model: nn.Module, backend: str = "triton") -> nn.Module:
    """Route ``model``'s coupling networks through the fused kernels; returns the same object."""
    _check_backend(backend)
    if getattr(model, _STATE, None) is not None:
        restore(model)
    records = []
    modules = list(model.modules())
    for module in modules:
        if hasattr(module, "kernel_backend"):
            records.append((module, "kernel_backend", module.kernel_backend))
    for module in modules:
        if _is_authors_nvp(module):
            forward, inverse = _patched_methods(module, backend)
            for name, fn in (("forward", forward), ("inverse", inverse)):
                records.append((module, name, module.__dict__.get(name, _MISSING)))
                object.__setattr__(module, name, fn)
    for module, name, _ in records:
        if name == "kernel_backend":
            module.kernel_backend = backend
    object.__setattr__(model, _STATE, records)
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo ``accelerate(model)``; a model that was not accelerated is returned unchanged."""
    records = getattr(model, _STATE, None)
    if records is None:
        return model
    for module, name, previous in reversed(records):
        if name == "kernel_backend":
            module.kernel_backend = previous
        elif previous is _MISSING:
            del module.__dict__[name]
        else:
            object.__setattr__(module, name, previous)
    object.__delattr__(model, _STATE)
    return model
