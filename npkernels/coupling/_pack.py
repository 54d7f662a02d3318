"""Host-side packing of a coupling stack for the Triton kernels (pure PyTorch, no Triton import).

Layout (all contiguous, widths zero-padded to powers of two >= 16 with ``padded_width``):
pw1 (3, HP), pb1 (HP,), pw2 (P, HP), pb2 (P,); per layer and head (s = 0, t = 1):
w1 (L, 2, H, P) the projection columns of the first layer, w2 (L, 2, H, H), b2 (L, 2, H),
w3 (L, 2, 16, H) and b3 (L, 2, 16) (3 outputs padded to 16), mask (L, 4); for the hoisted bias
wc (L*2*H, C) and b1 (L*2*H,) so that ``cond @ wc^T + b1`` gives every layer's bias at once.
Zero padding is exact: padded units have zero weights and biases, so relu(0) = 0 adds nothing.
"""

from __future__ import annotations

import weakref

import torch

from .._triton_utils import padded_width
from .weights import Affine, CouplingWeights

OUT_PAD = 16  # the 3-wide s/t outputs padded to one tensor-core tile
_PACKED: dict = {}
_PACKED_MAX = 4


def _pack_weights(weights: CouplingWeights, dtype: torch.dtype) -> dict:
    L, C = len(weights.layers), weights.cond_dims
    Hp0, P0, H0 = weights.proj_w1.shape[0], weights.proj_w2.shape[0], weights.hidden
    HP, P, H = padded_width(Hp0), padded_width(P0), padded_width(H0)
    dev = weights.proj_w1.device
    f32, low = {"dtype": torch.float32, "device": dev}, {"dtype": dtype, "device": dev}
    pk = {"pw1": torch.zeros(3, HP, **f32), "pb1": torch.zeros(HP, **f32), "pw2": torch.zeros(P, HP, **low),
          "pb2": torch.zeros(P, **f32), "w1": torch.zeros(L, 2, H, P, **low),
          "w2": torch.zeros(L, 2, H, H, **low), "b2": torch.zeros(L, 2, H, **f32),
          "w3": torch.zeros(L, 2, OUT_PAD, H, **low), "b3": torch.zeros(L, 2, OUT_PAD, **f32),
          "mask": torch.zeros(L, 4, **f32), "wc": torch.zeros(L, 2, H, C, **f32),
          "b1": torch.zeros(L, 2, H, **f32), "L": L, "H": H, "P": P, "HP": HP}
    pk["pw1"][:, :Hp0] = weights.proj_w1.t()
    pk["pb1"][:Hp0] = weights.proj_b1
    pk["pw2"][:P0, :Hp0] = weights.proj_w2
    pk["pb2"][:P0] = weights.proj_b2
    for i, lw in enumerate(weights.layers):
        heads = ((lw.s_w1, lw.s_b1, lw.s_w2, lw.s_b2, lw.s_w3, lw.s_b3),
                 (lw.t_w1, lw.t_b1, lw.t_w2, lw.t_b2, lw.t_w3, lw.t_b3))
        for j, (wa, ba, wb, bb, wc, bc) in enumerate(heads):
            pk["wc"][i, j, :H0] = wa[:, :C]
            pk["b1"][i, j, :H0] = ba
            pk["w1"][i, j, :H0, :P0] = wa[:, C:]
            pk["w2"][i, j, :H0, :H0] = wb
            pk["b2"][i, j, :H0] = bb
            pk["w3"][i, j, :3, :H0] = wc
            pk["b3"][i, j, :3] = bc
        pk["mask"][i, :3] = lw.mask
    pk["wc"] = pk["wc"].reshape(L * 2 * H, C)
    pk["b1"] = pk["b1"].reshape(L * 2 * H)
    return pk


def pack_weights(weights: CouplingWeights, dtype: torch.dtype) -> dict:
    """The kernel layout of ``weights`` with dot operands in ``dtype`` (biases and masks fp32).

    Cached on the identity (kept as weak references, so a new tensor at a recycled address or id
    never hits), layout and version counter of every weight tensor's base: an optimizer step or
    any in-place update bumps the version. So a forward pass packs once, not once per op call.
    Inference-mode tensors have no version counter and are packed on every call.
    """
    tensors = [*weights[:4], *(t for lw in weights.layers for t in lw)]
    bases = [t if t._base is None else t._base for t in tensors]
    try:
        key = (dtype, tuple((id(b), t.data_ptr(), t._version, tuple(t.shape), t.stride())
                            for b, t in zip(bases, tensors)))
    except RuntimeError:  # inference tensors
        with torch.no_grad():
            return _pack_weights(weights, dtype)
    entry = _PACKED.get(key)
    if entry is not None and all(ref() is b for ref, b in zip(entry[0], bases)):
        return entry[1]
    with torch.no_grad():
        packed = _pack_weights(weights, dtype)
    _PACKED.pop(key, None)
    if len(_PACKED) >= _PACKED_MAX:
        _PACKED.pop(next(iter(_PACKED)))
    _PACKED[key] = ([weakref.ref(b) for b in bases], packed)
    return packed


def pack_biases(cond: torch.Tensor, packed: dict) -> torch.Tensor:
    """Hoisted first-layer biases W1_C C_m + b1 of every layer in one product: (B*M, L*2*H) fp32."""
    with torch.no_grad():
        return torch.addmm(packed["b1"], cond.detach().reshape(-1, cond.shape[-1]).float(), packed["wc"].t())


def pack_affine(affine: Affine) -> tuple[torch.Tensor, ...]:
    """(B*M, 3) scale, (B*M, 9) rotation and (B*M, 3) translation as contiguous fp32."""
    return tuple(t.detach().float().reshape(-1, k).contiguous()
                 for t, k in ((affine.scale, 3), (affine.rotation, 9), (affine.translation, 3)))
