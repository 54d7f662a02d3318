"""The trainer's optimiser semantics: gradients summed over the aggregation window, clipped after every backward."""
from __future__ import annotations

import copy

import pytest
import torch

from neural_parts import engine
from neural_parts.config import load_config
from neural_parts.models import NeuralParts
from neural_parts.objective import compute_losses

SMALL = ["network.n_primitives=2", "feature_extractor.feature_size=8", "invertible_network.hidden_size=16",
         "projection_layer.proj_dims=8", "loss.n_points_on_sphere=16", "training.clip_grad_norm=0.05"]


def _batch(seed: int, index: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"index": torch.tensor([index]), "volume_points": torch.rand(1, 128, 3, generator=g) - 0.5,
            "volume_labels": (torch.rand(1, 128, generator=g) > 0.5).float(),
            "volume_weights": torch.rand(1, 128, generator=g) + 0.5,
            "surface_points": torch.rand(1, 32, 3, generator=g) - 0.5,
            "surface_normals": torch.nn.functional.normalize(torch.randn(1, 32, 3, generator=g), dim=-1)}


def test_aggregate_sums_gradients_and_clips_after_every_backward():
    cfg = load_config("fit", SMALL)
    torch.manual_seed(0)
    model = NeuralParts.from_config(cfg, n_shapes=2)
    reference = copy.deepcopy(model)
    batches = [_batch(1, 0), _batch(2, 1)]

    torch.manual_seed(5)  # the sphere draws of compute_losses come from the global generator
    engine.Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), cfg.loss,
                   clip=0.05).step(batches)

    torch.manual_seed(5)
    params = list(reference.parameters())
    for batch in batches:  # the authors' train_on_batch: clip(clip(g1) + g2)
        compute_losses(reference(batch["index"]), batch, cfg.loss)["total"].backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 0.05)
        assert norm > 0.05  # the clip is active, so its placement matters
    with torch.no_grad():
        expected = [p - p.grad for p in params]
    for (name, p), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6, msg=name)
    clipped_once = sum(float(p.grad.norm() ** 2) for p in params) ** 0.5
    assert abs(clipped_once - 0.05) < 1e-4  # the final sum was clipped too


def test_adam_and_radam_come_from_torch_optim():
    cfg = load_config("dfaust_6", ["feature_extractor.weights=none"])
    assert isinstance(engine.make_optimizer(cfg, torch.nn.Linear(1, 1)), torch.optim.RAdam)
    cfg = load_config("shapenet_5", ["feature_extractor.weights=none"])
    opt = engine.make_optimizer(cfg, torch.nn.Linear(1, 1))
    assert type(opt) is torch.optim.Adam and opt.defaults["lr"] == 5e-5 and len(opt.param_groups) == 1


def test_placement_lr_scale_slows_everything_but_the_couplings():
    cfg = load_config("fit", [*SMALL, "training.placement_lr_scale=0.1", "training.lr=1e-3"])
    model = NeuralParts.from_config(cfg, n_shapes=1)
    opt = engine.make_optimizer(cfg, model)
    coupling, placement = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[1] for p in coupling["params"]} == {"layers", "projection"}
    assert "invertible_network.translations.0.weight" in {names[id(p)] for p in placement["params"]}
    assert len(coupling["params"]) + len(placement["params"]) == len(list(model.parameters()))
    engine.set_learning_rate(opt, 2e-4)
    assert coupling["lr"] == 2e-4 and placement["lr"] == pytest.approx(2e-5)


def test_a_non_finite_batch_is_not_applied_to_the_weights():
    cfg = load_config("fit", SMALL)
    torch.manual_seed(0)
    model = NeuralParts.from_config(cfg, n_shapes=2)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = engine.Trainer(model, optimizer, cfg.loss, clip=1.0, max_nonfinite=3)
    bad = _batch(1, 0)
    bad["volume_weights"][0, 5] = float("nan")  # a NaN loss (NaN points are refused by the knn op)
    values = trainer.step([bad])
    assert values["skipped"] == 1.0 and trainer.skipped == 1 and not optimizer.state  # Adam never stepped
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert trainer.step([_batch(2, 1)])["skipped"] == 0.0  # a good batch trains again
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    trainer.step([bad])
    trainer.step([bad])
    with pytest.raises(FloatingPointError, match="not finite in 3 updates in a row"):
        trainer.step([bad])


def test_batches_of_a_resumed_stream_are_those_of_the_uninterrupted_one(tmp_path):
    from neural_parts.data import NeuralPartsDataset, prepare_synthetic

    prepare_synthetic(tmp_path, n_train=5, n_val=0, n_test=0, workers=1, progress=False, n_volume=2000,
                      n_surface=1000, image_size=16)
    dataset = NeuralPartsDataset(tmp_path / "train.h5", n_volume=64, n_surface=32, image_size=16, seed=3)
    straight = engine.infinite_batches(dataset, 2, seed=3)
    expected = [next(straight) for _ in range(7)]  # 2 batches per epoch: crosses three epochs
    resumed = engine.infinite_batches(dataset, 2, seed=3, start=(1, 2))  # epoch 1 after its first batch
    for want in expected[3:]:
        got = next(resumed)
        for key in want:
            assert torch.equal(want[key], got[key]), key
    assert not torch.equal(expected[0]["volume_points"], expected[2]["volume_points"])  # epochs differ


def test_learning_rate_schedules():
    from neural_parts.config import TrainingConfig

    constant = TrainingConfig(lr=1e-3, warmup_steps=4)
    assert [engine.learning_rate(constant, s) for s in (0, 3, 100)] == [2.5e-4, 1e-3, 1e-3]
    cosine = TrainingConfig(lr=1e-3, lr_schedule="cosine", max_steps=100, lr_final=0.1)
    lrs = [engine.learning_rate(cosine, s) for s in range(101)]
    assert lrs[0] == 1e-3 and abs(lrs[50] - 0.55e-3) < 1e-12 and abs(lrs[100] - 1e-4) < 1e-12
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    assert engine.learning_rate(TrainingConfig(lr=1e-3, lr_schedule="cosine"), 10**6) == 1e-3  # no horizon


def test_weight_average_follows_its_recursion_with_the_start_up_ramp():
    """avg_t = avg_{t-1} + (1 - d_t) (w_t - avg_{t-1}), d_t = min(decay, (1 + t) / (10 + t)), for parameters
    and BatchNorm statistics alike; the integer step counter is copied, not averaged."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = engine.WeightAverage(model, decay=0.5)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    assert not any(p.requires_grad for p in average.model.parameters())
    for step in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # moves the running statistics and the counter
        average.update(model, step)
        keep = min(0.5, (1 + step) / (10 + step))
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                expected[name] = keep * expected[name] + (1 - keep) * value.double()
            else:
                expected[name] = value.clone()
    for name, value in average.model.state_dict().items():
        assert torch.allclose(value.double(), expected[name].double(), atol=1e-6), name
    assert average.model.state_dict()["1.num_batches_tracked"] == 7


def test_weight_average_decay_must_be_below_one():
    from neural_parts.config import ConfigError

    with pytest.raises(ConfigError, match="training.ema_decay"):
        load_config("humans", ["training.ema_decay=1"])
    with pytest.raises(ValueError, match="decay"):
        engine.WeightAverage(torch.nn.Linear(1, 1), decay=0.0)
