"""``wsol.models.load``: one entry for every checkpoint format, detected from the file.

=========================  =========================================================  ===========================
format                     what the file holds                                          preprocessing
=========================  =========================================================  ===========================
``wsol-train``             a ``wsol train`` checkpoint (``"wsol"`` record)              as recorded
``fcam``                   an F-CAM checkpoint (classifier + decoder)                   as recorded
``wsolevaluation``         clovaai/wsolevaluation ``{'architecture', 'state_dict'}``    224, ImageNet mean / std
                           (CAM, ACoL, SPG, ADL: the method from the keys)
``cam-back-again-convnext`` CAM Back Again's ``Sequential(ConvNeXt[:-2], Net2Head)``    384, mean = std = 0.5
``cam-back-again-replknet`` official RepLKNet keys, head ``Linear(C, K)``, K != 1000    384, mean = std = 0.5
``replknet`` / ``slak``    the authors' ImageNet checkpoints (merged or not)            the registered default
``timm``                   a timm / torchvision state dict (ResNet, ConvNeXt, ...)      timm's default (WSOL: 224)
``state-dict``             a ``WSOLClassifier.state_dict()`` (needs ``model=``)         the model's default
=========================  =========================================================  ===========================

Wrappers (``model`` / ``state_dict`` / ``module.`` / ``_orig_mod.`` prefixes) are removed first. Where the
file does not name the architecture it is inferred from the tensor shapes (RepLKNet 31B / 31L / XL, SLaK,
ConvNeXt T / S / B / L / XL and ResNet depths from the channel widths and block counts), and
:attr:`CheckpointInfo.inferred` says what was inferred. ``model=`` overrides the architecture; one that
contradicts the file is an error. Every problem is one :class:`~wsol.errors.WSOLError` line naming the file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.files import read_checkpoint

#: CAM Back Again's ``generate_heatmap.py``: ``Resize((384, 384))``, ``Normalize((0.5,), (0.5,))``.
CAM_BACK_AGAIN_DATA = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 384, 384),
                       "interpolation": "bilinear", "crop_pct": 1.0}
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net")
_WSOLEVAL_METHOD_KEYS = {"classifier_A.": "acol", "SPG_B_": "spg", "SPG_C.": "spg"}
#: Where wsolevaluation's weightless ADL modules sit in its Sequentials (``_ADL_POSITION`` of ``wsol/resnet.py``:
#: after ResNet's layer3 block 0 and layer4 blocks 0 and 2; the ``'A'`` entries of ``wsol/vgg.py``'s ``adl``
#: configs, the last one at the end): each shifts the later indices by one.
_ADL_SLOTS = {"resnet50": {"layer3": (1,), "layer4": (1, 4)}, "vgg16": {"features": (17, 24)}}
_OVERRIDES = ("model", "large_feature_map", "surgery", "pool", "tap_theta")


@dataclass
class CheckpointInfo:
    """What :func:`load` found in a file (``model.checkpoint_info``; ``wsol inspect`` prints it)."""

    path: str
    format: str
    architecture: str
    num_classes: int
    class_names: list[str] | None = None
    build: dict[str, Any] = field(default_factory=dict)  # build_model keyword arguments besides name and K
    data_config: dict[str, Any] | None = None  # None: the built model's own
    inferred: list[str] = field(default_factory=list)
    head: str = ""
    method: str = "cam"  # the WSOL training method whose network the file holds (acol, spg, adl...)


@dataclass
class _Plan:
    info: CheckpointInfo
    state: dict[str, Tensor]  # in the keys of the file, mapped by ``remap`` once the model is built
    remap: Callable[[nn.Module, dict[str, Tensor]], dict[str, Tensor]] | None = None
    adapt: Callable[[nn.Module], None] | None = None  # a change to the built model (e.g. drop a head norm)


def load(path: str | Path, *, map_location: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """The classifier (or F-CAM model) stored in ``path``, in eval mode, with ``model.checkpoint_info``.

    Overrides: ``model`` (architecture name), ``large_feature_map`` and ``surgery`` (WSOL backbones; a
    wsolevaluation file does not record ``large_feature_map``), ``pool`` / ``tap_theta`` (pooling head).
    """
    unknown = sorted(set(overrides) - set(_OVERRIDES))
    if unknown:
        raise WSOLError(f"load: unknown override(s) {', '.join(unknown)}; valid: {', '.join(_OVERRIDES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    path = Path(path)
    if path.is_dir():
        raise WSOLError(f"{path}: is a folder, not a checkpoint file")
    obj = read_checkpoint(path, "checkpoint", map_location="cpu")
    from wsol.fcam.checkpoint import is_fcam_checkpoint

    if is_fcam_checkpoint(obj):
        return _load_fcam(path, obj, overrides, map_location)
    plan = _plan(path, obj, overrides)
    return _instantiate(path, plan).to(map_location).eval()


def inspect(path: str | Path, **overrides: Any) -> CheckpointInfo:
    """:func:`load`'s findings about ``path`` (format, architecture, classes, head, preprocessing)."""
    return load(path, **overrides).checkpoint_info


