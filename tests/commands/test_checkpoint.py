"""Checkpoints: atomic writes, weights_only loading, clear errors, RNG state round trip."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from neural_parts.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_model,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from neural_parts.config import load_config
from neural_parts.models import NeuralParts

SMALL = ["network.n_primitives=2", "feature_extractor.feature_size=8", "invertible_network.hidden_size=16",
         "projection_layer.proj_dims=8"]


def _model(extra=()):
    cfg = load_config("fit", [*SMALL, *extra])
    return cfg, NeuralParts.from_config(cfg, n_shapes=1)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    cfg, model = _model()
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model=model, config=cfg, step=7, optimizer=opt, metrics={"best_iou": 0.5})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # no pickled code needed
    assert raw["step"] == 7 and raw["config"] == cfg.to_dict()
    loaded = load_model(tmp_path / "c.pt")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.step == 7 and not loaded.training


def test_rng_state_round_trip():
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    _, model = _model()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        load_checkpoint(tmp_path)


def test_mismatched_model_is_refused(tmp_path):
    cfg, model = _model()
    _, bigger = _model(["network.n_primitives=3"])
    with pytest.raises(CheckpointError, match="shape mismatches: primitive_embedding"):
        load_model_state(bigger, model.state_dict())
    state = dict(model.state_dict())
    state.pop("primitive_embedding")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing keys: primitive_embedding; unexpected keys: extra.weight"):
        load_model_state(model, state)
    # a checkpoint whose config disagrees with its weights is refused, never loaded partially
    save_checkpoint(tmp_path / "c.pt", model=model, config=cfg.replace(["network.n_primitives=3"]),
                    step=1)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_model(tmp_path / "c.pt")
