"""Coupling stack: world -> sphere (inverse) and sphere -> world (forward), by provider.

Modes: "fwd" (no autograd), "fwd+bwd" (gradients of every input and weight), and for the inverse
"normal-2nd": the normal-loss pattern on owner pairs (d g / d x with create_graph, then the
gradient of a loss of it w.r.t. every weight). torch.compile does not support double backward,
so the compile providers skip "normal-2nd".
"""

from __future__ import annotations

import pytest
import torch
from np_bench import (
    DEVICE,
    NARROW,
    PAPER,
    PROVIDERS,
    check,
    compiled,
    differentiable,
    make_problem,
    matmul_precision,
    size,
)

from npkernels.coupling import coupling_forward, coupling_inverse, naive, reference

SIZES = [size("tiny", B=1, N=48, M=2, **NARROW), size("cpu-dfaust-B1", cpu_timing=True, B=1, N=5000, M=6, **PAPER),
         size("dfaust-train", gpu=True, B=4, N=5000, M=6, **PAPER)]


def _inverse(provider):
    if provider == "triton":
        return lambda x, c, w, a: coupling_inverse(x, c, w, a, backend="triton")
    fn = naive.coupling_inverse if provider.startswith("authors") else reference.coupling_inverse
    return compiled(fn) if provider.endswith("compile") else fn


def _forward(provider):
    if provider == "triton":
        return lambda z, c, w, a: coupling_forward(z, c, w, a, backend="triton")
    fn = naive.coupling_forward if provider.startswith("authors") else reference.coupling_forward
    return compiled(fn) if provider.endswith("compile") else fn


def _owner_value(provider, x, cond, w, affine, owner):
    """g of each point in its owner primitive, (B, N)."""
    if provider == "triton":
        z = coupling_inverse(x, cond, w, affine, owner=owner, backend="triton")
    elif provider == "reference":
        z = reference.coupling_inverse(x, cond, w, affine, owner=owner)
    else:  # the authors evaluate every primitive, then pick
        z = naive.coupling_inverse(x, cond, w, affine)
        z = torch.gather(z, 2, owner[:, :, None, None].expand(-1, -1, 1, 3))[:, :, 0]
    return torch.linalg.vector_norm(z, dim=-1)


@pytest.mark.parametrize("dims", SIZES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd", "normal-2nd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_coupling_inverse(bench, provider, mode, dims):
    if mode == "normal-2nd" and provider.endswith("compile"):
        pytest.skip("torch.compile does not support double backward")
    name = dims["name"]
    with matmul_precision("high"):
        x, cond, w, affine = make_problem(**{k: v for k, v in dims.items() if k != "name"})
        leaves = differentiable(x, cond, w, affine)
        if mode == "normal-2nd":
            owner = torch.randint(0, cond.shape[1], x.shape[:2], device=DEVICE)
            check(
                provider,
                _owner_value(provider, x, cond, w, affine, owner),
                _owner_value("reference", x, cond, w, affine, owner),
            )

            def target():
                (dx,) = torch.autograd.grad(
                    _owner_value(provider, x, cond, w, affine, owner).sum(), x, create_graph=True
                )
                return torch.autograd.grad(dx.square().sum(), leaves[1:], allow_unused=True)
        else:
            fn = _inverse(provider)
            check(provider, fn(x, cond, w, affine), reference.coupling_inverse(x, cond, w, affine))

            def target():
                if mode == "fwd":
                    with torch.no_grad():
                        return fn(x, cond, w, affine)
                return torch.autograd.grad(fn(x, cond, w, affine).square().sum(), leaves)

        bench(target, op="coupling_inverse", provider=provider, mode=mode, size=name)


@pytest.mark.parametrize(
    "dims", [size("tiny", B=1, N=24, M=2, **NARROW), size("dfaust-train", gpu=True, B=4, N=400, M=6, **PAPER)]
)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_coupling_forward(bench, provider, mode, dims):
    """Sphere points: 2 draws x 200 per primitive in the D-FAUST configuration."""
    name = dims["name"]
    with matmul_precision("high"):
        _, cond, w, affine = make_problem(**{k: v for k, v in dims.items() if k != "name"})
        B, N, M = dims["B"], dims["N"], dims["M"]
        z = (
            0.25 * torch.nn.functional.normalize(torch.randn(B, N, M, 3, device=DEVICE), dim=-1)
        ).requires_grad_()
        leaves = differentiable(z, cond, w, affine)
        fn = _forward(provider)
        check(provider, fn(z, cond, w, affine), reference.coupling_forward(z, cond, w, affine))

        def target():
            if mode == "fwd":
                with torch.no_grad():
                    return fn(z, cond, w, affine)
            return torch.autograd.grad(fn(z, cond, w, affine).square().sum(), leaves)

        bench(target, op="coupling_forward", provider=provider, mode=mode, size=name)
