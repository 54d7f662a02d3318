"""A build killed with SIGKILL after its first shard resumes to the same result as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from neural_parts.prepare import main, prepare

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "synthetic",
    "--n-train",
    "32",
    "--n-val",
    "0",
    "--n-test",
    "0",
    "--shard-size",
    "2",
    "--n-volume",
    "3000",
    "--n-surface",
    "2000",
    "--image-size",
    "48",
    "--workers",
    "1",
    "-q",
]


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, d: out.__setitem__(k, d[()]) if isinstance(d, h5py.Dataset) else None)
    return out


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "neural_parts.prepare", *ARGS, "--output", str(killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = killed / "train.parts" / "0000.json"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert proc.poll() is None, f"prepare exited early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no shard written within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "train.h5").exists(), "the build finished before it could be killed"
    done_before = len(list((killed / "train.parts").glob("[0-9]*.json")))
    assert 1 <= done_before < 16

    summary = prepare([*ARGS, "--output", str(killed)])
    assert summary["built_records"] == 32 - 2 * done_before  # finished shards were not rebuilt
    assert summary["splits"]["train"]["records"] == 32 and not (killed / "train.parts").exists()

    prepare([*ARGS, "--output", str(tmp_path / "clean"), "--workers", "2"])  # and in parallel: the same result
    a, b = _datasets(killed / "train.h5"), _datasets(tmp_path / "clean" / "train.h5")
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
