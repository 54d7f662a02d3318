"""The built-in humans dataset end to end: splits by subject and motion, a tiny `prepare humans` build
(watertight records, rebuilds identical), and `train --config humans` on it."""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from command_helpers import TINY, run_cli, sets

from neural_parts.data import humans
from neural_parts.data.process import normalise
from neural_parts.data.sources import humans_jobs

try:
    import anny  # noqa: F401
    HAVE_ANNY = True
except ImportError:
    HAVE_ANNY = False
needs_anny = pytest.mark.skipif(not HAVE_ANNY, reason="the Anny body model is not installed (pip install anny)")


def test_test_subjects_and_test_motions_never_appear_in_training():
    jobs, source = humans_jobs(subjects=7, val_subjects=2, test_subjects=2, frames=3, frame_step=2,
                               test_motions=("punching", "walk"))
    people = {split: {j["spec"][1] for j in rows} for split, rows in jobs.items()}
    motions = {split: {j["spec"][2] for j in rows} for split, rows in jobs.items()}
    assert people == {"train": {0, 1, 2}, "val": {3, 4}, "test": {5, 6}}
    assert not ({"punching", "walk"} & (motions["train"] | motions["val"]))
    assert motions["test"] == set(humans.MOTIONS) and motions["train"] == motions["val"]
    assert {j["spec"][3] for j in jobs["train"]} == {0, 2, 4}  # every frame_step-th frame
    names = [j["name"] for rows in jobs.values() for j in rows]
    assert len(names) == len(set(names)) == 3 * 3 * 8 + 2 * 3 * 8 + 2 * 3 * 10
    assert tuple(source["test_motions"]) == ("punching", "walk")


def test_every_motion_a_test_motion_is_refused():
    with pytest.raises(ValueError, match="nothing to train on"):
        humans_jobs(motions=("walk",), test_motions=("walk",))


def _digest(path) -> str:
    with h5py.File(path, "r") as f:
        h = hashlib.sha256()
        f.visititems(lambda name, d: h.update(name.encode() + d[()].tobytes()) if isinstance(d, h5py.Dataset)
                     else None)
        return h.hexdigest()


@needs_anny
def test_tiny_humans_build_is_watertight_rebuilds_identically_and_trains(tmp_path, env):
    import npkernels
    from neural_parts.data import NeuralPartsDataset

    data = tmp_path / "humans"
    args = ["humans", "--output", data, "--subjects", 3, "--val-subjects", 1, "--test-subjects", 1,
            "--motions", "walk,punching,shake_arms", "--test-motions", "punching", "--frames", 1,
            "--n-volume", 4000, "--n-surface", 2000, "--image-size", 64, "--workers", 1, "-q"]
    first = run_cli("prepare", *args, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((data / "summary.json").read_text())
    assert {s: summary["splits"][s]["records"] for s in ("train", "val", "test")} == {"train": 2, "val": 2, "test": 3}
    assert not any(summary["splits"][s]["flagged"] for s in summary["splits"])

    # closed and outward, with no doubly enclosed volume (an arm through the torso): at the record's volume
    # points the winding numbers of the body are 0 or 1, and the labels are the points with winding 1
    jobs, _ = humans_jobs(subjects=3, val_subjects=1, test_subjects=1, motions=("walk", "punching", "shake_arms"),
                          test_motions=("punching",), frames=1)
    specs = {j["name"]: humans.FrameSpec(*j["spec"]) for j in jobs["val"]}
    body = humans.HumanGenerator(seed=0, threads=1)
    val = NeuralPartsDataset(data / "val.h5", n_volume=4000, n_surface=2000, equal=False)
    for i in range(len(val)):
        record = val.record(i)
        assert record["images"].shape == (1, 64, 64, 3) and not record["flags"]
        vertices = normalise(body.vertices([specs[record["name"]]])[0], "unit_box")[0]
        _, winding = npkernels.inside_mesh(vertices, body.faces, record["volume_points"], return_winding=True)
        assert np.abs(winding).max() < 1.5 and np.abs(np.abs(winding) - np.round(np.abs(winding))).max() < 0.05
        assert (record["volume_labels"] == (winding > 0.5)).mean() > 0.999 and 0.002 < record["volume_labels"].mean()

    digests = {s: _digest(data / f"{s}.h5") for s in ("train", "val", "test")}
    (data / "val.h5").unlink()
    again = run_cli("prepare", *args, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {s: _digest(data / f"{s}.h5") for s in ("train", "val", "test")} == digests

    out = tmp_path / "run"
    proc = run_cli("train", "--config", "humans", "--output", out, "--max-steps", 3, "-q",
                   *sets(*TINY, f"data.dataset={data}", "network.init=parts", "network.n_primitives=3"), env=env,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) >= 2 and any(r["split"] == "val" for r in rows)
    assert np.isfinite([r["total"] for r in rows if r["split"] == "train"]).all()
    assert (out / "preview.png").is_file() and (out / "last.pt").is_file()
    assert "kmeans parts" in (out / "train.log").read_text()
