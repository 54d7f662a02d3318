"""One optimiser update of the shipped training configs, through the trainer the `train` command uses.

Configs: ``default`` (the 10-minute CPU run; on CPU the step is shrunk to "tiny" widths under
``--benchmark-disable`` so CI stays fast, full size otherwise) and ``dfaust_6`` (the authors' D-FAUST
setting: ResNet-18 on 224x224, M=6, F=256, hidden 256, projection 128, 5,000 / 1,500 / 200 points,
batch 1 x aggregate 2; GPU only). Providers: the model's ``kernel_backend`` "reference" (PyTorch) vs
"triton" (fused kernels; GPU only). Inputs are random tensors of the config's sizes (no dataset).
"""
from __future__ import annotations

import pytest
import torch
from np_bench import DEVICE, GPU, matmul_precision

from neural_parts import engine
from neural_parts.models import NeuralParts
from neural_parts.config import load_config

TINY = ["feature_extractor.feature_size=16", "invertible_network.hidden_size=16", "projection_layer.proj_dims=8",
        "data.image_size=32", "data.n_points_in_mesh=64", "data.n_points_on_mesh=32", "loss.n_points_on_sphere=8",
        "network.n_primitives=2", "training.batch_size=2"]
gpu_only = pytest.mark.skipif(not GPU, reason="GPU size or provider: runs only with CUDA")
CONFIGS = [pytest.param("default", id="default"), pytest.param("dfaust_6", id="dfaust_6", marks=gpu_only)]
PROVIDERS = [pytest.param("reference", id="reference"), pytest.param("triton", id="triton", marks=gpu_only)]


def _batch(cfg: dict, gen: torch.Generator) -> dict:
    B, N, Ns, S = (cfg.training.batch_size, cfg.data.n_points_in_mesh, cfg.data.n_points_on_mesh,
                   cfg.data.image_size)
    batch = {"image": torch.randn(B, 3, S, S, generator=gen), "volume_points": torch.rand(B, N, 3, generator=gen) - 0.5,
             "volume_labels": (torch.rand(B, N, generator=gen) > 0.5).float(),
             "volume_weights": torch.rand(B, N, generator=gen) + 0.5,
             "surface_points": torch.rand(B, Ns, 3, generator=gen) - 0.5,
             "surface_normals": torch.nn.functional.normalize(torch.randn(B, Ns, 3, generator=gen), dim=-1)}
    return {k: v.to(DEVICE) for k, v in batch.items()}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step_config(bench, benchmark, provider, name):
    tiny = not GPU and benchmark.disabled
    cfg = load_config(name, ["feature_extractor.weights=none", *(TINY if tiny else [])])
    with matmul_precision("high" if cfg.runtime.tf32 else "highest"):
        torch.manual_seed(0)
        model = NeuralParts.from_config(cfg).to(DEVICE)
        model.kernel_backend = provider
        trainer = engine.Trainer(model, engine.make_optimizer(cfg, model), cfg.loss,
                                 cfg.training.clip_grad_norm)
        gen = torch.Generator().manual_seed(1)
        batches = [_batch(cfg, gen) for _ in range(cfg.training.aggregate)]
        before = [p.detach().clone() for p in model.parameters()]
        values = trainer.step(batches)  # warm-up, and the correctness gate: finite loss, parameters move
        assert torch.isfinite(torch.tensor(values["total"]))
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        bench(lambda: trainer.step(batches), op="train_step_config", provider=provider, mode="update",
              size=f"{name}{'-tiny' if tiny else ''}")
