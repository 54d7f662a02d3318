"""Union implicit G(x) = min_m (||phi^-1(x; C_m)|| - r), by provider.

Modes: "G" (value and argmin, no autograd: IoU, mesh extraction, dense queries), "G+g" (also the
per-primitive (B, N, M) values, no autograd: the training volume pass) and "fwd+bwd" (gradient of G
w.r.t. every input and weight). Without autograd the eager/compiled PyTorch providers run in chunks
of 65,536 (point, primitive) rows so the dense size fits in memory; the kernel takes one launch.
"""

from __future__ import annotations

import pytest
import torch
from np_bench import (
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

from npkernels.coupling import naive
from npkernels.implicit import implicit_union, reference

RADIUS = 0.25
CHUNK_ROWS = 1 << 16
SIZES = [
    size("tiny", B=1, N=40, M=3, **NARROW),
    size("cpu-dfaust-B1", cpu_timing=True, B=1, N=5000, M=6, **PAPER),
    size("dfaust-train", gpu=True, B=4, N=5000, M=6, **PAPER),
    size("dense-1Mx10", gpu=True, B=1, N=1_000_000, M=10, **PAPER),
]


def _authors_g(x, cond, w, affine):
    return torch.linalg.vector_norm(naive.coupling_inverse(x, cond, w, affine), dim=-1) - RADIUS


def _union(provider, x, cond, w, affine, per_primitive):
    """(value, argmin, g or None) for one provider."""
    if provider == "triton":
        return tuple(
            implicit_union(x, cond, w, affine, radius=RADIUS, per_primitive=per_primitive, backend="triton")
        )
    if provider == "reference" and not torch.is_grad_enabled():
        return tuple(reference.implicit_union(x, cond, w, affine, radius=RADIUS, per_primitive=per_primitive))
    fn = _authors_g if provider.startswith("authors") else reference.primitive_implicit
    if provider.endswith("compile"):
        fn = compiled(fn)
    args = (cond, w, affine) if provider.startswith("authors") else (cond, w, affine, RADIUS)
    step = x.shape[1] if torch.is_grad_enabled() else max(1, CHUNK_ROWS // cond.shape[1])
    g = torch.cat([fn(x[:, i : i + step], *args) for i in range(0, x.shape[1], step)], 1)
    value, argmin = g.min(-1)
    return value, argmin, (g if per_primitive else None)


@pytest.mark.parametrize("dims", SIZES)
@pytest.mark.parametrize("mode", ["G", "G+g", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_implicit_union(bench, provider, mode, dims):
    name = dims["name"]
    if mode == "fwd+bwd" and name.startswith("dense"):
        pytest.skip("the dense size is an inference workload (no gradients)")
    per_primitive = mode == "G+g"
    with matmul_precision("high"):
        x, cond, w, affine = make_problem(**{k: v for k, v in dims.items() if k != "name"})
        leaves = differentiable(x, cond, w, affine)
        with torch.no_grad():
            got = _union(provider, x, cond, w, affine, per_primitive)
            ref = reference.implicit_union(x, cond, w, affine, radius=RADIUS, per_primitive=per_primitive)
        check(provider, got[0], ref.value)
        if per_primitive:
            check(provider, got[2], ref.per_primitive)

        def target():
            if mode == "fwd+bwd":
                return torch.autograd.grad(_union(provider, x, cond, w, affine, False)[0].sum(), leaves)
            with torch.no_grad():
                return _union(provider, x, cond, w, affine, per_primitive)

        bench(target, op="implicit_union", provider=provider, mode=mode, size=name)
