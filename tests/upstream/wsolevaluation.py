"""Test oracle: the models of clovaai/wsolevaluation (Choe et al., CVPR 2020), written anew.

The ``cam`` models first; the ``acol`` / ``spg`` / ``adl`` ones and their method code at the end.

Transcribes, for the tests only, the module layout (hence the state-dict key names), the forward pass
and the ``return_cam`` maps of ``ResNetCam`` (``wsol/resnet.py``), ``VggCam`` (``wsol/vgg.py``) and
``InceptionCam`` (``wsol/inception.py``), and the checkpoint dict of ``main.py``
(``Trainer._torch_save_model``: ``{'architecture', 'epoch', 'state_dict', 'optimizer'}`` of a model that
is not wrapped in DataParallel, so the keys carry no ``module.`` prefix).

Upstream facts kept here on purpose:

* ResNetCam: layer4 has stride 1 always (no dilation); layer3 has stride 1 with ``large_feature_map``
  (else 2). Output stride 16 (8 with large_feature_map). The CAM is the *mean* over channels of
  ``fc.weight[label, c] * F_c`` (no bias).
* VggCam: ``features`` is built from the ``14x14`` or ``28x28`` config; ``28x28`` drops the fourth max-pool,
  so the last three convolutions are ``features.23/25/27`` instead of ``features.24/26/28``. Then
  ``conv6`` (512 -> 1024, 3x3, bias) + ReLU, GAP, ``fc``. CAM = channel mean of the weighted ``relu(conv6)``.
* InceptionCam: its own stem (``Conv2d_1a_3x3`` has padding 1), max-pools with padding 1 and
  ``ceil_mode``, ``Mixed_6a`` with stride 1 / padding 1 (its pool branch max-pools with padding 1), no
  Mixed_7, then ``SPG_A3_1b`` / ``SPG_A3_2b`` (3x3 conv + ReLU, 768 -> 1024 -> 1024) and the 1x1 conv
  ``SPG_A4`` (1024 -> K, with bias) whose GAP is the logits. The CAM is the ``SPG_A4`` output map of the
  label, *including* the bias. ``large_feature_map`` only skips the max-pool after ``Mixed_5d``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RESNET_ADL_POSITION",
    "VGG16_CONFIGS",
    "VGG16_METHOD_CONFIGS",
    "AcolBase",
    "Adl",
    "InceptionAcol",
    "InceptionAdl",
    "InceptionCam",
    "InceptionSpg",
    "ResNetAcol",
    "ResNetAdl",
    "ResNetCam",
    "ResNetSpg",
    "SpgBase",
    "VggAcol",
    "VggCam",
    "VggSpg",
    "acol_loss",
    "erase_attention",
    "get_attention",
    "get_mask",
    "inception_v3_acol",
    "inception_v3_adl",
    "inception_v3_cam",
    "inception_v3_spg",
    "loss_attention",
    "mask_bg",
    "mask_fg",
    "normalize_tensor",
    "randomize",
    "resnet50_acol",
    "resnet50_adl",
    "resnet50_cam",
    "resnet50_spg",
    "save_wsolevaluation_checkpoint",
    "spg_compute_attention",
    "spg_loss",
    "vgg16_acol",
    "vgg16_adl",
    "vgg16_cam",
    "vgg16_spg",
    "vgg_method_features",
]


def _weighted_channel_mean(feature_map: Tensor, fc_weight: Tensor, labels: Tensor) -> Tensor:
    """``mean_c fc_weight[label, c] * F_c`` (B, h, w): the ResNet / VGG ``return_cam`` maps."""
    f = feature_map.detach().clone()
    w = fc_weight[labels]
    return (w.view(*f.shape[:2], 1, 1) * f).mean(1, keepdim=False)


# ----------------------------------------------------------------------------------------------- ResNet


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), keys ``conv1..3``, ``bn1..3``, ``downsample.0/1``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """conv-bn-relu x2, conv-bn, plus the (projected) shortcut, relu."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNetCam(nn.Module):
    """``wsol/resnet.py`` ResNetCam: torchvision-named ResNet, layer4 stride 1, GAP + ``fc``."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000,
                 large_feature_map: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1 if large_feature_map else 2)
        self.layer4 = self._make_layer(512, layers[3], stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out_planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_planes))
        seq = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        seq += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*seq)

    def forward_features(self, x: Tensor) -> Tensor:
        """layer4's output (the CAM feature map)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor, labels: Tensor | None = None, return_cam: bool = False) -> Tensor | dict[str, Tensor]:
        """``{'logits': (B, K)}``, or with ``return_cam`` the (B, h, w) CAMs of ``labels``."""
        feature_map = self.forward_features(x)
        logits = self.fc(self.avgpool(feature_map).reshape(feature_map.size(0), -1))
        if return_cam:
            return _weighted_channel_mean(feature_map, self.fc.weight, labels)
        return {"logits": logits}


def resnet50_cam(num_classes: int = 1000, large_feature_map: bool = False) -> ResNetCam:
    """``wsol.resnet50('cam', ...)``: Bottleneck blocks (3, 4, 6, 3)."""
    return ResNetCam((3, 4, 6, 3), num_classes=num_classes, large_feature_map=large_feature_map)


