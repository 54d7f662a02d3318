"""Host helpers shared by the Triton backends: dot precision, tile choice, backward by recomputation.

Imported only by ``npkernels.<family>._triton`` (i.e. only when Triton is usable).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._dispatch import interpreter_enabled

BACKWARD_CHUNK_ROWS = 1 << 16  # (point, primitive) rows per chunk of a first-order backward


class DotConfig(NamedTuple):
    """How a kernel multiplies: tl.dot ``input_precision``, operand dtype, tiles, warps, stages.

    Defaults (BLOCK_R 64, BLOCK_K 32, 8 warps, 2 stages), chosen from sm_90 AOT compiles at production
    widths (H 256, P 128) without a GPU: 104 KiB of shared memory and ~0.7 KB/thread of register
    spills for fp32 operands (BLOCK_K 64: 208 KiB, 1.2 KB); not yet tuned by measurement.
    """

    precision: str
    operand_dtype: torch.dtype
    block_r: int = 64
    block_k: int = 32
    num_warps: int = 8
    num_stages: int = 2


def padded_width(n: int) -> int:
    """Smallest power of two >= max(n, 16): tl.arange needs powers of two, NVIDIA dots K, N >= 16."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())


def dot_config(dtype: torch.dtype) -> DotConfig:
    """Precision policy: fp32 follows torch.get_float32_matmul_precision() ("highest" -> IEEE fp32
    dots, otherwise TF32); 16-bit inputs use 16-bit operands (GPU only); accumulation is fp32."""
    if dtype == torch.float32:
        precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        return DotConfig(precision, torch.float32)
    if dtype in (torch.bfloat16, torch.float16):
        if interpreter_enabled():
            raise RuntimeError(
                f"npkernels: {dtype} kernels need a GPU (the Triton interpreter mis-computes bf16)"
            )
        return DotConfig("ieee", dtype)
    raise TypeError(f"npkernels Triton kernels take float32, bfloat16 or float16, got {dtype}")


class _ByReference(torch.autograd.Function):
    """Kernel forward, backward by recomputation through the differentiable reference.

    ``impl`` provides ``run_kernel(args, *static) -> tuple[Tensor]``, ``run_reference(args, static,
    kept, rows) -> tuple[Tensor]`` (rows: the slice of points to recompute) and ``keep``: the output
    indices the reference needs again (e.g. the argmin). The first leaf of ``args`` is the point
    tensor; its dim 1 is the point axis along which a first-order backward is chunked.
    """

    @staticmethod
    def forward(ctx, impl, spec, static, *leaves):
        args = tree_unflatten(list(leaves), spec)
        outs = impl.run_kernel(args, *static)
        kept = [outs[i] for i in impl.keep]
        ctx.impl, ctx.spec, ctx.static, ctx.n_leaves = impl, spec, static, len(leaves)
        ctx.save_for_backward(*leaves, *kept)
        ctx.mark_non_differentiable(*(o for o in outs if not o.is_floating_point()))
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        leaves, kept = list(saved[: ctx.n_leaves]), list(saved[ctx.n_leaves :])
        needs = ctx.needs_input_grad[3:]
        want = [i for i, need in enumerate(needs) if need]
        out_grads: list[torch.Tensor | None] = [None] * len(leaves)
        pairs = [i for i, g in enumerate(grads) if g is not None]
        if not want or not pairs:
            return (None, None, None, *out_grads)
        impl, static = ctx.impl, ctx.static
        if torch.is_grad_enabled():  # create_graph: one differentiable recomputation
            with torch.enable_grad():
                outs = impl.run_reference(tree_unflatten(leaves, ctx.spec), static, kept, slice(None))
                res = torch.autograd.grad(
                    [outs[i] for i in pairs],
                    [leaves[i] for i in want],
                    [grads[i] for i in pairs],
                    allow_unused=True,
                    create_graph=True,
                )
            for i, g in zip(want, res):
                out_grads[i] = g
            return (None, None, None, *out_grads)
        points = leaves[0]
        n = points.shape[1]
        per_row = leaves[1].shape[1]  # cond (B, M, C): at most M rows per point
        shared = [leaf.detach().requires_grad_(needs[i]) for i, leaf in enumerate(leaves)]
        step = max(1, BACKWARD_CHUNK_ROWS // max(1, points.shape[0] * per_row))
        if needs[0]:
            out_grads[0] = torch.zeros_like(points)
        for lo in range(0, n, step):
            rows = slice(lo, min(n, lo + step))
            chunk = list(shared)
            chunk[0] = points[:, rows].detach().requires_grad_(needs[0])
            with torch.enable_grad():
                outs = impl.run_reference(
                    tree_unflatten(chunk, ctx.spec), static, [k[:, rows] for k in kept], rows
                )
                res = torch.autograd.grad(
                    [outs[i] for i in pairs],
                    [chunk[i] for i in want],
                    [grads[i][:, rows] for i in pairs],
                    allow_unused=True,
                )
            for i, g in zip(want, res):
                if g is None:
                    continue
                if i == 0:
                    out_grads[0][:, rows] = g
                else:
                    out_grads[i] = g if out_grads[i] is None else out_grads[i] + g
        return (None, None, None, *out_grads)


class BackwardByReference:
    """Base of the per-op adapters; ``run(*args, *static)`` applies the kernel with this backward."""

    keep: tuple[int, ...] = ()

    @classmethod
    def run(cls, points, cond, weights, affine, *static):
        leaves, spec = tree_flatten((points, cond, weights, affine))
        return _ByReference.apply(cls, spec, static, *leaves)
