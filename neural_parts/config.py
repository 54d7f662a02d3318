"""Run configurations: a typed tree of dataclasses that YAML presets and ``--set`` overrides fill.

The dataclasses below are the one place where every setting, its default, its type and its allowed values
are declared. A preset is a name (``neural_parts/configs/<name>.yaml``) or a path; a top-level ``base:``
(a preset name or a path relative to the file) is loaded first and the file is deep-merged onto it.
Unknown keys are errors with a did-you-mean suggestion. Sections mirror the authors' configs (data,
network, feature_extractor, invertible_network, projection_layer, loss, training, validation) plus
``runtime``. Code reads settings as attributes: ``cfg.training.lr``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
LOSS_TERMS = ("chamfer", "normal", "occupancy", "coverage", "overlap")
_UNIONS = (typing.Union, types.UnionType)


class ConfigError(UserError, ValueError):
    """A user error in a configuration (bad file, unknown key, wrong type or value)."""


def setting(default, *, choices: tuple | None = None, minimum: float | None = None, positive: bool = False):
    """A dataclass field with its validation rule: one of ``choices``, ``>= minimum`` or ``> 0``."""
    meta = {"choices": choices, "minimum": minimum, "positive": positive}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """Base of the config sections: every field is checked (type, finiteness, its ``setting`` rule) when
    a section is made, so a section object is always valid."""

    section: typing.ClassVar[str]

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_value(self.section, f, getattr(self, f.name), hints[f.name]))


@dataclass
class DataConfig(Section):
    section = "data"
    dataset: str = "synthetic-v1"  # a name under $NEURAL_PARTS_DATA or a folder with <split>.h5
    train_split: str = "train"
    val_split: str = "val"
    categories: list[str] | None = None  # categories to keep, None = all
    image_size: int = setting(224, positive=True)
    n_points_in_mesh: int = setting(5000, positive=True)  # volume points per sample (N)
    n_points_on_mesh: int = setting(1500, positive=True)  # surface points per sample (N_s)
    equal: bool = True  # half inside / half outside with importance weights
    random_view: bool = False
    num_workers: int = setting(0, minimum=0)


@dataclass
class NetworkConfig(Section):
    section = "network"
    n_primitives: int = setting(6, positive=True)
    sphere_radius: float = setting(0.25, positive=True)
    init: str = setting("random", choices=("random", "parts"))  # parts: start on the constant shape's parts
    part_split: str = setting("kmeans", choices=("kmeans", "spectral", "mesh"))  # how init=parts splits (mesh: fit)


@dataclass
class FeatureExtractorConfig(Section):
    section = "feature_extractor"
    type: str = setting("resnet18", choices=("resnet18", "latent"))
    feature_size: int = setting(256, positive=True)
    width: int = setting(64, positive=True)  # channels of the ResNet-18's first stage (64: torchvision's)
    freeze_bn: bool = True
    weights: str | None = None  # torchvision resnet18 state dict path, or "none" to train from scratch


@dataclass
class InvertibleNetworkConfig(Section):
    section = "invertible_network"
    type: str = setting("simple_nvp", choices=("simple_nvp", "atlasnet"))  # atlasnet: the authors' ablation
    hidden_size: int = setting(256, positive=True)
    n_blocks: int = setting(4, positive=True)
    normalize: bool = True  # the sigma = elu(.) + 1 scale head
    explicit_affine: bool = True  # the quaternion rotation and translation heads


@dataclass
class ProjectionLayerConfig(Section):
    section = "projection_layer"
    proj_dims: int = setting(128, positive=True)
    init_gain: float = setting(1.0, positive=True)  # x the first Linear's default initial weights (fit: 64, humans: 4)


@dataclass
class LossConfig(Section):
    """The objective's settings; defaults are the authors' D-FAUST config."""

    section = "loss"

    weights: dict[str, float] = setting({"chamfer": 0.3, "normal": 0.01, "occupancy": 1.0, "coverage": 0.01,
                                         "overlap": 0.1})
    sharpness: float = setting(250.0, positive=True)
    min_n_points: int = setting(10, minimum=0)
    max_shared_points: float = setting(1.95, minimum=0)
    coverage_eps: float = setting(1e-6, minimum=0)  # 0: the exact -log(sigmoid), no floor (losses.coverage_loss)
    n_points_on_sphere: int = setting(200, positive=True)
    volume_implicit: str = setting("euclidean", choices=("euclidean", "inn"))
    test_own_primitive: bool = True  # the authors' training behaviour
    union_surface: bool = True

    def __post_init__(self):
        super().__post_init__()
        for term, w in self.weights.items():
            if term not in LOSS_TERMS:
                hint = difflib.get_close_matches(str(term), LOSS_TERMS, n=1)
                raise ConfigError(f"unknown loss term 'loss.weights.{term}'" + (
                    f"; did you mean {hint[0]!r}?" if hint else f"; expected {LOSS_TERMS}"))
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"loss weight 'loss.weights.{term}' must be a finite number >= 0, got {w!r}")
        self.weights = {k: float(v) for k, v in self.weights.items()}
        if not any(self.weights.values()):
            raise ConfigError("every loss weight is 0: nothing to train")

    def weight(self, term: str) -> float:
        return float(self.weights.get(term, 0.0))


@dataclass
class TrainingConfig(Section):
    section = "training"
    optimizer: str = setting("radam", choices=("adam", "radam"))
    lr: float = setting(5e-5, positive=True)
    lr_schedule: str = setting("constant", choices=("constant", "cosine"))  # cosine: lr -> lr * lr_final
    warmup_steps: int = setting(0, minimum=0)  # linear warm-up from 0 over this many updates
    lr_steps: int = setting(0, minimum=0)  # length of the cosine decay in updates (0: max_steps)
    lr_final: float = setting(0.05, minimum=0)  # cosine: the lr at its end, as a fraction of lr
    weight_decay: float = setting(0.0, minimum=0)
    placement_lr_scale: float = setting(1.0, positive=True)  # x lr for all but the couplings and their
    # projection: the affine heads, primitive embedding and encoder or latent codes, which place the primitives
    batch_size: int = setting(1, positive=True)  # per rank: an update uses batch_size x world size x aggregate
    aggregate: int = setting(2, positive=True)  # mini-batches per update (per rank); gradients are summed
    clip_grad_norm: float = setting(1.0, minimum=0)  # after every backward, as the authors (several ranks: once,
    # after the all-reduce; see distributed.py); 0 = off
    max_steps: int = setting(0, minimum=0)  # optimiser updates; 0 = until interrupted
    max_nonfinite_steps: int = setting(10, positive=True)  # consecutive skipped (NaN/inf) updates before stopping
    checkpoint_every: int = setting(500, positive=True)  # updates between last.pt / step_<n>.pt
    keep_checkpoints: int = setting(3, minimum=0)  # step_<n>.pt files kept (0 = all)
    log_every: int = setting(10, positive=True)
    ema_decay: float = setting(0.0, minimum=0)  # > 0: validate and save a moving average of the weights
    # (engine.WeightAverage); 0.99 averages over ~100 updates

    def __post_init__(self):
        super().__post_init__()
        if self.ema_decay >= 1:
            raise ConfigError(f"config key 'training.ema_decay' must be below 1 (0 = off), got {self.ema_decay}")


@dataclass
class ValidationConfig(Section):
    section = "validation"
    every_seconds: float = setting(0.0, minimum=0)  # validate + preview every this many seconds (0: every_steps)
    every_steps: int = setting(5000, positive=True)
    n_shapes: int = setting(32, positive=True)  # fixed seeded subset of the validation split
    n_points_in_mesh: int = setting(5000, positive=True)
    seed: int = 0
    preview_shapes: int = setting(4, minimum=0)


@dataclass
class RuntimeConfig(Section):
    section = "runtime"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 27
    tf32: bool = True  # torch.set_float32_matmul_precision("high")
    kernel_backend: str = setting("auto", choices=("auto", "triton", "reference"))
    amp_encoder: bool = False  # bf16 autocast for the image encoder (CUDA only)
    threads: int = setting(0, minimum=0)  # torch CPU threads, 0 = torch's default
    tensorboard: bool = True  # when the tensorboard package is installed
    collective_timeout_s: float = setting(600.0, positive=True)  # torchrun: how long a rank waits for the others


@dataclass
class Config:
    """One run's settings. ``name`` is the preset's or file's stem."""

    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    feature_extractor: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    invertible_network: InvertibleNetworkConfig = field(default_factory=InvertibleNetworkConfig)
    projection_layer: ProjectionLayerConfig = field(default_factory=ProjectionLayerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    name: str = "default"

    def __post_init__(self):
        if self.invertible_network.type == "atlasnet" and (self.loss.weight("normal") or
                                                           self.loss.volume_implicit != "euclidean"):
            raise ConfigError("invertible_network.type=atlasnet has no inverse map: it needs loss.weights.normal=0 "
                              "and loss.volume_implicit=euclidean")
        if self.invertible_network.type == "atlasnet" and self.network.init == "parts":
            raise ConfigError("network.init=parts sets the coupling network's affine heads; "
                              "invertible_network.type=atlasnet has none: use network.init=random")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, overrides: list[str]) -> Config:
        """A validated copy with ``a.b=c`` overrides applied."""
        return build(apply_overrides(self.to_dict(), overrides))


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}
_FREE_KEYS = {("loss", "weights")}  # dict-valued settings whose own keys are checked by _check_loss