# ----------------------------------------------------------------------------------------------- VGG

VGG16_CONFIGS: dict[str, list[int | str]] = {
    "14x14": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "28x28": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, 512, 512, 512],
}


def _vgg_features(config: Sequence[int | str]) -> nn.Sequential:
    """``make_layers``: 3x3 conv (bias) + ReLU per number, ``MaxPool2d(2, 2)`` per ``'M'``."""
    layers: list[nn.Module] = []
    channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


class VggCam(nn.Module):
    """``wsol/vgg.py`` VggCam: ``features`` -> ``conv6`` (512 -> 1024) -> ReLU -> GAP -> ``fc``."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = features
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """relu(conv6(features(x))) (the CAM feature map)."""
        return self.relu(self.conv6(self.features(x)))

    def forward(self, x: Tensor, labels: Tensor | None = None, return_cam: bool = False) -> Tensor | dict[str, Tensor]:
        """``{'logits': (B, K)}``, or with ``return_cam`` the (B, h, w) CAMs of ``labels``."""
        feature_map = self.forward_features(x)
        logits = self.fc(self.avgpool(feature_map).view(feature_map.size(0), -1))
        if return_cam:
            return _weighted_channel_mean(feature_map, self.fc.weight, labels)
        return {"logits": logits}


def vgg16_cam(num_classes: int = 1000, large_feature_map: bool = False) -> VggCam:
    """``wsol.vgg16('cam', ...)``: config ``28x28`` with ``large_feature_map``, else ``14x14``."""
    return VggCam(_vgg_features(VGG16_CONFIGS["28x28" if large_feature_map else "14x14"]), num_classes)


# ----------------------------------------------------------------------------------------------- Inception


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn(conv(x)))."""
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 branches, concatenated (64 + 64 + 96 + pool_features)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The four branches, concatenated on channels."""
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """3x3 | 1x1-3x3-3x3 | max-pool (padding 1) branches; wsolevaluation builds it with stride 1, padding 1."""

    def __init__(self, in_channels: int, kernel_size: int = 3, stride: int = 2, padding: int = 0) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size, stride=stride, padding=padding)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=stride, padding=padding)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """The three branches, concatenated on channels (384 + 96 + in_channels)."""
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=1)
        return torch.cat([a, b, c], 1)


class InceptionC(nn.Module):
    """1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1 branches, 4 x 192 channels."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The four branches, concatenated on channels."""
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for name in ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"):
            c = getattr(self, name)(c)
        d = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([a, b, c, d], 1)


class InceptionCam(nn.Module):
    """``wsol/inception.py`` InceptionCam: Inception-v3 up to Mixed_6e, ``SPG_A3_1b/2b``, 1x1 ``SPG_A4``."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False) -> None:
        super().__init__()
        self.large_feature_map = large_feature_map
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, stride=1, padding=0)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, stride=1, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, stride=1, padding=0)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, stride=1, padding=0)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288, kernel_size=3, stride=1, padding=1)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The output of ``SPG_A3_2b`` (B, 1024, h, w), the input of the 1x1 classifier ``SPG_A4``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = F.dropout(x, 0.5, self.training)
        x = F.dropout(self.SPG_A3_1b(x), 0.5, self.training)
        return F.dropout(self.SPG_A3_2b(x), 0.5, self.training)

    def forward(self, x: Tensor, labels: Tensor | None = None, return_cam: bool = False) -> Tensor | dict[str, Tensor]:
        """``{'logits': GAP(SPG_A4(.))}``, or with ``return_cam`` the label's ``SPG_A4`` map (with its bias)."""
        feat_map = self.SPG_A4(self.forward_features(x))
        logits = self.avgpool(feat_map).view(feat_map.shape[0:2])
        if return_cam:
            cams = feat_map.clone().detach()
            return cams[torch.arange(x.shape[0]), labels]
        return {"logits": logits}


def inception_v3_cam(num_classes: int = 1000, large_feature_map: bool = False) -> InceptionCam:
    """``wsol.inception_v3('cam', ...)``."""
    return InceptionCam(num_classes=num_classes, large_feature_map=large_feature_map)


# ----------------------------------------------------------------------------------------------- helpers


