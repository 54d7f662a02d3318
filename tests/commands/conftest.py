"""Fixtures of the command tests: a tiny synthetic dataset and one tiny trained run (built once per session).

Every command runs in a subprocess (``python -m neural_parts.<command>``) with NEURAL_PARTS_DATA pointing
at a temporary folder, as a user would run it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from command_helpers import REPO, TINY, run_cli, sets


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("np_data")


@pytest.fixture(scope="session")
def env(data_root) -> dict:
    """Subprocess environment: a private data folder, this checkout importable, one thread per command."""
    return dict(os.environ, NEURAL_PARTS_DATA=str(data_root), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


@pytest.fixture(scope="session")
def dataset(data_root) -> Path:
    """A tiny built-in dataset: 6 / 3 / 3 shapes, 64x64 images, 20k volume and 5k surface points."""
    from neural_parts.data import prepare_synthetic

    folder = data_root / "tiny"
    prepare_synthetic(folder, n_train=6, n_val=3, n_test=3, image_size=64, workers=1, n_volume=20_000,
                      n_surface=5_000, progress=False)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dataset, env) -> Path:
    """A run folder after 4 updates (checkpoints every 2, validation every 2)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli("train", "--output", out, "--max-steps", 4, "-q",
                   *sets(*TINY, f"data.dataset={dataset}", "training.checkpoint_every=2",
                         "validation.every_steps=2"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def evaluation(tmp_path_factory, trained_run, dataset, env):
    """evaluate --views 2 on the 3 test shapes (authors' protocol: fast): (CSV path, completed process); the
    report is the CSV's .html, the viewers are in eval-views/."""
    out = tmp_path_factory.mktemp("eval") / "eval.csv"
    proc = run_cli("evaluate", trained_run, "--data", dataset / "test.h5", "--protocol", "authors", "--output", out,
                   "--views", 2, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