# ---------------------------------------------------------------------------------------------- building
def _instantiate(path: Path, plan: _Plan) -> nn.Module:
    from wsol.models.classifier import check_finite_weights, load_state_strict
    from wsol.models.factory import build_model

    info = plan.info
    try:
        model = build_model(info.architecture, num_classes=info.num_classes, pretrained=False, **info.build)
    except WSOLError as exc:
        raise WSOLError(f"{path}: {exc}") from None
    if plan.adapt is not None:
        plan.adapt(model)
    state = plan.remap(model, plan.state) if plan.remap is not None else plan.state
    _merge_large_kernels(model, state)
    load_state_strict(model, state, f"{path}: weights do not match {info.architecture} ({info.format})")
    check_finite_weights(model, path)
    if info.class_names is not None:
        model.class_names = list(info.class_names)
    if info.data_config:
        model.data_config = {**model.data_config, **info.data_config}
    info.head = head_kind(model)
    info.data_config = dict(model.data_config)
    model.checkpoint_info = info
    return model


def _merge_large_kernels(model: nn.Module, state: dict[str, Tensor]) -> None:
    """A merged (``lkb_reparam``) RepLKNet / SLaK file: re-parameterise the model first (then for inference)."""
    if not any(".lkb_reparam." in k for k in state):
        return
    from wsol.models.official import ReparamLargeKernelConv

    for name, module in model.named_modules():
        if isinstance(module, ReparamLargeKernelConv) and not module.merged \
                and f"{name}.lkb_reparam.weight" in state:
            module.merge()


def head_kind(model: nn.Module) -> str:
    """``linear``, ``batchnorm`` (BN before pooling, RepLKNet), ``layernorm`` (after pooling) + the pooling."""
    from wsol.models.heads import BatchNormHead, LayerNormHead

    head = getattr(model, "head", None)
    kind = "batchnorm" if isinstance(head, BatchNormHead) else "layernorm" if isinstance(head, LayerNormHead) \
        else "linear"
    pool = getattr(getattr(head, "pool", None), "kind", "gap")
    return f"{pool} -> {kind}" if kind == "linear" else f"{kind} + {pool} -> linear"


def _load_fcam(path: Path, obj: Mapping[str, Any], overrides: dict[str, Any],
               map_location: str | torch.device) -> nn.Module:
    from wsol.fcam.checkpoint import load_fcam

    recorded = str((obj.get("wsol") or {}).get("model", ""))
    _check_override(path, overrides, recorded, "fcam")
    model = load_fcam(path, map_location="cpu")
    clf = model.classifier
    info = CheckpointInfo(str(path), "fcam", recorded, int(clf.num_classes), clf.class_names,
                          data_config=dict(clf.data_config), head=head_kind(clf))
    model.checkpoint_info = info
    clf.checkpoint_info = info
    return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------- detection