def randomize(model: nn.Module, seed: int, image_size: int = 64) -> nn.Module:
    """Seeded He-normal weights and BN layers far from the identity, so that a loader mishandling a BN is seen.

    BN affine parameters are random; the running statistics are first those of one training-mode batch of
    noise images (so activations keep a sane scale through 50 layers), then perturbed (mean shifted by
    0.3 std, variance scaled by 0.5..1.5). The classifier (``fc`` / ``SPG_A4``) is rescaled so that logits
    are of order 1 (comparisons at 1e-4 stay meaningful). Returns the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        for bn in norms:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        model(torch.randn(4, 3, image_size, image_size, generator=gen))
        for bn in norms:
            bn.momentum = 0.1
            n = bn.num_features
            bn.running_mean.add_(0.3 * bn.running_var.sqrt() * torch.randn(n, generator=gen))
            bn.running_var.mul_(0.5 + torch.rand(n, generator=gen))
            bn.num_batches_tracked.fill_(1000)
        model.eval()
        # logits of order 1: the classifier's scale set from the feature map's
        for head, features in _class_layers(model):
            f = features(torch.randn(2, 3, image_size, image_size, generator=gen))
            pooled_rms = f.mean(dim=(2, 3)).pow(2).mean().sqrt().clamp_min(1e-6)
            head.weight.mul_(2.0 / (head.weight.std() * pooled_rms * head.weight[0].numel() ** 0.5))
    return model


def _class_layers(model: nn.Module) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
    """``(class layer, its input as a function of the images)`` pairs: the model's own ``class_layers()`` (ACoL's
    two branches), else ``fc`` / ``SPG_A4`` / ``SPG_A_4`` on ``forward_features``."""
    own = getattr(model, "class_layers", None)
    if callable(own):
        return own()
    features = getattr(model, "forward_features", None)
    for name in ("fc", "SPG_A4", "SPG_A_4"):
        head = getattr(model, name, None)
        if isinstance(head, (nn.Linear, nn.Conv2d)) and callable(features):
            return [(head, features)]
    return []


def save_wsolevaluation_checkpoint(model: nn.Module, architecture: str, path: str | Path, *, epoch: int = 10,
                                   image_size: int = 64, seed: int = 0) -> dict[str, object]:
    """Write ``main.py``'s checkpoint dict for ``model`` (not DataParallel-wrapped) to ``path``.

    The optimizer is ``SGD(model.parameters(), lr=0.1, momentum=0.9)`` after one real step (a backward of a
    small cross-entropy on one random image, eval mode so BN statistics stay put), so ``'optimizer'`` holds
    momentum buffers; ``model`` is changed by that step, and what is saved is its new state. Returns the dict.
    """
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(1, 3, image_size, image_size, generator=gen)
    logits = model(x)["logits"]
    loss = 1e-3 * F.cross_entropy(logits, torch.zeros(1, dtype=torch.long))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    ckpt = {"architecture": architecture, "epoch": epoch, "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict()}
    torch.save(ckpt, path)
    return ckpt


# ======================================================================================== ACoL, SPG, ADL
# The ``acol`` / ``spg`` / ``adl`` architecture types of ``wsol/resnet.py``, ``wsol/vgg.py`` and
# ``wsol/inception.py``, and the method code they use (``wsol/method/util.py``, ``acol.py``, ``spg.py``,
# ``adl.py``). Upstream facts kept here on purpose:
#
# * ACoL: a trunk ``feature`` (ResNet ``layer4``; VGG config ``acol`` with 3x3 max-pools ``M1`` (stride 2) /
#   ``M2`` (stride 1), then ``avg_pool2d(3, 1, 1)``; Inception ``Mixed_6e``, no SPG_A3 layers, no dropout),
#   then ``classifier_A`` / ``classifier_B`` (conv3x3 C->1024, ReLU, conv3x3, ReLU, conv1x1 ->K). The erasing
#   runs in eval mode too (labels given, else A's top-1); the eval logits are A's; ``return_cam`` is
#   ``max(normalize(A), normalize(B))`` at the labels.
# * SPG: ResNet's layer3 is ``SPG_A1`` (first block) + ``SPG_A2`` (the rest); VGG's ``features`` stop after
#   pool3 and conv4 / conv5 are ``SPG_A_1`` / ``SPG_A_2`` (a 3x3 stride-2 max-pool between them unless
#   ``large_feature_map``), then new ``SPG_A_3`` and the class layer ``SPG_A_4``; Inception's ``SPG_B_2a``
#   reads ``Mixed_6d``'s output (not 6e's). Maps are upsampled to 224 x 224 whatever the input.
# * ADL: weightless modules inside ResNet's layer3 / layer4 Sequentials (after blocks [0] and [0, 2]) and
#   VGG's ``features`` (config ``adl``, ``'A'`` entries): they shift the following indices. Inception's
#   ``ADL_*`` are attributes: its keys are those of InceptionCam. Identity in eval mode.


def normalize_tensor(x: Tensor) -> Tensor:
    """``wsol/method/util.py`` normalize_tensor: per (image, channel), ``(x - min) / (max - min)`` (NaN if flat)."""
    vec = x.view(x.size(0), x.size(1), -1)
    low = vec.min(dim=-1, keepdim=True)[0]
    high = vec.max(dim=-1, keepdim=True)[0]
    return torch.div(vec - low, high - low).view(x.size())


def get_attention(feature: Tensor, label: Tensor) -> Tensor:
    """``get_attention``: the label's channel of a detached copy as (B, 1, h, w), normalised."""
    copy = feature.detach().clone().requires_grad_(True)
    attention = copy[range(copy.size(0)), label, :, :].unsqueeze(1)
    return normalize_tensor(attention)


# ----------------------------------------------------------------------------------------------- ACoL


