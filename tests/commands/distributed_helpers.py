"""Pieces of the distributed tests (a uniquely named module, importable by spawned processes): a tiny model,
deterministic mini-batches, the 2-rank gloo worker and torchrun helpers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

# The default preset (ResNet-18 with BatchNorm in training mode, every loss term) at a tiny size.
OVERRIDES = ["network.n_primitives=2", "feature_extractor.feature_size=8", "invertible_network.hidden_size=16",
             "projection_layer.proj_dims=8", "loss.n_points_on_sphere=16", "data.image_size=32"]
WORLD, AGGREGATE = 2, 2
# (clip_grad_norm, SGD lr): a clip never reached (gradient norms here are ~1e6), and one active in every update
CASES = {"sum": (1e9, 1e-7), "clipped": (0.05, 1.0)}
STEPS = 2


def config():
    from neural_parts.config import load_config

    return load_config("default", OVERRIDES)


def make_model():
    from neural_parts.models import NeuralParts

    torch.manual_seed(0)
    return NeuralParts.from_config(config())


def batch(step: int, rank: int, k: int) -> dict:
    """Mini-batch k of rank ``rank`` in update ``step``: 2 random shapes (images, volume and surface samples)."""
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + k)
    return {"image": torch.randn(2, 3, 32, 32, generator=g), "volume_points": torch.rand(2, 128, 3, generator=g) - 0.5,
            "volume_labels": (torch.rand(2, 128, generator=g) > 0.5).float(),
            "volume_weights": torch.rand(2, 128, generator=g) + 0.5,
            "surface_points": torch.rand(2, 32, 3, generator=g) - 0.5,
            "surface_normals": torch.nn.functional.normalize(torch.randn(2, 32, 3, generator=g), dim=-1)}


def sphere_seed(step: int, rank: int) -> int:
    """The global RNG seed rank ``rank`` draws its sphere samples from in update ``step``."""
    return 7 + 100 * step + rank


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def worker(rank: int, init_file: str, dataset: str, out: str) -> None:
    """Rank ``rank`` of 2 (gloo): Trainer updates for each of ``CASES``, one update without no_sync, and the
    sharded validation; rank 0 saves what it saw to ``out``."""
    import torch.distributed as dist

    from neural_parts import distributed, engine
    from neural_parts.data import NeuralPartsDataset
    from neural_parts.objective import compute_losses

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    ranks = distributed.Ranks(rank, WORLD, rank, "gloo", torch.device("cpu"))
    cfg, results = config(), {"identical_across_ranks": []}
    for name, (clip, lr) in CASES.items():
        model = make_model()
        trainer = engine.Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), cfg.loss, clip=clip, ranks=ranks)
        results[name] = []
        for step in range(STEPS):
            torch.manual_seed(sphere_seed(step, rank))
            results[name].append(trainer.step([batch(step, rank, k) for k in range(AGGREGATE)]))
            everyone = ranks.gather(flat(model))
            results["identical_across_ranks"].append(all(torch.equal(everyone[0], p) for p in everyone))
            results[f"{name}_params_{step}"] = everyone[0]

    model = make_model()  # the "clipped" case's first update, with an all-reduce after every backward
    ddp = distributed.wrap(model, ranks)
    clip, lr = CASES["clipped"]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(sphere_seed(0, rank))
    for k in range(AGGREGATE):
        b = batch(0, rank, k)
        (WORLD * compute_losses(ddp(b["image"]), b, cfg.loss)["total"]).backward()  # as engine.Trainer
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    optimizer.step()
    results["without_no_sync"] = flat(model)

    common = {"n_volume": 256, "n_surface": 64, "image_size": 32, "seed": 0}
    val = NeuralPartsDataset(Path(dataset) / "val.h5", **common)
    train = NeuralPartsDataset(Path(dataset) / "train.h5", **common)
    indices = list(range(len(val)))
    results["validate"] = engine.validate(make_model(), val, indices, torch.device("cpu"), batch_size=1, ranks=ranks)
    results["floor"] = engine.constant_shape_floor(engine.fit_constant_shape(train), val, indices, torch.device("cpu"), ranks=ranks)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def torchrun(*args, nproc: int = 2) -> list[str]:
    """The command line of ``torchrun --standalone --nproc-per-node nproc -m neural_parts.<args>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--monitor-interval", "0.5", "-m", *map(str, args)]


def run_torchrun(*args, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False)


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank among the children of ``parent`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
