"""Shared pieces of the npkernels benchmarks: sizes, providers, random problems, the correctness gate.

Providers, side by side: "authors" (the paper formulation, npkernels.coupling.naive, eager),
"authors-compile" and "reference-compile" (torch.compile; GPU only), "reference" (our rearranged
PyTorch reference), "triton" (our kernels). Sizes: "tiny" (narrow widths, runs on CPU), the
D-FAUST training configuration (B=4, M=6, 5,000 volume / 1,500 surface / 200 sphere points,
widths 512/256/256/128) and dense G(x) (1M points x 10 primitives), both GPU only.
Every provider's output is checked against the reference before it is timed.
"""

from __future__ import annotations

import functools

import pytest
import torch

from npkernels._dispatch import interpreter_enabled, triton_status
from npkernels._selfcheck import matmul_precision  # noqa: F401  (benchmarks run as training does: "high")
from npkernels.coupling import Affine, CouplingWeights, LayerWeights
from npkernels.coupling.affine import quaternion_to_matrix

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
NARROW = {"C": 24, "H": 32, "HP": 16, "P": 16}
PAPER = {"C": 512, "H": 256, "HP": 256, "P": 128}
gpu_only = pytest.mark.skipif(not GPU, reason="GPU size or provider: runs only with CUDA")
triton_ok = pytest.mark.skipif(
    not (triton_status()[0] and (GPU or interpreter_enabled())),
    reason="Triton cannot run here (needs CUDA or TRITON_INTERPRET=1)",
)
no_compile_on_cpu = pytest.mark.skipif(
    not GPU, reason="torch.compile providers run on GPU only (decisions 4)"
)

PROVIDERS = [
    pytest.param("authors", id="authors"),
    pytest.param("authors-compile", id="authors-compile", marks=no_compile_on_cpu),
    pytest.param("reference", id="reference"),
    pytest.param("reference-compile", id="reference-compile", marks=no_compile_on_cpu),
    pytest.param("triton", id="triton", marks=triton_ok),
]


def size(name: str, gpu: bool = False, cpu_timing: bool = False, **dims):
    """A size case. ``gpu``: CUDA only. ``cpu_timing``: a paper-width size measured on CPU machines, run
    only when benchmarks are timed (skipped under --benchmark-disable and on GPU machines)."""
    marks = [gpu_only] if gpu else []
    if cpu_timing:
        marks.append(pytest.mark.cpu_timing)
    return pytest.param(dict(name=name, **dims), id=name, marks=marks)


def make_problem(B: int, N: int, M: int, C: int, H: int, HP: int, P: int, L: int = 4, seed: int = 0):
    """Random (x (B, N, 3), cond (B, M, C), weights, affine) on DEVICE, leaves requiring grad.

    Linear layers use PyTorch's default init range; masks transform x, y, z, x.
    """
    gen = torch.Generator().manual_seed(seed)

    def leaf(t):
        return t.to(DEVICE).requires_grad_()

    def lin(o, i):
        bound = 1 / i**0.5
        return (
            leaf((torch.rand(o, i, generator=gen) * 2 - 1) * bound),
            leaf((torch.rand(o, generator=gen) * 2 - 1) * bound),
        )

    layers = []
    for i in range(L):
        mask = torch.ones(3, device=DEVICE)
        mask[i % 3] = 0
        layers.append(
            LayerWeights(mask, *lin(H, C + P), *lin(H, H), *lin(3, H), *lin(H, C + P), *lin(H, H), *lin(3, H))
        )
    weights = CouplingWeights(*lin(HP, 3), *lin(P, HP), tuple(layers))
    x = leaf(torch.rand(B, N, 3, generator=gen) - 0.5)
    cond = leaf(torch.randn(B, M, C, generator=gen))
    affine = Affine(
        leaf(torch.rand(B, M, 3, generator=gen) + 1.0),
        leaf(quaternion_to_matrix(torch.randn(B, M, 4, generator=gen))),
        leaf(0.1 * torch.randn(B, M, 3, generator=gen)),
    )
    return x, cond, weights, affine


def differentiable(x, cond, weights: CouplingWeights, affine: Affine) -> list[torch.Tensor]:
    return [
        t
        for t in (x, cond, *affine, *weights[:4], *(v for lw in weights.layers for v in lw))
        if t.requires_grad
    ]


@functools.cache
def compiled(fn):
    return torch.compile(fn)


def check(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    """Correctness gate before timing: TF32 on GPU -> 1e-2 of the reference's scale; CPU 1e-4."""
    tol = 1e-2 if GPU and torch.get_float32_matmul_precision() != "highest" else 1e-4
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(
        out.detach().float(),
        ref.detach().float(),
        rtol=tol,
        atol=tol * scale,
        msg=lambda m: f"{name} differs from the reference before timing: {m}",
    )
