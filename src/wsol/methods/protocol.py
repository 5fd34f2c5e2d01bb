"""The protocol's three networks as ACoL and SPG rebuild them: what :mod:`wsol.methods.acol` and
:mod:`wsol.methods.spg` share.

wsolevaluation writes ``ResNetAcol``, ``VggSpg``... as classes of their own (``wsol/resnet.py``,
``wsol/vgg.py``, ``wsol/inception.py``). Here a method's ``setup`` turns a classifier that
:func:`wsol.models.build_model` made (``resnet50`` / ``vgg16`` / ``inception_v3`` with the protocol's
surgery) into that network: a new backbone *adopts* the built backbone's modules under their own names (so
pretrained weights and checkpoint keys stay where they were), adds the method's modules under
wsolevaluation's names, and the method's class layer (a 1x1 convolution upstream) becomes ``head.fc``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError

PROTOCOL_ARCHS = ("resnet50", "vgg16", "inception_v3")
RESNET_STEM = ("conv1", "bn1", "act1", "maxpool")
INCEPTION_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                  "Mixed_5b", "Mixed_5c", "Mixed_5d")
INCEPTION_MIXED_6 = ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")


def protocol_arch(model: nn.Module, method: str) -> str:
    """``resnet50``, ``vgg16`` or ``inception_v3`` for a classifier as :func:`~wsol.models.build_model` builds
    the protocol's backbones (with the WSOL surgery, before any method changed them); else a one-line
    ``WSOLError`` naming ``method.name`` and the model."""
    from timm.models.resnet import Bottleneck, ResNet

    from wsol.models.backbones import VGG16GAP, InceptionV3CAM

    backbone = getattr(model, "backbone", None)
    arch = None
    if type(backbone) is VGG16GAP:
        arch = "vgg16"
    elif type(backbone) is InceptionV3CAM:
        arch = "inception_v3"
    elif isinstance(backbone, ResNet) and not _strided(backbone.layer4[0]):
        resnet50 = isinstance(backbone.layer1[0], Bottleneck) \
            and [len(backbone.get_submodule(f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
        arch = "resnet50" if resnet50 else "resnet"  # another timm ResNet with the surgery (e.g. on a CPU)
    if arch is None:
        what = type(backbone).__name__ if backbone is not None else type(model).__name__
        raise WSOLError(f"config method.name={method}: changes the protocol's resnet50 / vgg16 / inception_v3 "
                        f"(wsolevaluation's networks) or another timm ResNet, built with the WSOL surgery, not model "
                        f"{getattr(model, 'name', '') or what!r} ({what})")
    pool = getattr(getattr(getattr(model, "head", None), "pool", None), "kind", "gap")
    if pool != "gap":
        raise WSOLError(f"config method.name={method}: its logits are the global average of class maps; "
                        f"model.pool must be gap, not {pool!r}")
    return arch


def _strided(block: nn.Module) -> bool:
    """Whether a residual block downsamples (a strided conv or pool anywhere in it)."""
    return any(getattr(m, "stride", 1) not in (1, (1, 1)) for m in block.modules()
               if isinstance(m, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d)))


def resnet_channels(backbone: nn.Module, layer: str) -> int:
    """Output channels of a timm ResNet's ``layer`` (2048 for ResNet50's layer4, 512 for ResNet18's)."""
    return next(int(d["num_chs"]) for d in backbone.feature_info if d["module"] == layer)


def is_large(backbone: nn.Module, arch: str) -> bool:
    """Whether a protocol backbone was built with ``large_feature_map`` (stride 8 instead of 16)."""
    if arch in ("resnet50", "resnet"):
        return not _strided(backbone.layer3[0])
    if arch == "vgg16":
        return isinstance(backbone.features[23], nn.Identity)  # pool4, kept as Identity when dropped
    return bool(backbone.large_feature_map)


def adopt(target: nn.Module, source: nn.Module, names: Iterable[str]) -> None:
    """Register ``source``'s children ``names`` in ``target`` under the same names (shared, not copied)."""
    for name in names:
        target.add_module(name, getattr(source, name))


def feature_info(target: nn.Module, source: nn.Module, last: dict[str, Any]) -> list[dict[str, Any]]:
    """``source.feature_info`` entries whose modules ``target`` still has, then ``last`` (the feature map F)."""
    kept = []
    for entry in getattr(source, "feature_info", None) or []:
        try:
            target.get_submodule(entry["module"])
        except AttributeError:
            continue
        kept.append(dict(entry))
    return [e for e in kept if e["module"] != last["module"]] + [last]


def init_new(modules: Iterable[nn.Module], mode: str) -> None:
    """wsolevaluation's ``initialize_weights`` for new layers: convolutions / linears He (``fan_out``) or
    Xavier-uniform, biases 0."""
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if mode == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv_relu(cin: int, cout: int) -> list[nn.Module]:
    """A 3x3 convolution (padding 1, bias) and a ReLU."""
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(inplace=False)]


def class_layer(channels: int, num_classes: int, mode: str) -> nn.Linear:
    """The method's 1x1 class convolution as ``head.fc`` (the same numbers: GAP and a 1x1 conv commute)."""
    fc = nn.Linear(channels, num_classes)
    init_new([fc], mode)  # a Linear (K, C) has the fan-in / fan-out of the conv (K, C, 1, 1)
    return fc


def resnet_stem(net: nn.Module, x: Tensor) -> Tensor:
    """conv1 -> bn1 -> relu -> maxpool of a (timm-named) ResNet."""
    return net.maxpool(net.act1(net.bn1(net.conv1(x))))


def inception_to_5d(net: nn.Module, x: Tensor, large: bool) -> Tensor:
    """wsolevaluation's Inception stem up to ``Mixed_5d`` (then the stride-2 pool unless ``large``)."""
    x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    x = net.Mixed_5d(net.Mixed_5c(net.Mixed_5b(x)))
    if not large:
        x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
    return x


def inception_mixed_6a(net: nn.Module, x: Tensor) -> Tensor:
    """``Mixed_6a`` at stride 1 (its pool branch too), as wsolevaluation builds it."""
    m = net.Mixed_6a
    b3 = m.branch3x3(x)
    bd = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
    return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=1, padding=1)], 1)


def normalize_tensor(x: Tensor) -> Tensor:
    """Each (image, channel) map min-max scaled to [0, 1] (NaN where it is constant), as wsolevaluation's
    ``normalize_tensor`` (``wsol/method/util.py``)."""
    flat = x.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    high = flat.amax(dim=2, keepdim=True)
    return ((flat - low) / (high - low)).view_as(x)


def class_map(maps: Tensor, labels: Tensor) -> Tensor:
    """``maps[b, labels[b]]`` (B, 1, h, w), detached, min-max normalised: ``get_attention`` of
    ``wsol/method/util.py``."""
    picked = maps.detach()[torch.arange(maps.shape[0], device=maps.device), labels.to(maps.device)]
    return normalize_tensor(picked.unsqueeze(1))


def class_maps(model: nn.Module, f: Tensor) -> Tensor:
    """The 1x1 class convolution that ``head.fc`` stands for, on the feature map F: (B, K, h, w) with bias."""
    fc = model.head.fc
    return F.conv2d(f, fc.weight[:, :, None, None], fc.bias)


def check_unit(options: Any, keys: Iterable[str]) -> None:
    """Each option in ``keys`` lies in [0, 1] (thresholds on maps scaled to [0, 1])."""
    for key in keys:
        value = getattr(options, key)
        if not 0 <= value <= 1:
            raise WSOLError(f"config method.{key}={value}: must lie in [0, 1]")
