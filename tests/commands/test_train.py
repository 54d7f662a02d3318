"""`python -m neural_parts.train`: run folder contents, resume after SIGKILL, user errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref

import pytest
import torch
import yaml
from command_helpers import TINY, run_cli, sets
from PIL import Image

from neural_parts.preview import TITLE_HEIGHT
from neural_parts.train import StopRequest


def test_train_writes_the_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "step_2.pt", "step_4.pt",
            "preview.png"} <= names
    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert cfg["network"]["n_primitives"] == 2 and cfg["training"]["max_steps"] == 4
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    val_steps = [r["step"] for r in rows if r["split"] == "val"]
    assert train_steps == [1, 2, 3, 4] and val_steps == [0, 2, 4]
    floor = [r for r in rows if r["split"] == "floor"]
    assert len(floor) == 1 and 0 <= floor[0]["iou"] <= 1  # the constant-shape floor, logged once
    assert all(0 <= r["iou"] <= 1 for r in rows) and all(r["total"] > 0 for r in rows if r["split"] == "train")
    last = torch.load(trained_run / "last.pt", weights_only=True)
    assert last["step"] == 4 and set(last) >= {"model", "optimizer", "config", "rng", "metrics"}
    best_iou = max(r["iou"] for r in rows if r["split"] == "val")
    assert abs(torch.load(trained_run / "best.pt", weights_only=True)["metrics"]["best_iou"] - best_iou) < 1e-5
    log = (trained_run / "train.log").read_text()
    assert "device: cpu" in log and "kernel backend" in log and "float32 matmul precision" in log
    with Image.open(trained_run / "preview.png") as im:
        assert im.size[0] == 4 * (im.size[1] - TITLE_HEIGHT)  # input, two views of the primitives, the target


def test_resume_after_sigkill_loses_at_most_one_interval(tmp_path, dataset, env):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neural_parts.train", "--output", str(out), "--max-steps", "1000", "-q",
           *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=2", "validation.every_steps=1000",
                 "training.keep_checkpoints=0")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not list(out.glob("step_*.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(out.glob("step_*.pt")), f"no checkpoint appeared: {proc.stderr.read() if proc.poll() else ''}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = max(int(p.stem[5:]) for p in out.glob("step_*.pt"))
    assert torch.load(out / "last.pt", weights_only=True)["step"] == saved
    for path in out.glob("step_*.pt"):  # every file that appeared is complete
        assert torch.load(path, weights_only=True)["step"] == int(path.stem[5:])
    resumed = run_cli("train", "--resume", out, "--max-steps", saved + 2, "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed {out / 'last.pt'} at step {saved}" in resumed.stdout
    assert torch.load(out / "last.pt", weights_only=True)["step"] == saved + 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == list(range(1, saved + 3))  # the steps after the checkpoint are logged once


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, trained_run, dataset, env):
    """Stopping after 2 updates and resuming to 4 gives the weights of the 4-update run: the same batches,
    point draws and sphere samples (trained_run: 4 updates, checkpoints and validation every 2)."""
    out = tmp_path / "split"
    args = ["-q", *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=2", "validation.every_steps=2")]
    first = run_cli("train", "--output", out, "--max-steps", 2, *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train", "--resume", out, "--max-steps", 4, "-q", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = torch.load(out / "last.pt", weights_only=True)["model"]
    straight = torch.load(trained_run / "last.pt", weights_only=True)["model"]
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_a_resumed_run_with_a_weight_average_equals_an_uninterrupted_one(tmp_path, dataset, env):
    """training.ema_decay: checkpoints hold the average as "model" (what validation and every command use)
    and the optimiser's weights as "optimised_model"; stopping after 2 updates and resuming to 4 gives both
    exactly."""
    args = ["-q", *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=2", "validation.every_steps=2",
                        "training.ema_decay=0.9")]
    straight, split = tmp_path / "straight", tmp_path / "split"
    for out, stops in ((straight, [4]), (split, [2, 4])):
        first = run_cli("train", "--output", out, "--max-steps", stops[0], *args, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "moving average of the weights" in first.stdout
        for stop in stops[1:]:
            more = run_cli("train", "--resume", out, "--max-steps", stop, "-q", env=env)
            assert more.returncode == 0, more.stderr[-3000:]
    a, b = (torch.load(out / "last.pt", weights_only=True) for out in (straight, split))
    for key in ("model", "optimised_model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    differs = [name for name, value in a["model"].items()
               if value.dtype.is_floating_point and not torch.equal(value, a["optimised_model"][name])]
    assert differs, "the average equals the optimised weights"


def test_best_iou_survives_a_kill_between_best_and_last(tmp_path):
    """best.pt may be newer than last.pt (validation improved, then the run died): a resumed run keeps
    best.pt's IoU and so never overwrites it with a worse model."""
    from neural_parts.checkpoint import load_checkpoint, save_checkpoint
    from neural_parts.config import load_config
    from neural_parts.models import NeuralParts
    from neural_parts.train import _best_iou

    cfg = load_config("fit", ["network.n_primitives=1", "invertible_network.hidden_size=8",
                              "projection_layer.proj_dims=4", "feature_extractor.feature_size=4"])
    model = NeuralParts.from_config(cfg, n_shapes=1)
    save_checkpoint(tmp_path / "best.pt", model=model, config=cfg, step=7, metrics={"best_iou": 0.6})
    save_checkpoint(tmp_path / "last.pt", model=model, config=cfg, step=6, metrics={"best_iou": 0.4})
    assert _best_iou(tmp_path, load_checkpoint(tmp_path / "last.pt")) == 0.6


