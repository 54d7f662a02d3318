"""Training updates per second on CPU with 1 and 2 processes (gloo, DistributedDataParallel), side by side.

Every configuration runs in fresh spawned processes: the ``default`` preset's network (ResNet-18 with BatchNorm
in training mode, M=5, F=128, hidden 128, projection 64, 128x128 images, N=2048, N_s=512, S=100), random
in-memory mini-batches of 4 shapes per rank (no data loading), Adam, aggregate 1, ``engine.Trainer``; warm-up
updates, then timed ones (rank 0's wall clock between barriers). Configurations: 1 process x 1 thread,
2 processes x 1 thread (the same per-rank batch: a global batch of 8) and 1 process x 2 threads (the same
cores in one process); each is measured twice, interleaved, to expose drift in the machine's load. Reported:
updates/s and shapes/s, and the load average (``os.getloadavg``) before and after.

Timed with benchmarks on (``pytest benchmarks/bench_distributed.py --benchmark-only -s`` or
``python benchmarks/bench_distributed.py``); under ``--benchmark-disable`` a tiny network runs one update in
the 2-process configuration, the smoke test of the harness.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

FULL = {"overrides": [], "warmup": 2, "timed": 8, "repeats": 2,
        "configurations": [(1, 1), (2, 1), (1, 2)]}  # (processes, threads per process)
TINY = {"overrides": ["network.n_primitives=2", "feature_extractor.feature_size=8", "invertible_network.hidden_size=16",
                      "projection_layer.proj_dims=8", "loss.n_points_on_sphere=16", "data.image_size=32",
                      "data.n_points_in_mesh=128", "data.n_points_on_mesh=32"], "warmup": 0, "timed": 1, "repeats": 1,
        "configurations": [(2, 1)]}


def _batch(cfg, rank: int, step: int) -> dict:
    d, g = cfg.data, torch.Generator().manual_seed(1000 * rank + step)
    b, n, ns = cfg.training.batch_size, d.n_points_in_mesh, d.n_points_on_mesh
    return {"image": torch.randn(b, 3, d.image_size, d.image_size, generator=g),
            "volume_points": torch.rand(b, n, 3, generator=g) - 0.5,
            "volume_labels": (torch.rand(b, n, generator=g) > 0.5).float(),
            "volume_weights": torch.rand(b, n, generator=g) + 0.5,
            "surface_points": torch.rand(b, ns, 3, generator=g) - 0.5,
            "surface_normals": torch.nn.functional.normalize(torch.randn(b, ns, 3, generator=g), dim=-1)}


def _worker(rank: int, world: int, threads: int, size: dict, folder: str) -> None:
    import torch.distributed as dist

    from neural_parts import distributed, engine
    from neural_parts.config import load_config
    from neural_parts.models import NeuralParts

    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    ranks = distributed.Ranks(rank, world, rank, "gloo" if world > 1 else None, torch.device("cpu"))
    cfg = load_config("default", size["overrides"] + ["training.aggregate=1"])
    torch.manual_seed(distributed.rank_seed(0, rank))
    model = NeuralParts.from_config(cfg)
    trainer = engine.Trainer(model, engine.make_optimizer(cfg, model), cfg.loss,
                             cfg.training.clip_grad_norm, ranks=ranks)
    batches = [_batch(cfg, rank, s) for s in range(size["warmup"] + size["timed"])]
    for b in batches[:size["warmup"]]:
        trainer.step([b])
    ranks.barrier()
    t0 = time.perf_counter()
    for b in batches[size["warmup"]:]:
        trainer.step([b])
    ranks.barrier()
    seconds = time.perf_counter() - t0
    everyone = ranks.gather([p.detach() for p in model.parameters()])
    same = all(torch.equal(p, q) for other in everyone[1:] for p, q in zip(everyone[0], other))
    if rank == 0:
        Path(folder, "result.txt").write_text(f"{seconds} {int(same)} {cfg.training.batch_size}")
    if world > 1:
        dist.destroy_process_group()


def measure(size: dict) -> list[dict]:
    """Updates/s of each configuration, interleaved ``size["repeats"]`` times; rows as dicts."""
    rows = []
    for repeat in range(size["repeats"]):
        for world, threads in size["configurations"]:
            with tempfile.TemporaryDirectory() as folder:
                torch.multiprocessing.start_processes(_worker, args=(world, threads, size, folder), nprocs=world,
                                                      start_method="spawn")
                seconds, same, batch = Path(folder, "result.txt").read_text().split()
            rate = size["timed"] / float(seconds)
            rows.append({"repeat": repeat, "processes": world, "threads": threads, "updates_per_s": rate,
                         "shapes_per_s": rate * int(batch) * world, "ranks_identical": bool(int(same))})
    return rows


def table(rows: list[dict], load: tuple) -> str:
    lines = [f"load average before {load[0]:.2f}, after {load[1]:.2f} ({os.cpu_count()} cores)",
             f"{'processes':>9} {'threads':>7} {'updates/s':>9} {'shapes/s':>8}"]
    lines += [f"{r['processes']:>9} {r['threads']:>7} {r['updates_per_s']:>9.3f} {r['shapes_per_s']:>8.2f}"
              for r in rows]
    return "\n".join(lines)


def test_distributed_updates_per_second(benchmark, request):
    size = TINY if request.config.getoption("benchmark_disable") else FULL
    before = os.getloadavg()[0]
    rows = benchmark.pedantic(measure, args=(size,), rounds=1, iterations=1)
    benchmark.extra_info.update(rows=rows, load_before=before, load_after=os.getloadavg()[0])
    print("\n" + table(rows, (before, os.getloadavg()[0])))
    assert all(r["updates_per_s"] > 0 and r["ranks_identical"] for r in rows)


if __name__ == "__main__":
    start = os.getloadavg()[0]
    result = measure(TINY if "--tiny" in sys.argv else FULL)
    print(table(result, (start, os.getloadavg()[0])))