def _plan(path: Path, obj: Any, overrides: dict[str, Any]) -> _Plan:
    if isinstance(obj, Mapping) and isinstance(obj.get("wsol"), Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return _wsol_train(path, obj, overrides)
    if isinstance(obj, Mapping) and isinstance(obj.get("architecture"), str) \
            and isinstance(obj.get("state_dict"), Mapping):
        return _wsolevaluation(path, obj, overrides)
    state = unwrap_state_dict(obj, path)
    for detect in (_cam_back_again_convnext, _replknet, _slak, _convnext, _resnet, _wsol_state_dict):
        plan = detect(path, state, overrides)
        if plan is not None:
            return plan
    return _by_override(path, state, overrides)


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The ``{name: tensor}`` weights inside common wrappers, without ``module.`` / ``_orig_mod.`` prefixes."""
    for _ in range(4):
        if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise WSOLError(f"{path}: not a checkpoint of weights (found {type(obj).__name__})")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise WSOLError(f"{path}: no weight tensors in the checkpoint")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _base(name: str) -> str:
    """``resnet50.tv_in1k`` -> ``resnet50`` (a timm pretrained tag names weights, not an architecture)."""
    return str(name).split(".", 1)[0].lower()


def _check_override(path: Path, overrides: dict[str, Any], recorded: str, fmt: str) -> None:
    wanted = overrides.get("model")
    if wanted is not None and recorded and _base(wanted) != _base(recorded):
        raise WSOLError(f"model {wanted!r} contradicts {path}, a {fmt} checkpoint of {recorded!r}; "
                        "leave the model out (the file names it)")


def _build_args(overrides: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    out = dict(defaults)
    out.update({k: overrides[k] for k in ("large_feature_map", "surgery", "pool", "tap_theta") if k in overrides})
    return out


def _class_names(path: Path, names: Any, k: int) -> list[str] | None:
    if not names:
        return None
    if not isinstance(names, (list, tuple)) or len(names) != k:
        count = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        raise WSOLError(f"{path}: the file names {count} classes but its classifier has {k}")
    return [str(n) for n in names]


def _tuple_lists(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _wsol_train(path: Path, obj: Mapping[str, Any], overrides: dict[str, Any]) -> _Plan:
    meta = dict(obj["wsol"])
    name = str(meta.get("model") or "")
    if not name:
        raise WSOLError(f"{path}: its 'wsol' record names no model")
    _check_override(path, overrides, name, "wsol train")
    state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise WSOLError(f"{path}: a 'wsol' record without classifier weights (no 'model.' keys)")
    k = _num_classes(path, meta.get("num_classes"))
    build = _build_args(overrides, pool=str(meta.get("pool", "gap")), tap_theta=float(meta.get("tap_theta", 0.1)),
                        large_feature_map=bool(meta.get("large_feature_map", False)), surgery=meta.get("surgery"))
    dc = _tuple_lists(meta["data_config"]) if isinstance(meta.get("data_config"), Mapping) else None
    info = CheckpointInfo(str(path), "wsol-train", name, k, _class_names(path, meta.get("class_names"), k),
                          build, dc)
    if isinstance(meta.get("method"), Mapping):
        info.method = str(meta["method"].get("name", "cam"))
    return _Plan(info, state, adapt=_method_setup(path, meta.get("method")))


def _method_setup(path: Path, record: Any) -> Callable[[nn.Module], None] | None:
    """The recorded training method's network change (ACoL's branches, ADL's layers...), before loading."""
    if not isinstance(record, Mapping) or record.get("name", "cam") == "cam":
        return None
    from wsol.methods import get_training_method
    from wsol.train.config import MethodConfig

    known = {f.name for f in dataclasses.fields(MethodConfig)}
    try:
        method = get_training_method(MethodConfig(**{k: v for k, v in record.items() if k in known}))
    except WSOLError as exc:
        raise WSOLError(f"{path}: its training method record: {exc}") from None
    return method.setup


def _num_classes(path: Path, value: Any) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise WSOLError(f"{path}: its record has no valid num_classes ({value!r})") from None
    if k < 1:
        raise WSOLError(f"{path}: num_classes must be >= 1, got {k}")
    return k


def _shape0(state: Mapping[str, Tensor], key: str, path: Path) -> int:
    if key not in state:
        raise WSOLError(f"{path}: no classifier weights ({key})")
    return int(state[key].shape[0])


def _wsolevaluation(path: Path, obj: Mapping[str, Any], overrides: dict[str, Any]) -> _Plan:
    arch = str(obj["architecture"])
    if arch not in ("resnet50", "vgg16", "inception_v3"):
        raise WSOLError(f"{path}: wsolevaluation architecture {arch!r} unknown (resnet50, vgg16, inception_v3)")
    _check_override(path, overrides, arch, "wsolevaluation")
    state = unwrap_state_dict(obj["state_dict"], path)
    method = _wsolevaluation_method(state, arch)
    inferred: list[str] = [] if method == "cam" else [f"method {method} (from its keys)"]
    if method == "adl":  # ADL holds no weights: its model is the CAM one, the indices after it shifted
        state = {_unshift_adl_key(k, arch): v for k, v in state.items()}
        inferred.append("ADL's drop rate and threshold are not recorded: the defaults (ADL is the identity at test)")
    large = overrides.get("large_feature_map")
    if arch == "vgg16" and method in ("cam", "adl"):
        has_pool4 = "features.23.weight" not in state  # the 28 x 28 config drops pool4: conv5_1 moves to 23
        if large is None:
            large = not has_pool4
            inferred.append(f"large_feature_map={large} (from the feature layers' indices)")
        elif large == has_pool4:
            raise WSOLError(f"{path}: large_feature_map={large} contradicts its VGG feature layers")
        if not has_pool4:
            state = {_shift_vgg_key(k): v for k, v in state.items()}
    elif large is None:
        large = False
        inferred.append("large_feature_map=False (wsolevaluation files do not record it; override it with "
                        "large_feature_map=True / --large-feature-map)")
    if method == "acol":
        key = "classifier_A.4.weight"
        inferred.append("acol_threshold=0.7 (wsolevaluation's default; the file does not record the erasing "
                        "threshold, which ACoL's map uses)")
    elif method == "spg":
        key = "SPG_A_4.weight" if arch == "vgg16" else "SPG_A4.weight"
    else:
        key = "SPG_A4.weight" if arch == "inception_v3" else "fc.weight"
    k = _shape0(state, key, path)
    build = _build_args({**overrides, "large_feature_map": large}, surgery=True)
    info = CheckpointInfo(str(path), "wsolevaluation", arch, k, None, build, None, inferred, method=method)
    adapt = None if method == "cam" else _method_setup(path, {"name": method})
    return _Plan(info, state, remap=lambda m, s: m.remap_external_keys(s), adapt=adapt)


def _wsolevaluation_method(state: Mapping[str, Tensor], arch: str) -> str:
    """``cam``, ``acol``, ``spg`` or ``adl``: ACoL and SPG by their modules' names, ADL by the gaps its weightless
    modules leave in the Sequentials' indices (an InceptionV3 ADL file has the CAM keys: it loads as CAM, which
    at test time it is)."""
    for prefix, method in _WSOLEVAL_METHOD_KEYS.items():
        if any(k.startswith(prefix) for k in state):
            return method
    return "adl" if _has_adl_gap(state, arch) else "cam"


def _unshift_adl_key(key: str, arch: str) -> str:
    """A key of wsolevaluation's ADL model -> that of its CAM model (the ADL slots before the index removed)."""
    for seq, slots in _ADL_SLOTS.get(arch, {}).items():
        m = re.match(rf"{seq}\.(\d+)\.(.*)", key)
        if m:
            i = int(m.group(1))
            return f"{seq}.{i - sum(slot < i for slot in slots)}.{m.group(2)}"
    return key


def _shift_vgg_key(key: str) -> str:
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if m and int(m.group(1)) >= 23:
        return f"features.{int(m.group(1)) + 1}.{m.group(2)}"
    return key


def _has_adl_gap(state: Mapping[str, Tensor], arch: str) -> bool:
    """ADL modules hold no weights but take a place in their Sequential: the block indices skip one (ResNet's
    layer3), VGG's conv4_1 sits at 18 (after pool3 and an ADL) where the CAM configs have a ReLU."""
    if arch == "vgg16":
        return "features.18.weight" in state
    if arch != "resnet50":
        return False
    idx = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    return bool(idx) and idx != set(range(len(idx)))


# -- shape-based detectors: each returns None when the keys are not its layout
_CONVNEXTS = {"convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
              "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
              "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
              "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
              "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
              "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
              "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
              "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
              "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048))}


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """How many distinct indices fill ``{}`` in the keys matching ``pattern`` (a regex with one ``(\\d+)``)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _convnext_spec(state: Mapping[str, Tensor], stages: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    depths, dims = [], []
    for i in range(4):
        key = f"{stages}{i}.blocks.0.conv_dw.weight"
        if key not in state:
            return None
        dims.append(int(state[key].shape[0]))
        depths.append(_count(state, rf"{re.escape(stages)}{i}\.blocks\.(\d+)\."))
    return tuple(depths), tuple(dims)


def _convnext_name(depths: tuple[int, ...], dims: tuple[int, ...], inferred: list[str]) -> tuple[str, dict]:
    for name, (d, c) in _CONVNEXTS.items():
        if (d, c) == (depths, dims):
            inferred.append(f"architecture {name} (depths {list(depths)}, widths {list(dims)})")
            return name, {}
    inferred.append(f"a ConvNeXt of depths {list(depths)} and widths {list(dims)} (no named variant)")
    return "convnext_tiny", {"depths": depths, "dims": dims}


def _drop_head_norm(model: nn.Module) -> None:
    from wsol.models.heads import LinearHead

    model.head = LinearHead(model.head.fc, model.head.pool)


def _cam_back_again_convnext(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan | None:
    if "1.fc.weight" not in state or not any(k.startswith("0.0.") for k in state):
        return None
    spec = _convnext_spec(state, "0.1.")
    if spec is None:
        raise WSOLError(f"{path}: CAM Back Again layout (0.* backbone, 1.fc head) without ConvNeXt stages")
    inferred: list[str] = []
    name, extra = _convnext_name(*spec, inferred)
    _check_override(path, overrides, name, "CAM Back Again ConvNeXt")
    inferred.append("its Net2Head pools 12 x 12 by AvgPool2d: a GAP at 384 px, here a GAP at any size")
    mapped = {}
    for key, value in state.items():
        if key.startswith("0.0."):
            mapped["backbone.stem." + key[4:]] = value
        elif key.startswith("0.1."):
            mapped["backbone.stages." + key[4:]] = value
        elif key.startswith("1.fc."):
            mapped["head.fc." + key[5:]] = value
        else:
            mapped[key] = value  # reported as unexpected
    k = int(state["1.fc.weight"].shape[0])
    info = CheckpointInfo(str(path), "cam-back-again-convnext", name, k, None, _build_args(overrides, **extra),
                          dict(CAM_BACK_AGAIN_DATA), inferred)
    return _Plan(info, mapped, adapt=_drop_head_norm)


def _replknet(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan | None:
    if "stem.0.conv.weight" not in state or not any(k.startswith("transitions.") for k in state):
        return None
    from wsol.models.replknet import _ARCHS

    channels, layers, kernels, small = [], [], [], None
    dw_ratio = ffn_ratio = 1.0
    for i in range(len({k.split(".")[1] for k in state if k.startswith("stages.")})):
        pw1 = state.get(f"stages.{i}.blocks.0.pw1.conv.weight")
        if pw1 is None:
            raise WSOLError(f"{path}: RepLKNet keys without stages.{i}.blocks.0.pw1")
        ch = int(pw1.shape[1])
        channels.append(ch)
        dw_ratio = int(pw1.shape[0]) / ch
        ffn = state.get(f"stages.{i}.blocks.1.pw1.conv.weight")
        ffn_ratio = int(ffn.shape[0]) / ch if ffn is not None else 4.0
        layers.append(_count(state, rf"stages\.{i}\.blocks\.(\d+)\.") // 2)
        lk = state.get(f"stages.{i}.blocks.0.large_kernel.lkb_origin.conv.weight",
                       state.get(f"stages.{i}.blocks.0.large_kernel.lkb_reparam.weight"))
        kernels.append(int(lk.shape[-1]) if lk is not None else 0)
        sk = state.get(f"stages.{i}.blocks.0.large_kernel.small_conv.conv.weight")
        small = int(sk.shape[-1]) if sk is not None else small
    spec = dict(large_kernel_sizes=tuple(kernels), layers=tuple(layers), channels=tuple(channels),
                small_kernel=small, dw_ratio=dw_ratio)
    merged = any(".lkb_reparam." in k for k in state)
    inferred: list[str] = []
    name = next((n for n, a in _ARCHS.items() if _same_replknet(a, spec, merged)), None)
    extra: dict[str, Any] = {}
    if name is None:
        name = "replknet_31b"
        extra = {**spec, "ffn_ratio": ffn_ratio}
        if merged:  # the branches are gone: build merged (the small kernel is irrelevant, timm drops a None)
            extra.update(small_kernel=min(kernels), small_kernel_merged=True)
        inferred.append(f"a RepLKNet of kernels {kernels}, depths {layers}, widths {channels} (no named variant)")
    else:
        inferred.append(f"architecture {name} (widths {channels}, depths {layers}, kernels {kernels})")
    _check_override(path, overrides, name, "RepLKNet")
    k = _shape0(state, "head.weight", path)
    if k != 1000:
        fmt, dc = "cam-back-again-replknet", dict(CAM_BACK_AGAIN_DATA)
        inferred.append(f"CAM Back Again's fine-tuning (a {k}-class head on the official layout): its "
                        "preprocessing, 384 px, mean = std = 0.5")
    else:
        fmt, dc = "replknet", None
    info = CheckpointInfo(str(path), fmt, name, k, None, _build_args(overrides, **extra), dc, inferred)
    return _Plan(info, state, remap=lambda m, s: m.remap_external_keys(s))


def _same_replknet(arch: Mapping[str, Any], spec: Mapping[str, Any], merged: bool) -> bool:
    keys = ("large_kernel_sizes", "layers", "channels") + (() if merged else ("small_kernel",))
    return all(tuple(arch[k]) == tuple(spec[k]) if isinstance(arch[k], tuple) else arch[k] == spec[k]
               for k in keys) and float(arch.get("dw_ratio", 1.0)) == spec["dw_ratio"]


def _slak(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan | None:
    if "downsample_layers.0.0.weight" not in state or not any(".large_kernel." in k for k in state):
        return None
    from wsol.models.official import NOT_WEIGHTS
    from wsol.models.slak import _ARCHS, SLaK

    state = {k: v for k, v in state.items() if not NOT_WEIGHTS.search(k)}
    for pattern, repl in SLaK.official_key_renames:
        state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    widths = tuple(int(state[f"downsample_layers.{i}.{1 if i else 0}.weight"].shape[0]) for i in range(4))
    depths = tuple(_count(state, rf"stages\.{i}\.(\d+)\.") for i in range(4))
    inferred: list[str] = []
    name = next((n for n, a in _ARCHS.items()
                 if a["depths"] == depths and tuple(int(d * 1.3) for d in a["dims"]) == widths), None)
    if name is None:
        raise WSOLError(f"{path}: a SLaK of depths {list(depths)} and widths {list(widths)}, not SLaK-T/S/B; "
                        "build it with wsol.models.slak.SLaK and load_official_checkpoint")
    inferred.append(f"architecture {name} (depths {list(depths)}, widths {list(widths)})")
    _check_override(path, overrides, name, "SLaK")
    info = CheckpointInfo(str(path), "slak", name, _shape0(state, "head.weight", path), None,
                          _build_args(overrides), None, inferred)
    return _Plan(info, state, remap=lambda m, s: m.remap_external_keys(s))


def _convnext(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan | None:
    if "stem.0.weight" not in state or "stages.0.blocks.0.conv_dw.weight" not in state:
        return None
    spec = _convnext_spec(state, "stages.")
    if spec is None:
        return None
    inferred: list[str] = []
    name, extra = _convnext_name(*spec, inferred)
    _check_override(path, overrides, name, "timm ConvNeXt")
    adapt = None if "head.norm.weight" in state else _drop_head_norm
    info = CheckpointInfo(str(path), "timm", name, _shape0(state, "head.fc.weight", path), None,
                          _build_args(overrides, **extra), None, inferred)
    return _Plan(info, state, remap=lambda m, s: m.remap_external_keys(s), adapt=adapt)


_RESNETS = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
            (3, 4, 23, 3, True): "resnet101", (3, 8, 36, 3, True): "resnet152"}


def _resnet(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan | None:
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state or "fc.weight" not in state:
        return None
    depths = tuple(_count(state, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
    name = _RESNETS.get((*depths, "layer1.0.conv3.weight" in state))
    if name is None:
        return None
    inferred = [f"architecture {name} (blocks {list(depths)})"]
    _check_override(path, overrides, name, "timm / torchvision ResNet")
    build = _build_args(overrides)
    if name == "resnet50" and build.get("surgery", True):
        inferred.append("the WSOL protocol's surgery (layer4 at stride 1); surgery=False for the network as trained")
    info = CheckpointInfo(str(path), "timm", name, int(state["fc.weight"].shape[0]), None, build, None, inferred)
    return _Plan(info, state, remap=lambda m, s: m.remap_external_keys(s))


def _wsol_state_dict(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan | None:
    if "head.fc.weight" not in state or not any(k.startswith("backbone.") for k in state):
        return None
    from wsol.models.factory import EMBEDDED_MODEL

    name = overrides.get("model")
    inferred = []
    if name is None:
        if "backbone.conv_stem.weight" not in state:
            raise WSOLError(f"{path}: a wsol classifier's state dict records no architecture; pass it "
                            "(model='NAME' / --model NAME), or save checkpoints with `wsol train`")
        name = EMBEDDED_MODEL
        inferred.append(f"architecture {EMBEDDED_MODEL} (EfficientNet keys)")
    info = CheckpointInfo(str(path), "state-dict", str(name), int(state["head.fc.weight"].shape[0]), None,
                          _build_args(overrides), None, inferred)
    return _Plan(info, state)


def _by_override(path: Path, state: dict[str, Tensor], overrides: dict[str, Any]) -> _Plan:
    """A state dict of no known layout: the architecture given, else the embedded model if its keys fit."""
    from wsol.models.factory import EMBEDDED_MODEL

    name = overrides.get("model")
    inferred: list[str] = []
    if name is None:
        if "conv_stem.weight" not in state or "classifier.weight" not in state:
            some = ", ".join(list(state)[:3])
            raise WSOLError(f"{path}: cannot tell the architecture from its keys ({some}, ...); pass it "
                            "(model='NAME' / --model NAME)")
        name = EMBEDDED_MODEL
        inferred.append(f"architecture {EMBEDDED_MODEL} (EfficientNet keys)")
    k = next((int(v.shape[0]) for key, v in state.items() if v.ndim in (2, 4) and key.endswith(
        ("head.fc.weight", "fc.weight", "classifier.weight", "head.weight", "SPG_A4.weight"))), None)
    if k is None:
        raise WSOLError(f"{path}: no classifier weights found (fc / classifier / head); is it a classifier?")
    info = CheckpointInfo(str(path), "timm", str(name), k, None, _build_args(overrides), None, inferred)
    return _Plan(info, state, remap=_own_or_external)


def _own_or_external(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    own = model.state_dict()
    return state if set(state) == set(own) else model.remap_external_keys(state)


def describe(model: nn.Module) -> list[str]:
    """``wsol inspect``'s lines: format, architecture, classes, head, feature map at the input size, preprocessing."""
    info: CheckpointInfo = model.checkpoint_info
    clf = getattr(model, "classifier", model)
    dc = clf.data_config
    size = int(dc["input_size"][-1])
    with torch.no_grad():
        f = clf.features(torch.zeros(1, 3, size, size))
    names = info.class_names
    shown = (": " + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")) if names else " (no names recorded)"
    lines = [f"file          {info.path}",
             f"format        {info.format}",
             f"architecture  {info.architecture}" + (f" {info.build}" if info.build else ""),
             f"classes       {info.num_classes}{shown}",
             f"head          {info.head}",
             *([f"method        {info.method}"] if info.method != "cam" else []),
             f"feature map   {f.shape[1]} x {f.shape[2]} x {f.shape[3]} at {size} x {size}",
             f"preprocessing {size} px {dc.get('interpolation', 'bilinear')}, mean {tuple(dc['mean'])}, "
             f"std {tuple(dc['std'])}"]
    if hasattr(model, "decoder"):
        lines.append("decoder       F-CAM (full-resolution maps: --method fcam)")
    lines += [f"inferred      {note}" for note in info.inferred]
    return lines
