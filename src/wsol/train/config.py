"""Training configuration: a tree of dataclasses loaded from YAML, with dotted ``key=value`` overrides.

Every key is checked: an unknown key (in the file or in an override) raises :class:`WSOLError` naming the
key and the valid keys at that level; a value of the wrong type names the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from wsol.errors import WSOLError


@dataclass
class ModelConfig:
    """The classifier: any ``wsol.models.build_model`` name with a pooling head."""

    name: str = "resnet50"
    pool: str = "gap"  # gap | gmp | tap
    tap_theta: float = 0.1
    pretrained: bool = True
    weights: str | None = None  # a local checkpoint loaded after building (offline ImageNet weights)
    large_feature_map: bool = False
    surgery: bool | None = None  # WSOL ResNet surgery (layer4 stride 1); default: for resnet50/vgg16/inception_v3
    num_classes: int | None = None  # default: from the training labels


@dataclass
class DataConfig:
    """Where the images are and how they are fed to the model."""

    format: str = "wsol"  # wsol (metadata splits, localization validation) | folder (class-per-folder tree)
    root: str = ""  # the data root the image ids are relative to (folder: holds train/ [val/] [test/])
    metadata: str | None = None  # the metadata root holding <train_split>/, <val_split>/, <test_split>/
    mask_root: str | None = None  # the mask PNGs' root (PxAP); None = no masks
    train_split: str = "train"
    val_split: str | None = "val"  # train-fullsup; None = no validation
    test_split: str | None = "test"
    pipeline: str = "protocol"  # protocol (resize 256 / crop 224) | cab384 (CAM Back Again, 384 px)
    resize_size: int | None = None  # default: 256 (protocol) or 384 (cab384)
    crop_size: int | None = None  # default: 224 (protocol) or 384 (cab384)
    mean: list[float] | None = None  # default: the model's (data_config), mean = std = 0.5 for cab384
    std: list[float] | None = None
    batch_size: int = 32  # per process
    eval_batch_size: int | None = None
    num_workers: int = 4


@dataclass
class OptimConfig:
    """SGD with a 10x classifier group and step decay (protocol), or AdamW with cosine decay."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    classifier_lr_mult: float = 10.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str | None = None  # step | cosine | none; default: step for sgd, cosine for adamw
    lr_decay_epochs: int = 30  # step: multiply by lr_decay_gamma every this many epochs
    lr_decay_gamma: float = 0.1
    warmup_epochs: int = 0  # cosine: linear warm-up epochs
    min_lr: float = 0.0  # cosine: final learning rate


@dataclass
class EvalConfig:
    """Localization validation after each epoch and the final test."""

    method: str = "cam"  # any wsol.cams method for the GT class (GT-known)
    cam_curve_interval: float = 0.001
    iou_thresholds: list[int] = field(default_factory=lambda: [30, 50, 70])
    select: str = "auto"  # auto (MaxBoxAccV2 with boxes, else PxAP) | MaxBoxAcc | MaxBoxAccV2 | PxAP | top1_cls
    test_checkpoint: str = "best"  # best (by `select` on the val split) | last
    every_n_epochs: int = 1


@dataclass
class TrainerConfig:
    """Lightning trainer settings and the output folder."""

    out_dir: str = "runs/wsol"
    epochs: int = 50
    max_steps: int = -1  # stop after this many optimizer steps (-1: no limit)
    limit_train_batches: float | int = 1.0  # as Lightning: a float is a fraction (1.0 = all), an int a count
    limit_val_batches: float | int = 1.0
    accelerator: str = "auto"
    devices: str = "auto"  # auto | N | "0,1"
    num_nodes: int = 1
    strategy: str = "auto"  # auto = ddp when several devices
    precision: str = "auto"  # auto = 16-mixed on GPU (bf16-mixed where supported), 32 on CPU
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    seed: int = 0
    deterministic: bool = False
    log_every_n_steps: int = 10
    progress_bar: bool = True
    tensorboard: bool = True


@dataclass
class MethodConfig:
    """The WSOL training method and its options, named and defaulted as clovaai/wsolevaluation's ``config.py``
    (``--wsol_method``, ``--has_grid_size``...); see :mod:`wsol.methods`."""

    name: str = "cam"  # cam | has | cutmix | adl | acol | spg
    has_grid_size: int = 4  # HaS: side of the square patches, in pixels (wsolevaluation's meaning)
    has_drop_rate: float = 0.5  # HaS: probability that a patch is hidden
    acol_threshold: float = 0.7  # ACoL: erase where branch A's normalised map is above this
    spg_threshold_1h: float = 0.7  # SPG: (high, low) thresholds of the three pixel pseudo-label maps
    spg_threshold_1l: float = 0.01
    spg_threshold_2h: float = 0.5
    spg_threshold_2l: float = 0.05
    spg_threshold_3h: float = 0.7
    spg_threshold_3l: float = 0.1
    adl_drop_rate: float = 0.75  # ADL: probability of the drop mask (else the importance map)
    adl_threshold: float = 0.9  # ADL: drop where attention > this x its max
    adl_blocks: list[str] | None = None  # ADL: modules after which ADL acts (default: the protocol's places)
    cutmix_beta: float = 1.0  # CutMix: Beta(beta, beta) of the mixing ratio
    cutmix_prob: float = 1.0  # CutMix: probability that a batch is mixed