def erase_attention(feature: Tensor, attention: Tensor, drop_threshold: float) -> Tensor:
    """``wsol/method/acol.py`` _erase_attention: a ones mask set to 0 where ``attention >= drop_threshold``."""
    b, _, h, w = attention.size()
    mask = attention.new_ones((b, 1, h, w))
    mask[torch.ge(attention, drop_threshold).data] = 0.0
    return feature * mask


def acol_loss(output_dict: dict[str, Tensor], gt_labels: Tensor) -> Tensor:
    """``wsol/method/acol.py`` get_loss: cross-entropy of branch A plus that of branch B."""
    return (nn.CrossEntropyLoss()(output_dict["logits"], gt_labels.long())
            + nn.CrossEntropyLoss()(output_dict["logit_b"], gt_labels.long()))


def _acol_classifier(channels: int, num_classes: int, inplace: bool) -> nn.Sequential:
    """conv3x3 (C -> 1024), ReLU, conv3x3 (1024 -> 1024), ReLU, conv1x1 (1024 -> K)."""
    return nn.Sequential(nn.Conv2d(channels, 1024, 3, 1, padding=1), nn.ReLU(inplace=inplace),
                         nn.Conv2d(1024, 1024, 3, 1, padding=1), nn.ReLU(inplace=inplace),
                         nn.Conv2d(1024, num_classes, 1, 1, padding=0))


class AcolBase(nn.Module):
    """``AcolBase`` (``_acol_logits``, ``_branch``) and the ``forward`` the three Acol classes share."""

    drop_threshold: float

    def trunk(self, x: Tensor) -> Tensor:
        """The feature map both classifiers read."""
        raise NotImplementedError

    def _branch(self, feature: Tensor, classifier: nn.Module) -> tuple[Tensor, Tensor]:
        feat_map = classifier(feature)
        logits = self.avgpool(feat_map)
        return feat_map, logits.view(logits.size(0), -1)

    def _acol_logits(self, feature: Tensor, labels: Tensor | None, drop_threshold: float) -> dict[str, Tensor]:
        feat_map_a, logits = self._branch(feature, self.classifier_A)
        labels = logits.argmax(dim=1).long() if labels is None else labels
        attention = get_attention(feat_map_a, labels)
        erased = erase_attention(feature, attention, drop_threshold)
        feat_map_b, logit_b = self._branch(erased, self.classifier_B)
        return {"logits": logits, "logit_b": logit_b, "feat_map_a": feat_map_a, "feat_map_b": feat_map_b}

    def forward(self, x: Tensor, labels: Tensor | None = None, return_cam: bool = False) -> Tensor | dict[str, Tensor]:
        """The logits dict, or with ``return_cam`` ``max(normalize(A), normalize(B))`` at ``labels``."""
        batch_size = x.shape[0]
        logits_dict = self._acol_logits(self.trunk(x), labels, self.drop_threshold)
        if return_cam:
            normalized_a = normalize_tensor(logits_dict["feat_map_a"].detach().clone())
            normalized_b = normalize_tensor(logits_dict["feat_map_b"].detach().clone())
            return torch.max(normalized_a, normalized_b)[range(batch_size), labels]
        return logits_dict

    def forward_features(self, x: Tensor) -> Tensor:
        """Branch A's hidden map: the input of its class layer ``classifier_A.4``."""
        return self.classifier_A[:4](self.trunk(x))

    def class_layers(self) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """Both class layers with their inputs (for :func:`randomize`)."""
        return [(self.classifier_A[4], self.forward_features),
                (self.classifier_B[4], lambda x: self.classifier_B[:4](self.trunk(x)))]


def _add_resnet_stem(model: nn.Module) -> None:
    model.inplanes = 64
    model.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(64)
    model.relu = nn.ReLU(inplace=True)
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def _resnet_stem(model: nn.Module, x: Tensor) -> Tensor:
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


class ResNetAcol(AcolBase):
    """``wsol/resnet.py`` ResNetAcol: ResNetCam's trunk (no ``fc``), He-initialised upstream."""

    _make_layer = ResNetCam._make_layer

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000,
                 large_feature_map: bool = False, acol_drop_threshold: float = 0.7) -> None:
        super().__init__()
        self.drop_threshold = acol_drop_threshold
        _add_resnet_stem(self)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1 if large_feature_map else 2)
        self.layer4 = self._make_layer(512, layers[3], stride=1)
        self.classifier_A = _acol_classifier(2048, num_classes, inplace=False)
        self.classifier_B = _acol_classifier(2048, num_classes, inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def trunk(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(_resnet_stem(self, x)))))


VGG16_METHOD_CONFIGS: dict[str, dict[str, list[int | str]]] = {
    "acol": {
        "14x14": [64, 64, "M1", 128, 128, "M1", 256, 256, 256, "M1", 512, 512, 512, "M1", 512, 512, 512, "M2"],
        "28x28": [64, 64, "M1", 128, 128, "M1", 256, 256, 256, "M1", 512, 512, 512, "M2", 512, 512, 512, "M2"],
    },
    "spg": {
        "14x14": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
        "28x28": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
    },
    "adl": {
        "14x14": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", "A", 512, 512, 512, "A", "M", 512, 512, 512, "A"],
        "28x28": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", "A", 512, 512, 512, "A", 512, 512, 512, "A"],
    },
}


