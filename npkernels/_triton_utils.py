"""Host helpers shared by the Triton backends: dot precision, tile choice, the autograd wrapper.

Imported only by the Triton modules ``npkernels.<family>._triton*`` (i.e. only when Triton is usable).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._dispatch import interpreter_enabled


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

    def backward(self) -> DotConfig:
        """Tiles of the coupling backward kernel, which holds ~3x the live [BLOCK_R, H] tiles of the
        forward: sm_90 AOT compiles at production widths spill ~7.4 KB/thread of registers at 64 rows
        (wgmma), ~2.4 KB at 32 rows / 8 warps (mma.sync, 90 KB of shared memory), ~0.8 KB at 16 rows /
        4 warps but twice the weight traffic; 32 rows chosen without a GPU, not tuned by measurement."""
        return self._replace(block_r=32)


def on_device(t: torch.Tensor):
    """The CUDA device context of ``t`` (nothing on CPU): Triton launches on the current device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


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


class _KernelFunction(torch.autograd.Function):
    """Kernel forward; first-order backward by the op's fused backward kernel; under ``create_graph``
    (the normal-consistency loss) one differentiable recomputation through the reference instead.

    ``impl`` provides ``run_kernel(args, static, for_backward) -> (outs, saved)`` (``saved``: extra
    tensors its backward needs, written only when ``for_backward``), ``fused_backward(args, static,
    kept, saved, grads) -> [(leaf, grad), ...]`` (args: detached leaves that require grad where a
    gradient is wanted; grads: one per output, None where none arrived), ``run_reference(args,
    static, kept) -> outs`` and ``keep``: the output indices both backward paths need again (e.g. the
    argmin).
    """

    @staticmethod
    def forward(ctx, impl, spec, static, for_backward, *leaves):
        args = tree_unflatten(list(leaves), spec)
        outs, saved = impl.run_kernel(args, static, for_backward)
        kept = [outs[i] for i in impl.keep]
        ctx.impl, ctx.spec, ctx.static, ctx.n_leaves, ctx.n_kept = impl, spec, static, len(leaves), len(kept)
        ctx.save_for_backward(*leaves, *kept, *saved)
        ctx.mark_non_differentiable(*(o for o in outs if not o.is_floating_point()))
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        n, k = ctx.n_leaves, ctx.n_kept
        leaves, kept, extra = list(saved[:n]), list(saved[n : n + k]), list(saved[n + k :])
        needs = ctx.needs_input_grad[4:]
        want = [i for i, need in enumerate(needs) if need]
        pairs = [i for i, g in enumerate(grads) if g is not None]
        nothing = (None, None, None, None)
        out_grads: list[torch.Tensor | None] = [None] * len(leaves)
        if not want or not pairs:
            return (*nothing, *out_grads)
        impl, static = ctx.impl, ctx.static
        if torch.is_grad_enabled():  # create_graph: the gradient must itself be differentiable
            with torch.enable_grad():
                outs = impl.run_reference(tree_unflatten(leaves, ctx.spec), static, kept)
                res = torch.autograd.grad(
                    [outs[i] for i in pairs],
                    [leaves[i] for i in want],
                    [grads[i] for i in pairs],
                    allow_unused=True,
                    create_graph=True,
                )
            for i, g in zip(want, res):
                out_grads[i] = g
            return (*nothing, *out_grads)
        shared = [leaf.detach().requires_grad_(needs[i]) for i, leaf in enumerate(leaves)]
        total: dict[int, torch.Tensor] = {}
        for leaf, g in impl.fused_backward(tree_unflatten(shared, ctx.spec), static, kept, extra, grads):
            total[id(leaf)] = g if id(leaf) not in total else total[id(leaf)] + g
        return (*nothing, *(total.get(id(leaf)) if needs[i] else None for i, leaf in enumerate(shared)))


class KernelOp:
    """Base of the per-op adapters; ``run(*args, *static)`` applies the kernel with its backward."""

    keep: tuple[int, ...] = ()

    @classmethod
    def run(cls, points, cond, weights, affine, *static):
        leaves, spec = tree_flatten((points, cond, weights, affine))
        for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
        return _KernelFunction.apply(cls, spec, static, for_backward, *leaves)