def _section_types() -> dict[str, dict[str, typing.Any]]:
    hints = typing.get_type_hints(Config)
    return {name: typing.get_type_hints(hints[name]) for name in SECTIONS}


def defaults() -> dict:
    """Every setting with its default value, as a nested dict (without ``name``)."""
    tree = Config().to_dict()
    tree.pop("name")
    return tree


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
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    try:
        _check_keys(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if base is None:
        return data
    return deep_merge(read_yaml(resolve(base, path.parent), _seen + (path,)), data)


def _dotted_keys() -> list[str]:
    keys = []
    for section, fields in _section_types().items():
        keys += [section] + [f"{section}.{key}" for key in fields]
    return keys


def _unknown(name: str) -> ConfigError:
    hint = difflib.get_close_matches(name, _dotted_keys(), n=1, cutoff=0.6)
    return ConfigError(f"unknown config key {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _check_keys(tree: dict) -> None:
    types = _section_types()
    for section, values in tree.items():
        if section == "name":
            continue
        if section not in types:
            raise _unknown(section)
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        for key in values:
            if key not in types[section]:
                raise _unknown(f"{section}.{key}")


def parse_value(text: str, kind):
    """Convert an override string to the type ``kind`` of the setting it replaces (YAML for the rest)."""
    if kind is bool:
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}") from None
    if kind is str:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {text!r}: {e}") from None


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """A copy of the nested dict ``tree`` with ``a.b=c`` overrides applied, each typed by its setting."""
    tree = copy.deepcopy(tree)
    types = _section_types()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        name, text = (s.strip() for s in item.split("=", 1))
        parts = name.split(".")
        if parts[0] not in types:
            raise _unknown(name)
        section = tree.setdefault(parts[0], {})
        if len(parts) == 3 and tuple(parts[:2]) in _FREE_KEYS:
            kind = float
            target, key = section.setdefault(parts[1], copy.deepcopy(defaults()[parts[0]][parts[1]])), parts[2]
        elif len(parts) == 2 and parts[1] in types[parts[0]]:
            kind, target, key = _plain_type(types[parts[0]][parts[1]]), section, parts[1]
        else:
            raise _unknown(name)
        try:
            target[key] = parse_value(text, kind)
        except ConfigError as e:
            raise ConfigError(f"--set {name}: {e}") from None
    return tree


def _plain_type(hint):
    """bool / int / float / str for simple settings, None for the rest (parsed as YAML)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint in (bool, int, float, str):
        return hint
    if typing.get_origin(hint) in _UNIONS and len(args) == 1:
        return args[0] if args[0] in (bool, int, float, str) else None
    return None


def _type_ok(value, hint) -> bool:
    if value is None:
        return type(None) in typing.get_args(hint) or hint is type(None)
    kind = _plain_type(hint)
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint) or hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in _UNIONS:
        origin = typing.get_origin(args[0]) or args[0]
    if origin is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _check_value(section: str, f: dataclasses.Field, value, hint):
    name = f"{section}.{f.name}"
    if not _type_ok(value, hint):
        kind = _plain_type(hint)
        expected = kind.__name__ if kind else str(hint).replace("typing.", "")
        raise ConfigError(f"config key '{name}' must be a {expected}, got {value!r}")
    if _plain_type(hint) is float and value is not None:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config key '{name}' must be a finite number, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"config key '{name}' must be one of {meta['choices']}, got {value!r}")
    if meta.get("positive") and not value > 0:
        raise ConfigError(f"config key '{name}' must be positive, got {value!r}")
    if meta.get("minimum") is not None and not value >= meta["minimum"]:
        raise ConfigError(f"config key '{name}' must be >= {meta['minimum']}, got {value!r}")
    return value


def build(tree: dict, name: str | None = None) -> Config:
    """A validated ``Config`` from a nested dict (missing settings take their defaults)."""
    tree = dict(tree)
    name = str(tree.pop("name", None) or name or "default")
    _check_keys(tree)
    merged = deep_merge(defaults(), tree)
    hints = typing.get_type_hints(Config)
    return Config(**{section: hints[section](**merged[section]) for section in SECTIONS}, name=name)


def load_config(name_or_path: str | Path = "default", overrides: list[str] = ()) -> Config:
    """Preset or file -> inheritance -> defaults -> ``--set`` overrides -> validated ``Config``."""
    tree = read_yaml(resolve(name_or_path))
    return build(apply_overrides(tree, list(overrides)), Path(str(name_or_path)).stem)


def from_dict(data: dict) -> Config:
    """Validate a stored config (e.g. from a checkpoint); settings it lacks take today's defaults."""
    return build(data, data.get("name", "checkpoint"))


def dump(cfg: Config) -> str:
    """YAML text of a config (sections in declaration order)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
