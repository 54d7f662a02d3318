"""One optimiser step of the Neural Parts model (five losses, the normal loss's second-order pass,
backward, clipping, Adam): the authors' formulation (authors_step.py) vs our objective with the
model's ``kernel_backend`` = "reference" or "triton". "authors-compile" / "reference-compile" (GPU
only) torch.compile the coupling maps of every pass but the normal term's: torch.compile has no
double backward, so whole-step compilation fails (authors': "torch.compile with aot_autograd does not
currently support double backward"), and the second-order pass stays eager.

Sizes: "tiny" (latent codes, narrow widths; CPU), "cpu-dfaust-B1" (paper widths, B=1, latent codes;
CPU machines with timing on) and the D-FAUST training configuration (ResNet-18 on 224x224 images,
M=6, F=256, hidden 256, projection 128, 5,000 volume / 1,500 surface / 200 sphere points, B=4; GPU
only). Each provider's loss is compared with the reference's before timing (same weights, batch and
sphere draws).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from authors_step import authors_total_loss
from np_bench import DEVICE, GPU, compiled, matmul_precision, no_compile_on_cpu, size, triton_ok

from neural_parts.models import NeuralParts
from neural_parts.config import LossConfig
from neural_parts.objective import compute_losses
from npkernels.coupling import naive
from npkernels.coupling import reference as coupling_reference
from npkernels.implicit import reference as implicit_reference

SIZES = [
    size("tiny", B=2, M=2, F=12, H=32, P=16, N=64, Ns=32, S=16, encoder="latent"),
    size("cpu-dfaust-B1", cpu_timing=True, B=1, M=6, F=256, H=256, P=128, N=5000, Ns=1500, S=200, encoder="latent"),
    size("dfaust-train", gpu=True, B=4, M=6, F=256, H=256, P=128, N=5000, Ns=1500, S=200, encoder="resnet18"),
]
PROVIDERS = [pytest.param("authors", id="authors"),
             pytest.param("authors-compile", id="authors-compile", marks=no_compile_on_cpu),
             pytest.param("reference", id="reference"),
             pytest.param("reference-compile", id="reference-compile", marks=no_compile_on_cpu),
             pytest.param("triton", id="triton", marks=triton_ok)]


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


@contextlib.contextmanager
def _compiled_reference():
    """The reference's sphere -> world map and per-primitive implicit (first-order and no-grad passes)
    replaced by their torch.compile; the owner-primitive inverse of the normal term stays eager."""
    saved = coupling_reference.coupling_forward, implicit_reference.primitive_implicit
    coupling_reference.coupling_forward, implicit_reference.primitive_implicit = map(compiled, saved)
    try:
        yield
    finally:
        coupling_reference.coupling_forward, implicit_reference.primitive_implicit = saved


def _total(provider, model, batch, inputs, cfg, gen):
    if provider.startswith("authors"):
        maps = None
        if provider == "authors-compile":
            maps = (compiled(naive.coupling_inverse), compiled(naive.coupling_forward))
        return authors_total_loss(model, inputs, batch, cfg, gen, maps=maps)
    model.kernel_backend = "triton" if provider == "triton" else "reference"
    with _compiled_reference() if provider == "reference-compile" else contextlib.nullcontext():
        return compute_losses(model(inputs), batch, cfg, gen)["total"]


def _step(provider, model, optimizer, batch, inputs, cfg, seed=2):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    total = _total(provider, model, batch, inputs, cfg, gen)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return total.detach()


@pytest.mark.parametrize("dims", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(bench, provider, dims):
    with matmul_precision("high"):
        model, batch, inputs = _setup(dims)
        # the authors' union test includes each point's own primitive: compare like with like
        cfg = LossConfig(n_points_on_sphere=dims["S"], test_own_primitive=True)
        gen = torch.Generator(device=DEVICE)
        totals = {}
        for name in ("reference", provider):
            with torch.no_grad():
                totals[name] = _total(name, model, batch, inputs, cfg, gen.manual_seed(3))
        # authors vs reference differ by round-off flips of the own-primitive union test (authors' Q1)
        tol = 5e-2 if GPU or provider.startswith("authors") else 1e-3
        torch.testing.assert_close(totals[provider], totals["reference"], rtol=tol, atol=tol)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        bench(
            lambda: _step(provider, model, optimizer, batch, inputs, cfg),
            op="train_step",
            provider=provider,
            mode="step",
            size=dims["name"],
        )
