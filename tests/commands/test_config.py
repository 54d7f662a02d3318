"""Config presets: inheritance, overrides, did-you-mean, validation errors."""
from __future__ import annotations

import pytest

from neural_parts.config import ConfigError, load_config, preset_names


def test_every_preset_loads_and_the_default_matches_the_decisions():
    assert {"default", "dfaust_6", "shapenet_5", "ablation_no_inverse", "fit"} <= set(preset_names())
    cfg = load_config("default")
    assert (cfg.data.image_size, cfg.network.n_primitives, cfg.feature_extractor.feature_size,
            cfg.invertible_network.hidden_size, cfg.projection_layer.proj_dims) == (128, 5, 128, 128, 64)
    assert (cfg.data.n_points_in_mesh, cfg.data.n_points_on_mesh, cfg.loss.n_points_on_sphere,
            cfg.training.batch_size, cfg.training.optimizer, cfg.training.lr) == (
        2048, 512, 100, 4, "adam", 5e-4)
    assert cfg.feature_extractor.freeze_bn is False and cfg.data.categories == ["humanoid"]


def test_inheritance_deep_merges_and_loss_weights_replace():
    shapenet = load_config("shapenet_5")  # base: dfaust_6
    assert shapenet.training.optimizer == "adam" and shapenet.training.aggregate == 4
    assert shapenet.training.lr == 5e-5 and shapenet.data.n_points_in_mesh == 5000  # inherited
    assert shapenet.loss.sharpness == 250.0
    ablation = load_config("ablation_no_inverse")
    assert ablation.loss.weights == {"chamfer": 1.0} and ablation.loss.union_surface is False
    assert ablation.data.image_size == 128  # from default


def test_user_file_with_relative_base(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: default\ntraining: {lr: 1.0e-3}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nnetwork: {n_primitives: 3}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.training.lr == 1e-3 and cfg.network.n_primitives == 3
    assert cfg.data.image_size == 128 and cfg.name == "child"


def test_overrides_are_typed_by_the_replaced_value():
    cfg = load_config("default", ["training.lr=1e-3", "network.n_primitives=7", "feature_extractor.freeze_bn=yes",
                                  "data.categories=[chair, table]", "loss.weights.normal=0.5",
                                  "data.dataset=/some/folder"])
    assert cfg.training.lr == 1e-3 and isinstance(cfg.training.lr, float)
    assert cfg.network.n_primitives == 7 and cfg.feature_extractor.freeze_bn is True
    assert cfg.data.categories == ["chair", "table"] and cfg.loss.weights["normal"] == 0.5
    assert cfg.data.dataset == "/some/folder"


@pytest.mark.parametrize("overrides, message", [
    (["training.lrr=1"], "unknown config key 'training.lrr'; did you mean 'training.lr'?"),
    (["netwrk.n_primitives=2"], "did you mean 'network.n_primitives'?"),
    (["network.n_primitives=2.5"], "expected an integer"),
    (["network.n_primitives=0"], "must be positive"),
    (["training.optimizer=sgd"], "must be one of"),
    (["loss.weights.chamfr=1"], "did you mean 'chamfer'"),
    (["training.lr"], "must look like section.key=value"),
    (["feature_extractor.freeze_bn=maybe"], "expected true or false"),
])
def test_override_errors(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("default", overrides)
    assert message in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'dfaust_6'"):
        load_config("dfaust6")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("base: default\ntraining: {batchsize: 3}\n")
    with pytest.raises(ConfigError, match="did you mean 'training.batch_size'"):
        load_config(unknown)
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("training: {lr: fast}\n")
    with pytest.raises(ConfigError, match="'training.lr' must be a float"):
        load_config(wrong_type)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_defaults_have_one_source():
    """The objective's LossConfig is the config section: its defaults are the config's (they drifted once:
    test_own_primitive was False in the objective and True in the config)."""
    from neural_parts.config import Config, LossConfig, defaults
    from neural_parts.objective import compute_losses  # noqa: F401 (the objective takes config.LossConfig)

    assert LossConfig().test_own_primitive is True and defaults()["loss"]["test_own_primitive"] is True
    assert Config().loss == LossConfig() and defaults()["loss"] == vars(LossConfig())


@pytest.mark.parametrize("overrides, message", [
    (["training.lr=inf"], "'training.lr' must be a finite number"),
    (["training.lr=nan"], "'training.lr' must be a finite number"),
    (["training.max_steps=-5"], "'training.max_steps' must be >= 0"),
    (["loss.sharpness=-5"], "'loss.sharpness' must be positive"),
    (["loss.weights.normal=-1"], "must be a finite number >= 0"),
    (["data.n_points_in_mesh=0"], "must be positive"),
])
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("default", overrides)
    assert message in str(info.value)


def test_a_stored_config_round_trips():
    from neural_parts.config import dump, from_dict

    cfg = load_config("shapenet_5", ["feature_extractor.weights=none"])
    assert from_dict(cfg.to_dict()) == cfg
    assert "test_own_primitive: true" in dump(cfg)


def test_atlasnet_refuses_settings_it_cannot_honour():
    with pytest.raises(ConfigError, match="network.init=random"):
        load_config("ablation_atlasnet", ["network.init=parts"])
    with pytest.raises(ConfigError, match="loss.volume_implicit=euclidean"):
        load_config("ablation_atlasnet", ["loss.volume_implicit=inn"])
