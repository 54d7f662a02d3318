"""Nearest neighbours (K=1, both directions) and Chamfer, by provider.

Providers: "reference" (CPU: brute force / scipy KD-tree; CUDA: chunked brute force), "triton" (one
launch for both directions), "pytorch3d" (``backend="pytorch3d"``: knn_points twice, when importable;
CUDA only). Modes:
"knn" (indices and squared distances) and "chamfer+bwd" (both directional means of Euclidean
distances, masked as in training, and their gradients). Sizes: "tiny", the training size
1,200 x 1,500 (runs on CPU too) and 100k x 100k (GPU only).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from np_bench import DEVICE, GPU, size, triton_ok

from npkernels.knn import chamfer, knn, reference

SIZES = [
    size("tiny", B=1, N=200, P=150),
    size("train-1.2kx1.5k", B=1, N=1200, P=1500),
    size("cpu-100kx100k", cpu_timing=True, B=1, N=100_000, P=100_000),
    size("100kx100k", gpu=True, B=1, N=100_000, P=100_000),
]
PROVIDERS = [
    pytest.param("reference", id="reference"),
    pytest.param("triton", id="triton", marks=triton_ok),
    pytest.param(
        "pytorch3d",
        id="pytorch3d",
        marks=pytest.mark.skipif(
            not (GPU and importlib.util.find_spec("pytorch3d")), reason="PyTorch3D (optional) with CUDA"
        ),
    ),
]


def _knn(provider, x, y, x_mask=None, y_mask=None):
    return tuple(knn(x, y, x_mask=x_mask, y_mask=y_mask, backend=provider))


@pytest.mark.parametrize("dims", SIZES)
@pytest.mark.parametrize("mode", ["knn", "chamfer+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_knn(bench, provider, mode, dims):
    name, B, N, P = dims["name"], dims["B"], dims["N"], dims["P"]
    if provider == "triton" and not GPU and name != "tiny":
        pytest.skip("the Triton interpreter runs the tiny size only")
    if provider == "pytorch3d" and mode != "knn":
        pytest.skip("PyTorch3D has no masked both-direction Chamfer with this convention")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(B, N, 3, generator=gen).to(DEVICE).requires_grad_()
    y = torch.rand(B, P, 3, generator=gen).to(DEVICE).requires_grad_()
    y_mask = (torch.rand(B, P, generator=gen) > 0.2).to(DEVICE)
    with torch.no_grad():
        got, ref = _knn(provider, x, y), reference.knn(x, y)
    torch.testing.assert_close(got[0], ref.dist_xy, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2], ref.dist_yx, rtol=1e-5, atol=1e-7)

    def target():
        if mode == "knn":
            with torch.no_grad():
                return _knn(provider, x, y)
        a, b = chamfer(x, y, y_mask=y_mask, backend="triton" if provider == "triton" else "reference")
        return torch.autograd.grad(a + b, (x, y))

    bench(target, op="knn", provider=provider, mode=mode, size=name)