@dataclass
class TrainConfig:
    """The whole recipe. ``reported`` states what the paper reports for this recipe (documentation only)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reported: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Validate choices and ranges; raise a one-line :class:`WSOLError` naming the key."""
        accelerators, strategies = _lightning_names()
        # Lightning reads these names case-insensitively
        self.trainer.accelerator = self.trainer.accelerator.lower()
        self.trainer.strategy = self.trainer.strategy.lower()
        choices = {
            "model.pool": (self.model.pool, ("gap", "gmp", "tap")),
            "data.format": (self.data.format, ("wsol", "folder")),
            "data.pipeline": (self.data.pipeline, ("protocol", "cab384")),
            "optim.name": (self.optim.name, ("sgd", "adamw")),
            "optim.schedule": (self.optim.schedule, (None, "step", "cosine", "none")),
            "eval.select": (self.eval.select, ("auto", "MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_cls")),
            "eval.test_checkpoint": (self.eval.test_checkpoint, ("best", "last")),
            "trainer.accelerator": (self.trainer.accelerator, accelerators),
            "trainer.strategy": (self.trainer.strategy, strategies),
            "trainer.precision": (self.trainer.precision, PRECISIONS),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise WSOLError(f"config {key}={value!r}: must be one of {', '.join(map(str, valid))}")
        for key in ("trainer.accelerator", "trainer.strategy"):
            value = choices[key][0]
            package = next((pkg for name, pkg in _NEEDS.items() if name in value), None)
            if package is not None and importlib.util.find_spec(package) is None:
                raise WSOLError(f"config {key}={value!r}: needs the {package} package, which is not installed")
        # None = unset (the pipeline's or model's default applies); a given 0 is out of range, not unset
        positive = {"data.batch_size": self.data.batch_size, "data.eval_batch_size": self.data.eval_batch_size,
                    "data.resize_size": self.data.resize_size, "data.crop_size": self.data.crop_size,
                    "optim.lr": self.optim.lr, "optim.classifier_lr_mult": self.optim.classifier_lr_mult,
                    "optim.lr_decay_epochs": self.optim.lr_decay_epochs,
                    "optim.lr_decay_gamma": self.optim.lr_decay_gamma,
                    "trainer.epochs": self.trainer.epochs, "trainer.num_nodes": self.trainer.num_nodes,
                    "trainer.accumulate_grad_batches": self.trainer.accumulate_grad_batches,
                    "eval.every_n_epochs": self.eval.every_n_epochs}
        for key, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise WSOLError(f"config {key}={value!r}: must be {_number(value)}> 0")
        non_negative = {"data.num_workers": self.data.num_workers, "optim.momentum": self.optim.momentum,
                        "optim.weight_decay": self.optim.weight_decay, "optim.warmup_epochs": self.optim.warmup_epochs,
                        "optim.min_lr": self.optim.min_lr}
        for key, value in non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise WSOLError(f"config {key}={value!r}: must be {_number(value)}>= 0")
        # Lightning's limits: a fraction of the batches (float in [0, 1]) or a number of batches (int);
        # 0 training batches or steps would train nothing and leave no checkpoint
        for key, value, least in (("trainer.limit_train_batches", self.trainer.limit_train_batches, 1),
                                  ("trainer.limit_val_batches", self.trainer.limit_val_batches, 0)):
            in_range = (0 < value <= 1 if least else 0 <= value <= 1) if isinstance(value, float) else value >= least
            if not in_range:
                raise WSOLError(f"config {key}={value!r}: must be a fraction of the batches in "
                                f"{'(0' if least else '[0'}, 1.0] or a number of batches >= {least}")
        if not (self.trainer.max_steps == -1 or self.trainer.max_steps > 0):
            raise WSOLError(f"config trainer.max_steps={self.trainer.max_steps!r}: must be > 0 or -1 (no limit)")
        parse_devices(self.trainer.devices)
        from wsol.methods import check_method

        check_method(self.method)
        if not self.data.root:
            raise WSOLError("config data.root: required (the folder the images are in)")
        if self.data.format == "wsol" and not self.data.metadata:
            raise WSOLError("config data.metadata: required with data.format=wsol (the folder of split folders)")
        from wsol.cams import METHODS  # noqa: F401  (validated by get_method when the module is built)


# the precision names Lightning's Trainer accepts ("auto" is ours: see wsol.train.run._precision)
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")
# accelerator/strategy names (substrings) that Lightning registers but that need a package not in our dependencies
_NEEDS = {"tpu": "torch_xla", "xla": "torch_xla", "deepspeed": "deepspeed"}


@functools.cache
def _lightning_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(accelerator names, strategy names) that Lightning's Trainer accepts, from its registries."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerators = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
    return accelerators, ("auto", *sorted(StrategyRegistry.available_strategies()))


def _number(value: float) -> str:
    return "a finite number " if isinstance(value, float) else ""


def parse_devices(text: str | int) -> str | int | list[int]:
    """``trainer.devices`` as Lightning takes it: "auto", a count (-1 = all) or device indices (``0,1``)."""
    value = str(text).strip()
    if value == "auto":
        return "auto"
    if re.fullmatch(r"-?[0-9]+", value):
        if int(value) == -1 or int(value) > 0:
            return int(value)
    else:
        parts = value.replace(",", " ").split()
        if parts and all(re.fullmatch(r"[0-9]+", part) for part in parts):
            return [int(part) for part in parts]
    raise WSOLError(f"config trainer.devices={text!r}: expected auto, a number of devices "
                    "(> 0, or -1 for all) or device indices like 0,1")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(value) in args:  # already one of the types: keep it (limit_train_batches 5 is 5 batches, not 5.0)
            return value
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except WSOLError as exc:
                errors.append(str(exc))
        raise WSOLError(errors[0] if len(errors) == 1 else
                        f"config {key}={value!r}: expected {' or '.join(_type_name(a) for a in args)}")
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise WSOLError(f"config {key}={value!r}: expected a list")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise WSOLError(f"config {key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise WSOLError(f"config {key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise WSOLError(f"config {key}={value!r}: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise WSOLError(f"config {key}={value!r}: expected an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise WSOLError(f"config {key}={value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise WSOLError(f"config {key}={value!r}: expected a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise WSOLError(f"config {key}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def build_section(cls: type, data: Any, prefix: str) -> Any:
    """The config dataclass ``cls`` from a mapping, sections recursively; errors name keys as ``prefix + key``."""
    if not isinstance(data, dict):
        if not prefix:
            raise WSOLError(f"config: expected a mapping of sections, got {type(data).__name__}")
        section = prefix.rstrip(".")
        keys = [f.name for f in fields(cls)]
        raise WSOLError(f"config {section}={data!r}: {section} is a section, not a value; set its keys, e.g. "
                        f"{section}.{keys[0]}=... (keys: {', '.join(keys)})")
    hints = typing.get_type_hints(cls)
    valid = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in valid:
            raise WSOLError(f"config: unknown key {dotted!r}; valid keys{' under ' + prefix[:-1] if prefix else ''}: "
                            f"{', '.join(valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_section(tp, value if value is not None else {}, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, tp, dotted)
    return cls(**kwargs)


def _merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise WSOLError(f"override {text!r}: expected key=value, e.g. optim.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                cls: type[TrainConfig] = TrainConfig, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from the defaults), apply ``key=value`` overrides, validate.

    ``cls`` is the config tree to build (a subclass adds sections, e.g. F-CAM's ``fcam``) and ``defaults``
    are values the recipe starts from before the file and the overrides are merged in.
    """
    data: dict[str, Any] = _merge({}, defaults or {})
    if path is not None:
        from wsol.configs import find_config

        path = find_config(path)  # a file, or a shipped config by name (`wsol configs`)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise WSOLError(f"{path}: not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset "
                            f"{exc.start}); a config is a YAML file") from None
        except OSError as exc:
            raise WSOLError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        except yaml.reader.ReaderError as exc:  # a control character (e.g. NUL): a binary file, most likely
            raise WSOLError(f"{path}: not a YAML text file (character {exc.character:#04x} at offset "
                            f"{exc.position}: {exc.reason})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise WSOLError(f"{path}{where}: not valid YAML ({problem})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise WSOLError(f"{path}: the config must be a mapping of sections (model, data, optim, ...)")
        data = _merge(data, loaded or {})
    given: list[tuple[str, str]] = []  # (dotted key, override): an error in one of these keys is the override's
    for text in overrides:
        keys, value = parse_override(text)
        given.append((".".join(keys), text))
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        data = _merge(data, nested)
    try:
        config = build_section(cls, data, "")
    except WSOLError as exc:
        culprit = _override_of(str(exc), given)
        if culprit is not None:
            raise WSOLError(culprit) from None
        raise WSOLError(f"{path}: {exc}" if path is not None else str(exc)) from None
    return config


_ERROR_KEY = re.compile(r"config(?: (?P<key>[\w.\[\]]+)(?:=.*?)?|: unknown key '(?P<unknown>[^']+)')(?:: |; )")


def _override_of(message: str, given: list[tuple[str, str]]) -> str | None:
    """``message`` (an error of :func:`build_section`) said of the command-line override that set its key, if one
    did: ``override optim.lr=abc: expected a number`` rather than blaming the config file."""
    match = _ERROR_KEY.match(message)
    if match is None:
        return None
    key = match["key"] or match["unknown"]
    for dotted, text in reversed(given):  # the last override of a key is the one that counts
        if key == dotted or key.startswith((dotted + ".", dotted + "[")):
            why = message[match.end():] if match["key"] else message[len("config: "):]
            return f"override {text.strip()}: {why}"
    return None


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from a checkpoint)."""
    return build_section(TrainConfig, data, "")
