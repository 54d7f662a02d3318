"""One optimiser step of the Neural Parts model (five losses, the normal loss's second-order pass,
backward, clipping, Adam) with the model's ``kernel_backend`` = "reference" vs "triton".

Sizes: "tiny" (latent codes, narrow widths; CPU) and the D-FAUST training configuration (ResNet-18 on
224x224 images, M=6, F=256, hidden 256, projection 128, 5,000 volume / 1,500 surface / 200 sphere
points, B=4; GPU only). The losses of both providers are compared before timing (same weights, batch
and sphere draws). The authors' formulation is measured op by op in bench_coupling / bench_implicit.
"""

from __future__ import annotations

import pytest
import torch
from np_bench import DEVICE, GPU, matmul_precision, size, triton_ok

from neural_parts.models import NeuralParts
from neural_parts.objective import LossConfig, compute_losses

SIZES = [
    size("tiny", B=2, M=2, F=12, H=32, P=16, N=64, Ns=32, S=16, encoder="latent"),
    size("cpu-dfaust-B1", cpu_timing=True, B=1, M=6, F=256, H=256, P=128, N=5000, Ns=1500, S=200, encoder="latent"),
    size("dfaust-train", gpu=True, B=4, M=6, F=256, H=256, P=128, N=5000, Ns=1500, S=200, encoder="resnet18"),
]
PROVIDERS = [pytest.param("reference", id="reference"), pytest.param("triton", id="triton", marks=triton_ok)]


def _setup(d):
    torch.manual_seed(0)
    model = NeuralParts(
        n_primitives=d["M"],
        feature_size=d["F"],
        hidden_size=d["H"],
        proj_dims=d["P"],
        encoder=d["encoder"],
        n_shapes=d["B"] if d["encoder"] == "latent" else None,
    ).to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    B, N, Ns = d["B"], d["N"], d["Ns"]
    batch = {
        "volume_points": torch.rand(B, N, 3, generator=gen) - 0.5,
        "volume_labels": (torch.rand(B, N, generator=gen) > 0.7).float(),
        "volume_weights": torch.rand(B, N, generator=gen) + 0.5,
        "surface_points": torch.rand(B, Ns, 3, generator=gen) - 0.5,
        "surface_normals": torch.nn.functional.normalize(torch.randn(B, Ns, 3, generator=gen), dim=-1),
    }
    batch = {k: v.to(DEVICE) for k, v in batch.items()}
    inputs = (torch.arange(B) if d["encoder"] == "latent" else torch.randn(B, 3, 224, 224, generator=gen)).to(
        DEVICE
    )
    return model, batch, inputs


def _step(model, optimizer, batch, inputs, cfg, seed=2):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    out = compute_losses(model(inputs), batch, cfg, gen)
    optimizer.zero_grad(set_to_none=True)
    out["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return out["total"].detach()


@pytest.mark.parametrize("dims", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(bench, provider, dims):
    with matmul_precision("high"):
        model, batch, inputs = _setup(dims)
        cfg = LossConfig(n_points_on_sphere=dims["S"])
        gen = torch.Generator(device=DEVICE)
        totals = {}
        for backend in ("reference", provider):
            model.kernel_backend = backend
            with torch.no_grad():
                totals[backend] = compute_losses(model(inputs), batch, cfg, gen.manual_seed(3))["total"]
        tol = 5e-2 if GPU else 1e-3
        torch.testing.assert_close(totals[provider], totals["reference"], rtol=tol, atol=tol)
        model.kernel_backend = provider
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        bench(
            lambda: _step(model, optimizer, batch, inputs, cfg),
            op="train_step",
            provider=provider,
            mode="step",
            size=dims["name"],
        )
