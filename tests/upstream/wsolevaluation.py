"""Test oracle: the ``cam`` models of clovaai/wsolevaluation (Choe et al., CVPR 2020), written anew.

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

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VGG16_CONFIGS",
    "InceptionCam",
    "ResNetCam",
    "VggCam",
    "inception_v3_cam",
    "randomize",
    "resnet50_cam",
    "save_wsolevaluation_checkpoint",
    "vgg16_cam",
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
        head = model.fc if isinstance(getattr(model, "fc", None), nn.Linear) else getattr(model, "SPG_A4", None)
        features = getattr(model, "forward_features", None)
        if isinstance(head, (nn.Linear, nn.Conv2d)) and callable(features):
            f = features(torch.randn(2, 3, image_size, image_size, generator=gen))
            pooled_rms = f.mean(dim=(2, 3)).pow(2).mean().sqrt().clamp_min(1e-6)
            head.weight.mul_(2.0 / (head.weight.std() * pooled_rms * head.weight[0].numel() ** 0.5))
    return model


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
