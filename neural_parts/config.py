"""Run configurations: YAML presets with ``base:`` inheritance, ``--set a.b=c`` overrides, validation.

A preset is a name (``neural_parts/configs/<name>.yaml``) or a path. A top-level ``base:`` (a preset
name or a path relative to the file) is loaded first and the file is deep-merged onto it. Every
config is merged onto ``DEFAULTS``, which lists every known key: unknown keys are errors with a
did-you-mean suggestion. Sections mirror the authors' configs (data, network, feature_extractor,
invertible_network, projection_layer, loss, training, validation) plus ``runtime``.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
_FREE_KEYS = {("loss", "weights")}  # dict-valued keys whose own keys are checked by validate()
LOSS_TERMS = ("chamfer", "normal", "occupancy", "coverage", "overlap")

DEFAULTS: dict = {
    "data": {
        "dataset": "synthetic-v1",  # a name under $NEURAL_PARTS_DATA or a folder with <split>.h5
        "train_split": "train",
        "val_split": "val",
        "categories": None,  # list of categories to keep, None = all
        "image_size": 224,
        "n_points_in_mesh": 5000,  # volume points per sample (N)
        "n_points_on_mesh": 1500,  # surface points per sample (N_s)
        "equal": True,  # half inside / half outside with importance weights
        "random_view": False,
        "num_workers": 0,
    },
    "network": {"n_primitives": 6, "sphere_radius": 0.25},
    "feature_extractor": {
        "type": "resnet18",  # resnet18 | latent
        "feature_size": 256,
        "freeze_bn": True,
        "weights": None,  # torchvision resnet18 state dict path, or "none" to train from scratch
    },
    "invertible_network": {
        "type": "simple_nvp",  # simple_nvp | atlasnet (the AtlasNet-sphere ablation)
        "hidden_size": 256,
        "n_blocks": 4,
        "normalize": True,  # the sigma = elu(.) + 1 scale head
        "explicit_affine": True,  # the quaternion rotation and translation heads
    },
    "projection_layer": {"proj_dims": 128},
    "loss": {
        "weights": {"chamfer": 0.3, "normal": 0.01, "occupancy": 1.0, "coverage": 0.01, "overlap": 0.1},
        "sharpness": 250.0,
        "min_n_points": 10,
        "max_shared_points": 1.95,
        "coverage_eps": 1e-6,
        "n_points_on_sphere": 200,
        "volume_implicit": "euclidean",  # euclidean | inn
        "test_own_primitive": True,  # the authors' training behaviour
        "union_surface": True,
    },
    "training": {
        "optimizer": "radam",  # adam | radam
        "lr": 5e-5,
        "weight_decay": 0.0,
        "batch_size": 1,
        "aggregate": 2,  # mini-batches per update; gradients are summed
        "clip_grad_norm": 1.0,  # applied after every backward, as the authors; 0 = off
        "max_steps": 0,  # optimiser updates; 0 = until interrupted
        "checkpoint_every": 500,  # updates between last.pt / step_<n>.pt
        "keep_checkpoints": 3,  # step_<n>.pt files kept
        "log_every": 10,
    },
    "validation": {
        "every_seconds": 0,  # validate + preview every this many seconds (0 = use every_steps)
        "every_steps": 5000,
        "n_shapes": 32,  # fixed seeded subset of the validation split
        "n_points_in_mesh": 5000,
        "seed": 0,
        "preview_shapes": 4,
    },
    "runtime": {
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "seed": 27,
        "tf32": True,  # torch.set_float32_matmul_precision("high")
        "kernel_backend": "auto",  # auto | triton | reference
        "amp_encoder": False,  # bf16 autocast for the image encoder (CUDA only)
        "threads": 0,  # torch CPU threads, 0 = torch's default
        "tensorboard": True,  # when the tensorboard package is installed
    },
}

CHOICES = {
    ("feature_extractor", "type"): ("resnet18", "latent"),
    ("invertible_network", "type"): ("simple_nvp", "atlasnet"),
    ("loss", "volume_implicit"): ("euclidean", "inn"),
    ("training", "optimizer"): ("adam", "radam"),
    ("runtime", "kernel_backend"): ("auto", "triton", "reference"),
}
POSITIVE = [("network", "n_primitives"), ("feature_extractor", "feature_size"), ("invertible_network", "hidden_size"),
            ("invertible_network", "n_blocks"), ("projection_layer", "proj_dims"), ("loss", "n_points_on_sphere"),
            ("training", "lr"), ("training", "batch_size"), ("training", "aggregate"), ("data", "image_size"),
            ("data", "n_points_in_mesh"), ("data", "n_points_on_mesh"), ("training", "checkpoint_every"),
            ("network", "sphere_radius"), ("training", "log_every"), ("validation", "every_steps"),
            ("validation", "n_shapes"), ("validation", "n_points_in_mesh")]


class ConfigError(ValueError):
    """A user error in a configuration (bad file, unknown key, wrong type or value)."""


def deep_merge(base: dict, update: dict, _path: tuple = ()) -> dict:
    """A new dict: ``update`` merged into ``base`` recursively (update wins; dicts merge, except
    ``loss.weights``, which a file replaces as a whole so that a term can be left out)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = _path + (key,)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and path not in _FREE_KEYS:
            out[key] = deep_merge(out[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Path of a preset name or a YAML file (relative paths tried next to ``relative_to`` first)."""
    text = str(name_or_path)
    candidates = []
    if relative_to is not None and not Path(text).is_absolute():
        candidates.append(relative_to / text)
    candidates.append(Path(text))
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        candidates.insert(0, CONFIG_DIR / f"{text}.yaml")
    for path in candidates:
        if path.is_file():
            return path
    hint = difflib.get_close_matches(text, preset_names(), n=1)
    raise ConfigError(f"config {text!r} not found (presets: {', '.join(preset_names())})"
                      + (f"; did you mean {hint[0]!r}?" if hint else ""))


def read_yaml(path: Path, _seen: tuple = ()) -> dict:
    """The merged contents of a YAML file and its ``base:`` chain (no defaults, no validation)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(str(p) for p in _seen + (path,))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return deep_merge(read_yaml(resolve(base, path.parent), _seen + (path,)), data)


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, dict) and tuple(name.split(".")) not in _FREE_KEYS:
            keys += _dotted_keys(value, name + ".")
    return keys


def _unknown(name: str) -> ConfigError:
    hint = difflib.get_close_matches(name, _dotted_keys(DEFAULTS), n=1, cutoff=0.6)
    return ConfigError(f"unknown config key {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _check_keys(tree: dict, schema: dict, prefix: str = "") -> None:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise _unknown(name)
        if isinstance(schema[key], dict) and tuple(name.split(".")) not in _FREE_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a mapping, got {value!r}")
            _check_keys(value, schema[key], name + ".")


def parse_value(text: str, current):
    """Convert an override string to the type of the value it replaces (YAML syntax for the rest)."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"expected true or false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {text!r}: {e}") from None


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """A copy of ``cfg`` with ``a.b=c`` overrides applied, each typed by the value it replaces."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        name, text = item.split("=", 1)
        parts = name.strip().split(".")
        node = cfg
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise _unknown(".".join(parts[:i + 1]))
            node = node[part]
        free = tuple(parts[:-1]) in _FREE_KEYS
        if parts[-1] not in node and not free:
            raise _unknown(name.strip())
        try:
            node[parts[-1]] = parse_value(text, node.get(parts[-1], 0.0 if free else None))
        except ConfigError as e:
            raise ConfigError(f"--set {name.strip()}: {e}") from None
    return cfg


def _type_ok(value, default) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def validate(cfg: dict) -> dict:
    """Check keys, types and values of a full config; returns it (floats normalised). Raises ConfigError."""
    _check_keys(cfg, DEFAULTS)
    for section, keys in DEFAULTS.items():
        for key, default in keys.items():
            value = cfg[section][key]
            if not _type_ok(value, default):
                raise ConfigError(f"config key '{section}.{key}' must be a {type(default).__name__}, got {value!r}")
            if isinstance(default, float) and value is not None:
                cfg[section][key] = float(value)
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"config key '{section}.{key}' must be one of {allowed}, got {cfg[section][key]!r}")
    for section, key in POSITIVE:
        if not cfg[section][key] > 0:
            raise ConfigError(f"config key '{section}.{key}' must be positive, got {cfg[section][key]!r}")
    weights = cfg["loss"]["weights"]
    for term, w in weights.items():
        if term not in LOSS_TERMS:
            hint = difflib.get_close_matches(str(term), LOSS_TERMS, n=1)
            raise ConfigError(f"unknown loss term 'loss.weights.{term}'" + (f"; did you mean {hint[0]!r}?" if hint
                                                                             else f"; expected {LOSS_TERMS}"))
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
            raise ConfigError(f"loss weight 'loss.weights.{term}' must be a number >= 0, got {w!r}")
    if not any(weights.values()):
        raise ConfigError("every loss weight is 0: nothing to train")
    if cfg["invertible_network"]["type"] == "atlasnet" and (
            weights.get("normal", 0) or cfg["loss"]["volume_implicit"] != "euclidean"):
        raise ConfigError("invertible_network.type=atlasnet has no inverse map: it needs loss.weights.normal=0 "
                          "and loss.volume_implicit=euclidean")
    cats = cfg["data"]["categories"]
    if cats is not None and not (isinstance(cats, list) and all(isinstance(c, str) for c in cats)):
        raise ConfigError(f"config key 'data.categories' must be a list of names or null, got {cats!r}")
    return cfg


def load_config(name_or_path: str | Path = "default", overrides: list[str] = ()) -> dict:
    """Preset or file -> inheritance -> DEFAULTS -> ``--set`` overrides -> validated config dict.

    The result has the sections of DEFAULTS plus ``name`` (the preset's or file's stem).
    """
    tree = read_yaml(resolve(name_or_path))
    _check_keys(tree, DEFAULTS)
    cfg = validate(apply_overrides(deep_merge(DEFAULTS, tree), list(overrides)))
    return {**cfg, "name": Path(str(name_or_path)).stem}


def from_dict(data: dict) -> dict:
    """Validate a stored config (e.g. from a checkpoint) after merging it onto DEFAULTS."""
    name = data.get("name", "checkpoint")
    tree = {k: v for k, v in data.items() if k != "name"}
    _check_keys(tree, DEFAULTS)
    return {**validate(deep_merge(DEFAULTS, tree)), "name": name}


def dump(cfg: dict) -> str:
    """YAML text of a config (sections in DEFAULTS order)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