def vgg_method_features(config: Sequence[int | str], adl_drop_rate: float = 0.75,
                        adl_drop_threshold: float = 0.8) -> nn.Sequential:
    """``make_layers`` with every token: ``M`` (2x2 max-pool), ``M1`` (3x3 stride 2 pad 1), ``M2`` (3x3
    stride 1 pad 1), ``A`` (ADL), numbers (3x3 conv + ReLU)."""
    layers: list[nn.Module] = []
    channels = 3
    for v in config:
        if v == "M1":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        elif v == "M2":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
        elif v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "A":
            layers.append(Adl(adl_drop_rate, adl_drop_threshold))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


def _vgg_config(method: str, large_feature_map: bool) -> list[int | str]:
    return VGG16_METHOD_CONFIGS[method]["28x28" if large_feature_map else "14x14"]


class VggAcol(AcolBase):
    """``wsol/vgg.py`` VggAcol: ``features`` (config ``acol``), a 3x3 stride-1 average pool, no conv6."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, acol_drop_threshold: float = 0.7) -> None:
        super().__init__()
        self.features = features
        self.drop_threshold = acol_drop_threshold
        self.classifier_A = _acol_classifier(512, num_classes, inplace=False)
        self.classifier_B = _acol_classifier(512, num_classes, inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def trunk(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.features(x), kernel_size=3, stride=1, padding=1)


def _add_inception_trunk(model: nn.Module) -> None:
    """InceptionCam's layers from ``Conv2d_1a_3x3`` to ``Mixed_6e`` (wsolevaluation's strides and paddings)."""
    model.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, padding=1)
    model.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, stride=1, padding=0)
    model.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, stride=1, padding=1)
    model.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, stride=1, padding=0)
    model.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, stride=1, padding=0)
    model.Mixed_5b = InceptionA(192, pool_features=32)
    model.Mixed_5c = InceptionA(256, pool_features=64)
    model.Mixed_5d = InceptionA(288, pool_features=64)
    model.Mixed_6a = InceptionB(288, kernel_size=3, stride=1, padding=1)
    model.Mixed_6b = InceptionC(768, channels_7x7=128)
    model.Mixed_6c = InceptionC(768, channels_7x7=160)
    model.Mixed_6d = InceptionC(768, channels_7x7=160)
    model.Mixed_6e = InceptionC(768, channels_7x7=192)


def _inception_to_5d(model: nn.Module, x: Tensor) -> Tensor:
    """The stem and Mixed_5b..5d (the pool after it is the caller's)."""
    x = model.Conv2d_2b_3x3(model.Conv2d_2a_3x3(model.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    x = model.Conv2d_4a_3x3(model.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    return model.Mixed_5d(model.Mixed_5c(model.Mixed_5b(x)))


def _inception_pool(model: nn.Module, x: Tensor) -> Tensor:
    return x if model.large_feature_map else F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)


def _inception_to_6d(model: nn.Module, x: Tensor) -> Tensor:
    return model.Mixed_6d(model.Mixed_6c(model.Mixed_6b(model.Mixed_6a(x))))


class InceptionAcol(AcolBase):
    """``wsol/inception.py`` InceptionAcol: the trunk to ``Mixed_6e`` (768 channels), inplace ReLUs."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False,
                 acol_drop_threshold: float = 0.7) -> None:
        super().__init__()
        self.large_feature_map = large_feature_map
        self.drop_threshold = acol_drop_threshold
        _add_inception_trunk(self)
        self.classifier_A = _acol_classifier(768, num_classes, inplace=True)
        self.classifier_B = _acol_classifier(768, num_classes, inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def trunk(self, x: Tensor) -> Tensor:
        return self.Mixed_6e(_inception_to_6d(self, _inception_pool(self, _inception_to_5d(self, x))))


def resnet50_acol(num_classes: int = 1000, large_feature_map: bool = False,
                  acol_drop_threshold: float = 0.7) -> ResNetAcol:
    """``wsol.resnet50('acol', ...)``."""
    return ResNetAcol((3, 4, 6, 3), num_classes, large_feature_map, acol_drop_threshold)


def vgg16_acol(num_classes: int = 1000, large_feature_map: bool = False, acol_drop_threshold: float = 0.7) -> VggAcol:
    """``wsol.vgg16('acol', ...)``."""
    return VggAcol(vgg_method_features(_vgg_config("acol", large_feature_map)), num_classes, acol_drop_threshold)


def inception_v3_acol(num_classes: int = 1000, large_feature_map: bool = False,
                      acol_drop_threshold: float = 0.7) -> InceptionAcol:
    """``wsol.inception_v3('acol', ...)``."""
    return InceptionAcol(num_classes, large_feature_map, acol_drop_threshold)


# ----------------------------------------------------------------------------------------------- SPG

_UPSAMPLE_SIZE = (224, 224)


def _upsample() -> nn.Module:
    return nn.Upsample(size=_UPSAMPLE_SIZE, mode="bilinear")


def spg_compute_attention(feat_map: Tensor, labels: Tensor, logits_b1: Tensor,
                          logits_b2: Tensor) -> tuple[Tensor, Tensor]:
    """``wsol/method/spg.py`` compute_attention: the label's upsampled normalised map, and the fused map."""
    attention = get_attention(_upsample()(feat_map), labels)
    return attention, _get_fused_attention(logits_b1, logits_b2)


def _get_fused_attention(feature1: Tensor, feature2: Tensor) -> Tensor:
    up = _upsample()
    return (torch.sigmoid(up(feature1.detach().clone())) + torch.sigmoid(up(feature2.detach().clone()))) / 2.0


def _get_loss_attention(logits: Tensor, pre_mask: Tensor, high_thr: float, low_thr: float) -> Tensor:
    mask = get_mask(pre_mask, high_thr, low_thr)
    return loss_attention(nn.BCEWithLogitsLoss(), _upsample()(logits).squeeze(dim=1), mask)


def spg_loss(output_dict: dict[str, Tensor], target: Tensor,
             spg_thresholds: Sequence[Sequence[float]]) -> Tensor:
    """``wsol/method/spg.py`` get_loss: CE + B2 from the attention + B1 from B2's sigmoid + C from the fusion."""
    (h1, l1), (h2, l2), (h3, l3) = spg_thresholds
    b2i = torch.sigmoid(_upsample()(output_dict["logits_b2"]))
    loss_cls = nn.CrossEntropyLoss()(output_dict["logits"], target.long())
    loss_b2_att = _get_loss_attention(output_dict["logits_b2"], output_dict["attention"], h1, l1)
    loss_b1_b2i = _get_loss_attention(output_dict["logits_b1"], b2i, h2, l2)
    loss_c1_fus = _get_loss_attention(output_dict["logits_c"], output_dict["fused_attention"], h3, l3)
    return loss_cls + loss_b2_att + loss_b1_b2i + loss_c1_fus


def mask_fg(mask: Tensor, attention: Tensor, threshold: float) -> Tensor:
    """1 where ``attention > threshold``; an image with fewer than 30 such pixels uses 0.7 x its max instead."""
    for batch_idx in range(attention.size(0)):
        bool_fg = attention[batch_idx] > threshold
        if torch.sum(bool_fg.float()).item() < 30:
            bool_fg = attention[batch_idx] > torch.max(attention[batch_idx]) * 0.7
        mask[batch_idx][bool_fg] = 1.0
    return mask


def mask_bg(mask: Tensor, attention: Tensor, threshold: float = 0.05) -> Tensor:
    """0 where ``attention < threshold`` (after the foreground: background wins)."""
    mask[(attention < threshold).data] = 0.0
    return mask


def get_mask(attention: Tensor, thr_high: float, thr_low: float) -> Tensor:
    """(B, 1, 224, 224) pseudo-labels: 255 (ignored), then :func:`mask_fg`, then :func:`mask_bg`."""
    mask = attention.new_zeros((attention.size(0), 1, 224, 224)).fill_(255)
    mask = mask_fg(mask, attention, thr_high)
    return mask_bg(mask, attention, thr_low)


def loss_attention(loss_func: nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """``loss_func`` on the pixels whose label is not 255."""
    pos = labels.view(-1, 1) < 255.0
    return loss_func(logits.view(-1, 1)[pos], labels.view(-1, 1)[pos].detach().clone())


def _spg_side(cin: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, width, kernel_size=3, padding=1), nn.ReLU(inplace=True))


def _spg_head(cin: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, width, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(width, 1, kernel_size=1))


class SpgBase(nn.Module):
    """The tail the three Spg classes share: class maps, logits, attention, ``return_cam``."""

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(input of the class layer, logits_b1, logits_b2)``."""
        raise NotImplementedError

    def class_layer(self) -> nn.Conv2d:
        return self.SPG_A4

    def forward(self, x: Tensor, labels: Tensor | None = None, return_cam: bool = False) -> Tensor | dict[str, Tensor]:
        """The outputs dict, or with ``return_cam`` the class layer's map at ``labels`` (bias included)."""
        batch_size = x.shape[0]
        x, logits_b1, logits_b2 = self.stages(x)
        feat_map = self.class_layer()(x)
        logits_c = self.SPG_C(x)
        logits = self.avgpool(feat_map).flatten(1)
        labels = logits.argmax(dim=1).long() if labels is None else labels
        attention, fused_attention = spg_compute_attention(feat_map, labels, logits_b1, logits_b2)
        if return_cam:
            return feat_map.clone().detach()[range(batch_size), labels]
        return {"attention": attention, "fused_attention": fused_attention, "logits": logits,
                "logits_b1": logits_b1, "logits_b2": logits_b2, "logits_c": logits_c}

    def forward_features(self, x: Tensor) -> Tensor:
        """The input of the class layer."""
        return self.stages(x)[0]


class ResNetSpg(SpgBase):
    """``wsol/resnet.py`` ResNetSpg: layer3 as ``SPG_A1`` (block 0) and ``SPG_A2`` (blocks 1..5)."""

    _make_layer = ResNetCam._make_layer

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000,
                 large_feature_map: bool = False) -> None:
        super().__init__()
        _add_resnet_stem(self)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        layer3 = list(self._make_layer(256, layers[2], stride=1 if large_feature_map else 2).children())
        self.SPG_A1, self.SPG_A2 = nn.Sequential(layer3[0]), nn.Sequential(*layer3[1:])
        self.layer4 = self._make_layer(512, layers[3], stride=1)
        self.SPG_A4 = nn.Conv2d(2048, num_classes, kernel_size=1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.SPG_B_1a = _spg_side(1024, 1024)
        self.SPG_B_2a = _spg_side(1024, 1024)
        self.SPG_B_shared = _spg_head(1024, 1024)
        self.SPG_C = _spg_head(2048, 512)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.SPG_A1(self.layer2(self.layer1(_resnet_stem(self, x))))
        logits_b1 = self.SPG_B_shared(self.SPG_B_1a(x))
        x = self.SPG_A2(x)
        logits_b2 = self.SPG_B_shared(self.SPG_B_2a(x))
        return self.layer4(x), logits_b1, logits_b2


class VggSpg(SpgBase):
    """``wsol/vgg.py`` VggSpg: ``features`` to pool3, ``SPG_A_1..3``, class layer ``SPG_A_4``."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, large_feature_map: bool = False) -> None:
        super().__init__()
        self.features = features
        self.lfs = large_feature_map
        self.SPG_A_1 = nn.Sequential(*_spg_side(256, 512), *_spg_side(512, 512), *_spg_side(512, 512))
        self.SPG_A_2 = nn.Sequential(*_spg_side(512, 512), *_spg_side(512, 512), *_spg_side(512, 512))
        self.SPG_A_3 = nn.Sequential(*_spg_side(512, 512), *_spg_side(512, 512))
        self.SPG_A_4 = nn.Conv2d(512, num_classes, kernel_size=1, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.SPG_B_1a = _spg_side(512, 512)
        self.SPG_B_2a = _spg_side(512, 512)
        self.SPG_B_shared = _spg_head(512, 512)
        self.SPG_C = _spg_head(512, 512)

    def class_layer(self) -> nn.Conv2d:
        return self.SPG_A_4

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.SPG_A_1(self.features(x))
        if not self.lfs:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        logits_b1 = self.SPG_B_shared(self.SPG_B_1a(x))
        x = self.SPG_A_2(x)
        logits_b2 = self.SPG_B_shared(self.SPG_B_2a(x))
        return self.SPG_A_3(x), logits_b1, logits_b2


class InceptionSpg(SpgBase):
    """``wsol/inception.py`` InceptionSpg: B1 on the (pooled) Mixed_5d, B2 on Mixed_6d, dropouts around SPG_A3."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False) -> None:
        super().__init__()
        self.large_feature_map = large_feature_map
        _add_inception_trunk(self)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, kernel_size=1, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.SPG_B_1a = _spg_side(288, 512)
        self.SPG_B_2a = _spg_side(768, 512)
        self.SPG_B_shared = _spg_head(512, 512)
        self.SPG_C = _spg_head(1024, 512)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = _inception_pool(self, _inception_to_5d(self, x))
        logits_b1 = self.SPG_B_shared(self.SPG_B_1a(x))
        x = _inception_to_6d(self, x)
        feat = self.Mixed_6e(x)
        logits_b2 = self.SPG_B_shared(self.SPG_B_2a(x))  # Mixed_6d's output, as upstream
        x = self.SPG_A3_1b(F.dropout(feat, 0.5, self.training))
        x = self.SPG_A3_2b(F.dropout(x, 0.5, self.training))
        return F.dropout(x, 0.5, self.training), logits_b1, logits_b2


def resnet50_spg(num_classes: int = 1000, large_feature_map: bool = False) -> ResNetSpg:
    """``wsol.resnet50('spg', ...)``."""
    return ResNetSpg((3, 4, 6, 3), num_classes, large_feature_map)


def vgg16_spg(num_classes: int = 1000, large_feature_map: bool = False) -> VggSpg:
    """``wsol.vgg16('spg', ...)``."""
    return VggSpg(vgg_method_features(_vgg_config("spg", large_feature_map)), num_classes, large_feature_map)


def inception_v3_spg(num_classes: int = 1000, large_feature_map: bool = False) -> InceptionSpg:
    """``wsol.inception_v3('spg', ...)``."""
    return InceptionSpg(num_classes, large_feature_map)


# ----------------------------------------------------------------------------------------------- ADL


class Adl(nn.Module):
    """``wsol/method/adl.py`` ADL: identity in eval mode; in training the input times the drop mask
    (``attention < threshold x max``) with probability ``adl_drop_rate`` (one draw), else ``sigmoid(attention)``."""

    def __init__(self, adl_drop_rate: float = 0.75, adl_drop_threshold: float = 0.8) -> None:
        super().__init__()
        self.adl_drop_rate = adl_drop_rate
        self.adl_drop_threshold = adl_drop_threshold

    def forward(self, input_: Tensor) -> Tensor:
        if not self.training:
            return input_
        attention = torch.mean(input_, dim=1, keepdim=True)
        importance_map = torch.sigmoid(attention)
        drop_mask = self._drop_mask(attention)
        return input_.mul(self._select_map(importance_map, drop_mask))

    def _select_map(self, importance_map: Tensor, drop_mask: Tensor) -> Tensor:
        binary_tensor = (torch.rand([], dtype=torch.float32) + self.adl_drop_rate).floor()
        return (1.0 - binary_tensor) * importance_map + binary_tensor * drop_mask

    def _drop_mask(self, attention: Tensor) -> Tensor:
        b = attention.size(0)
        max_val = torch.max(attention.view(b, -1), dim=1, keepdim=True)[0]
        return (attention < (max_val * self.adl_drop_threshold).view(b, 1, 1, 1)).float()


RESNET_ADL_POSITION = ([], [], [], [0], [0, 2])  # ``_ADL_POSITION``: after these blocks of layer0..4


class ResNetAdl(nn.Module):
    """``wsol/resnet.py`` ResNetAdl: ResNetCam with ADL modules inserted in layer3 / layer4."""

    _make_layer = ResNetCam._make_layer
    forward = ResNetCam.forward
    forward_features = ResNetCam.forward_features

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000, large_feature_map: bool = False,
                 adl_drop_rate: float = 0.75, adl_drop_threshold: float = 0.8) -> None:
        super().__init__()
        self.adl = (adl_drop_rate, adl_drop_threshold)
        _add_resnet_stem(self)
        self.layer1 = self._make_adl_layer(64, layers[0], 1, RESNET_ADL_POSITION[1])
        self.layer2 = self._make_adl_layer(128, layers[1], 2, RESNET_ADL_POSITION[2])
        self.layer3 = self._make_adl_layer(256, layers[2], 1 if large_feature_map else 2, RESNET_ADL_POSITION[3])
        self.layer4 = self._make_adl_layer(512, layers[3], 1, RESNET_ADL_POSITION[4])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def _make_adl_layer(self, planes: int, blocks: int, stride: int, split: Sequence[int]) -> nn.Sequential:
        layers = list(self._make_layer(planes, blocks, stride).children())
        for pos in reversed(split):
            layers.insert(pos + 1, Adl(*self.adl))
        return nn.Sequential(*layers)


class InceptionAdl(nn.Module):
    """``wsol/inception.py`` InceptionAdl: ADL after Mixed_5d (before its pool), Mixed_6e and SPG_A3_2b; no
    dropout; the class map is ``SPG_A4``'s (bias included)."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False, adl_drop_rate: float = 0.75,
                 adl_drop_threshold: float = 0.8) -> None:
        super().__init__()
        self.large_feature_map = large_feature_map
        self.ADL_5d = Adl(adl_drop_rate, adl_drop_threshold)
        self.ADL_6e = Adl(adl_drop_rate, adl_drop_threshold)
        self.ADL_A3_2b = Adl(adl_drop_rate, adl_drop_threshold)
        _add_inception_trunk(self)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The input of ``SPG_A4``."""
        x = _inception_pool(self, self.ADL_5d(_inception_to_5d(self, x)))
        x = self.ADL_6e(self.Mixed_6e(_inception_to_6d(self, x)))
        return self.ADL_A3_2b(self.SPG_A3_2b(self.SPG_A3_1b(x)))

    def forward(self, x: Tensor, labels: Tensor | None = None, return_cam: bool = False) -> Tensor | dict[str, Tensor]:
        """``{'logits'}``, or with ``return_cam`` the label's ``SPG_A4`` map."""
        x = self.SPG_A4(self.forward_features(x))
        logits = self.avgpool(x).view(x.shape[0:2])
        if return_cam:
            return x.clone().detach()[range(x.shape[0]), labels]
        return {"logits": logits}


def resnet50_adl(num_classes: int = 1000, large_feature_map: bool = False, adl_drop_rate: float = 0.75,
                 adl_drop_threshold: float = 0.8) -> ResNetAdl:
    """``wsol.resnet50('adl', ...)``."""
    return ResNetAdl((3, 4, 6, 3), num_classes, large_feature_map, adl_drop_rate, adl_drop_threshold)


def vgg16_adl(num_classes: int = 1000, large_feature_map: bool = False, adl_drop_rate: float = 0.75,
              adl_drop_threshold: float = 0.8) -> VggCam:
    """``wsol.vgg16('adl', ...)``: VggCam on the ``adl`` config."""
    features = vgg_method_features(_vgg_config("adl", large_feature_map), adl_drop_rate, adl_drop_threshold)
    return VggCam(features, num_classes)


def inception_v3_adl(num_classes: int = 1000, large_feature_map: bool = False, adl_drop_rate: float = 0.75,
                     adl_drop_threshold: float = 0.8) -> InceptionAdl:
    """``wsol.inception_v3('adl', ...)``."""
    return InceptionAdl(num_classes, large_feature_map, adl_drop_rate, adl_drop_threshold)