def test_checkpoints_are_written_after_that_step_s_validation(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best_by_2 = max(r["iou"] for r in rows if r["split"] == "val" and r["step"] <= 2)
    step_2 = torch.load(trained_run / "step_2.pt", weights_only=True)
    assert abs(step_2["metrics"]["best_iou"] - best_by_2) < 1e-6


def test_cli_user_error_exits_2_with_one_line(tmp_path, env):
    proc = run_cli("train", "--output", tmp_path / "out", "--set", "training.lrr=1", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "train: error: unknown config key 'training.lrr'; did you mean 'training.lr'?"


def test_user_errors(tmp_path, trained_run, dataset, capsys):
    import pickle

    from neural_parts.train import main

    text_weights = tmp_path / "weights.txt"
    text_weights.write_text("not weights\n")
    pickled_weights = tmp_path / "weights.pkl"
    pickled_weights.write_bytes(pickle.dumps({"conv1.weight": [1, 2, 3]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {lr: [1, 2\n")
    out = ["--output", str(tmp_path / "out")]
    cases = [
        ([*out, "--config", "defualt"], "did you mean 'default'"),
        ([*out, "--set", "training.lr=fast"], "expected a number"),
        ([*out, "--config", str(bad)], "invalid YAML at line 2"),
        (["--resume", str(tmp_path / "nothing")], "not a run folder"),
        (["--output", str(trained_run)], "already holds a run"),
        ([*out, "--set", "data.dataset=/nonexistent/folder"], "dataset files not found"),
        ([*out, "--config", "dfaust_6"], "expects pretrained encoder weights"),
        ([*out, "--device", "tpu"], "device 'tpu' is not"),
        ([*out, "--max-steps", "-5"], "'training.max_steps' must be >= 0"),
        ([*out, "--set", "loss.sharpness=-5"], "'loss.sharpness' must be positive"),
        ([*out, "--set", "training.lr=inf"], "'training.lr' must be a finite number"),
        ([*out, "--set", f"feature_extractor.weights={text_weights}"], "not a readable torch state dict"),
        ([*out, "--set", f"feature_extractor.weights={pickled_weights}"], "not a readable torch state dict"),
        ([*out, "--set", f"data.dataset={dataset}", "--set", "data.n_points_on_mesh=1000000"],
         "surface points, fewer than the 1000000 requested"),
        ([*out, "--set", f"data.dataset={dataset}", "--set", "network.init=parts", "--set", "network.part_split=mesh",
          *sets(*TINY)], "constant shape has no mesh"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("train: error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_sigterm_saves_last_checkpoint(tmp_path, dataset, env):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neural_parts.train", "--output", str(out), "--max-steps", "1000", "-q",
           *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=1000", "validation.every_steps=1000")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for the first logged training step
        metrics = out / "metrics.jsonl"
        if metrics.exists() and '"split": "train"' in metrics.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted (SIGTERM) at step" in stdout
    assert torch.load(out / "last.pt", weights_only=True)["step"] >= 1


def test_a_signal_that_lands_in_a_weakref_callback_still_stops_training():
    """Python drops an exception raised in a weakref callback: a handler that raised KeyboardInterrupt lost
    this SIGTERM and the run trained on (a CI failure). The flag survives; a second signal interrupts."""
    class Payload:
        pass

    def callback(_):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(100))  # the handler runs here, inside the callback

    with StopRequest() as stop:
        payload = Payload()
        ref = weakref.ref(payload, callback)  # noqa: F841 (the callback needs the reference alive)
        del payload
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("preset", ["ablation_atlasnet", "ablation_no_inverse"])
def test_ablation_presets_train(tmp_path, dataset, env, preset):
    out = tmp_path / preset
    proc = run_cli("train", "--config", preset, "--output", out, "--max-steps", 2, "-q",
                   *sets(*TINY, f"data.dataset={dataset}", "validation.every_steps=2"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_terms = set(rows[-2]) if rows[-1]["split"] == "val" else set(rows[-1])
    if preset == "ablation_atlasnet":
        assert cfg["invertible_network"]["type"] == "atlasnet" and "normal" not in train_terms
        assert {"occupancy", "chamfer"} <= train_terms
    else:
        assert "chamfer" in train_terms and not {"occupancy", "normal"} & train_terms
