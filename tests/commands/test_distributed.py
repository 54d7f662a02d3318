"""Several processes on CPU (gloo): one distributed update equals the single-process update on the same
mini-batches; no_sync changes nothing; validation and evaluation give one process's numbers; a killed rank ends
the run and the run resumes, also on another world size; the data stream continues with the next samples."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time

import distributed_helpers as dh
import pytest
import torch
from command_helpers import TINY, run_cli, sets

from neural_parts import engine
from neural_parts.objective import compute_losses


def _reference(case: str, params: torch.Tensor, step: int, every_backward: bool = False) -> torch.Tensor:
    """One process, one thread (as each rank): update ``step`` from the parameters ``params`` sums the gradients
    of the WORLD x AGGREGATE mini-batches of ``dh.batch`` (rank by rank, each with that rank's sphere seed),
    clips once at the end (or after every backward) and applies SGD. Returns the parameter change.

    Each update starts from the distributed run's parameters: the objective is piecewise (argmin owners,
    signs, union masks), so round-off differences after one update can flip choices in the next.
    """
    cfg, (clip, lr) = dh.config(), dh.CASES[case]
    model = dh.make_model()
    torch.nn.utils.vector_to_parameters(params.clone(), model.parameters())  # (it makes views of its input)
    weights = list(model.parameters())
    optimizer = torch.optim.SGD(weights, lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rank in range(dh.WORLD):
            torch.manual_seed(dh.sphere_seed(step, rank))
            for k in range(dh.AGGREGATE):
                b = dh.batch(step, rank, k)
                compute_losses(model(b["image"]), b, cfg.loss)["total"].backward()
                if every_backward:
                    torch.nn.utils.clip_grad_norm_(weights, clip)
        torch.nn.utils.clip_grad_norm_(weights, clip)
        optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return dh.flat(model) - params


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, dataset) -> dict:
    """What rank 0 of the 2-rank worker (``distributed_helpers.worker``) saw."""
    folder = tmp_path_factory.mktemp("ddp")
    out = folder / "results.pt"
    torch.multiprocessing.start_processes(dh.worker, args=(str(folder / "init"), str(dataset), str(out)),
                                          nprocs=dh.WORLD, start_method="spawn")
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(dh.CASES))
def test_a_distributed_update_is_the_single_process_update_on_the_same_samples(two_ranks, case):
    """Compared: the parameter changes (elements ~1e-5 to 1e-2; fp32 parameters up to ~0.5 round at ~3e-8)."""
    params = [dh.flat(dh.make_model())] + [two_ranks[f"{case}_params_{step}"] for step in range(dh.STEPS)]
    for step in range(dh.STEPS):
        expected = _reference(case, params[step], step)
        change = params[step + 1] - params[step]
        torch.testing.assert_close(change, expected, rtol=1e-4, atol=6e-8)
        assert (change - expected).norm() < 1e-5 * expected.norm() and expected.norm() > 0.01
    assert all(two_ranks["identical_across_ranks"])  # bit for bit, after every update
    clip, _ = dh.CASES[case]
    norms = [v["grad_norm"] for v in two_ranks[case]]
    if case == "clipped":
        assert min(norms) > 5 * clip  # the clip acts, so where it is applied matters...
        authors = _reference(case, params[0], 0, every_backward=True)
        assert not torch.allclose(authors, params[1] - params[0], rtol=1e-2, atol=1e-7)  # ...and the test can tell
    else:
        assert max(norms) < clip  # no clip: the mean over ranks (DDP's default) would halve the change


@pytest.mark.slow
def test_no_sync_gives_the_update_of_an_all_reduce_after_every_backward(two_ranks):
    start = dh.flat(dh.make_model())
    change, expected = two_ranks["without_no_sync"] - start, two_ranks["clipped_params_0"] - start
    torch.testing.assert_close(change, expected, rtol=1e-4, atol=6e-8)
    assert (change - expected).norm() < 1e-5 * expected.norm()


@pytest.mark.slow
def test_sharded_validation_and_floor_are_those_of_one_process(two_ranks, dataset):
    from neural_parts.data import NeuralPartsDataset

    common = {"n_volume": 256, "n_surface": 64, "image_size": 32, "seed": 0}
    val = NeuralPartsDataset(dataset / "val.h5", **common)
    train = NeuralPartsDataset(dataset / "train.h5", **common)
    indices = list(range(len(val)))
    single = engine.validate(dh.make_model(), val, indices, torch.device("cpu"), batch_size=1)
    assert len(indices) == 3  # batches of one shape: rank 0 validates shapes 0 and 2, rank 1 shape 1
    assert two_ranks["validate"]["iou_per_shape"] == single["iou_per_shape"]
    assert two_ranks["validate"]["iou"] == pytest.approx(single["iou"], abs=1e-6)
    assert two_ranks["floor"] == engine.constant_shape_floor(engine.fit_constant_shape(train), val, indices, torch.device("cpu"))


def test_the_data_stream_shards_epochs_and_resumes_on_another_world_size(tmp_path):
    class Indices(torch.utils.data.Dataset):
        def __init__(self, n):
            self.n, self.epoch = n, 0

        def __len__(self):
            return self.n

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __getitem__(self, i):
            return {"index": torch.tensor(i), "epoch": torch.tensor(self.epoch)}

    def take(stream, n):
        return [next(stream)["index"].tolist() for _ in range(n)]

    data = Indices(11)
    ranks = [engine.infinite_batches(data, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    single = engine.infinite_batches(data, 2, seed=5)
    first = [take(s, 4) for s in ranks]  # 11 shapes, global batch 4: 2 updates per epoch, 3 shapes dropped
    for step in range(4):
        assert not set(first[0][step]) & set(first[1][step])  # disjoint shards
    order = torch.randperm(11, generator=torch.Generator().manual_seed(5 * 100_003)).tolist()
    assert first[0][0] + first[1][0] == order[:4] and first[0][1] + first[1][1] == order[4:8]
    assert take(single, 5)[:4] == [order[0:2], order[2:4], order[4:6], order[6:8]]  # one process: epoch 0 alike
    assert ranks[0].position == ranks[1].position == (2, 0)  # 4 updates = 2 epochs
    _ = take(ranks[0], 1), take(ranks[1], 1)
    assert ranks[0].position == (2, 4)
    resumed = engine.infinite_batches(data, 2, seed=5, start=ranks[0].position)  # 2 ranks -> 1
    order2 = torch.randperm(11, generator=torch.Generator().manual_seed(5 * 100_003 + 2)).tolist()
    assert take(resumed, 3) == [order2[4:6], order2[6:8], order2[8:10]]  # the samples that came next
    assert resumed.position == (3, 0)
    with pytest.raises(ValueError, match="fewer than training.batch_size=6 x 2 ranks"):
        engine.infinite_batches(data, 6, seed=5, world_size=2)


def _rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_torchrun_evaluation_writes_the_rows_of_one_process(tmp_path, trained_run, dataset, env):
    args = [trained_run, "--data", dataset / "test.h5", "--protocol", "authors"]
    single = run_cli("evaluate", *args, "--output", tmp_path / "one.csv", env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    lines = (tmp_path / "one.csv").read_text().splitlines()
    (tmp_path / "two.rank1.csv").write_text(f"{lines[0]}\n{lines[2]}\n")  # shape 1, left by a killed torchrun run
    two = dh.run_torchrun("neural_parts.evaluate", *args, "--output", tmp_path / "two.csv", env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _rows(tmp_path / "two.csv") == _rows(tmp_path / "one.csv") and len(_rows(tmp_path / "one.csv")) == 3
    assert not list(tmp_path.glob("two.rank*.csv"))
    assert two.stdout.count("per-shape results") == 1 and "1 already in" in two.stderr  # the merged row is kept
    assert "shared among 2 ranks" in two.stderr


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_which_resumes_on_one_process(tmp_path, trained_run, dataset, env):
    out = tmp_path / "run"
    proc = subprocess.Popen(dh.torchrun("neural_parts.train", "--output", out, "--max-steps", 1000, "-q",
                                        *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=2",
                                              "validation.every_steps=2", "training.keep_checkpoints=0")),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "step_4.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "step_4.pt").exists(), f"no checkpoint appeared: {proc.stderr.read() if proc.poll() else ''}"
        victim = dh.rank_pid(proc.pid, 1)
        assert victim is not None
        dh.kill(victim, signal.SIGKILL)
        t0 = time.time()
        _, stderr = proc.communicate(timeout=90)
        ended = time.time() - t0
    finally:
        dh.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode != 0 and ended < 60, (proc.returncode, ended)
    assert "Signal 9 (SIGKILL)" in stderr and "neural_parts.train FAILED" in stderr  # torchrun names the rank
    saved = torch.load(out / "last.pt", weights_only=True)
    for path in out.glob("step_*.pt"):  # every checkpoint that appeared is complete
        assert torch.load(path, weights_only=True)["step"] == int(path.stem[5:])
    assert saved["world_size"] == 2 and saved["step"] >= 4

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    alone = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    for split in ("floor", "val"):  # the same initial model: sharded validation gives one process's numbers
        first = [{k: v for k, v in r.items() if k not in ("elapsed_s", "time")} for r in rows + alone
                 if r["split"] == split and r["step"] == 0]
        assert len(first) == 2 and first[0] == first[1], first

    resumed = run_cli("train", "--resume", out, "--max-steps", saved["step"] + 2, "-q", env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed {out / 'last.pt'} at step {saved['step']}" in resumed.stdout
    assert "resuming a run of 2 process(es) on 1" in resumed.stdout
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == saved["step"] + 2 and last["world_size"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, saved["step"] + 3))
    info = json.loads((out / "run_info.json").read_text())
    assert [(s["step"], s["world_size"], s["global_batch"]) for s in info] == [(0, 2, 4), (saved["step"], 1, 2)]


@pytest.mark.slow
def test_a_sigterm_to_one_rank_stops_every_rank_after_the_same_update(tmp_path, dataset, env):
    out = tmp_path / "run"
    proc = subprocess.Popen(dh.torchrun("neural_parts.train", "--output", out, "--max-steps", 1000, "-q",
                                        *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=1000",
                                              "validation.every_steps=1000")),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        metrics = out / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None and not (
                metrics.exists() and '"split": "train"' in metrics.read_text()):
            time.sleep(0.2)
        victim = dh.rank_pid(proc.pid, 1)
        assert victim is not None, proc.stderr.read() if proc.poll() is not None else "no rank 1"
        dh.kill(victim, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        dh.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "interrupted (another rank) at step" in stdout, stderr[-3000:]
    assert "collective failed" not in stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert saved["step"] == steps[-1] >= 1 and saved["world_size"] == 2
    assert len(saved["rng_ranks"]) == 2  # each rank's RNG state: --resume continues as an uninterrupted run
