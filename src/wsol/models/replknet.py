"""RepLKNet (Ding et al., CVPR 2022), written for wsol, with the official checkpoints' key names.

``import wsol.models.replknet`` registers ``replknet_31b``, ``replknet_31l`` and ``replknet_xl`` with timm,
so ``timm.create_model("replknet_31b", num_classes=200)`` builds one. The module layout follows the
authors' ``replknet.py`` so their state dicts load as they are (see :func:`load_official_checkpoint`),
in the training-time form (``large_kernel.lkb_origin`` + ``large_kernel.small_conv``) or the
re-parameterised one (``large_kernel.lkb_reparam``).

The pretrained config uses mean = std = (0.5, 0.5, 0.5) and 384 x 384 inputs, the setting CAM Back Again
(Yasuki and Taki, CVPR 2024) fine-tunes with (12 x 12 last feature maps); the ImageNet-1K checkpoints of
the authors were trained at 224 with the ImageNet mean/std, so pass your own transform for them.
Nothing is downloaded; to load weights through timm: ``timm.create_model("replknet_31b",
pretrained=True, pretrained_cfg_overlay={"file": "RepLKNet-31B_ImageNet-1K_224.pth"}, num_classes=200)``
(the head is left fresh when the class count differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wsol.models.official import (
    ReparamLargeKernelConv,
    build_with_official_weights,
    conv_bn,
    load_official_checkpoint,
    structural_reparam,
)

__all__ = ["RepLKNet", "load_official_checkpoint", "replknet_31b", "replknet_31l", "replknet_xl"]


class RepLKBlock(nn.Module):
    """BN -> 1x1 conv-BN-ReLU -> depth-wise large kernel -> ReLU -> 1x1 conv-BN, plus the shortcut."""

    def __init__(
        self,
        channels: int,
        dw_channels: int,
        kernel_size: int,
        small_kernel: int | None,
        drop_path: float = 0.0,
        merged: bool = False,
    ) -> None:
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = conv_bn(channels, dw_channels, 1, padding=0, act=nn.ReLU())
        branches = {"lkb_origin": (kernel_size, kernel_size)}
        if small_kernel is not None:
            if small_kernel > kernel_size:
                raise ValueError("the small kernel cannot be larger than the large kernel")
            branches["small_conv"] = (small_kernel, small_kernel)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, branches, merged=merged)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = conv_bn(dw_channels, channels, 1, padding=0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Residual large-kernel block."""
        out = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    """BN -> 1x1 conv-BN -> GELU -> 1x1 conv-BN, plus the shortcut."""

    def __init__(self, channels: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(channels)
        self.pw1 = conv_bn(channels, hidden, 1, padding=0)
        self.pw2 = conv_bn(hidden, channels, 1, padding=0)
        self.nonlinear = nn.GELU()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Residual feed-forward block."""
        return x + self.drop_path(self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x)))))


class RepLKNetStage(nn.Module):
    """``blocks`` alternates RepLKBlock (even indices) and ConvFFN (odd indices)."""

    def __init__(
        self,
        channels: int,
        depth: int,
        kernel_size: int,
        small_kernel: int | None,
        drop_paths: Sequence[float],
        dw_ratio: float = 1.0,
        ffn_ratio: float = 4.0,
        merged: bool = False,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks.append(RepLKBlock(channels, int(channels * dw_ratio), kernel_size, small_kernel,
                                     drop_paths[i], merged))
            blocks.append(ConvFFN(channels, int(channels * ffn_ratio), drop_paths[i]))
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """Run the blocks (with activation checkpointing when enabled and training)."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class RepLKNet(nn.Module):
    """RepLKNet classifier: stem (stride 4), 4 stages with 3 stride-2 transitions, BN -> GAP -> Linear.

    ``forward_features`` returns the last stage's map *before* the final BatchNorm ``norm`` (the CAM code
    folds that BN into the class weights); ``forward_head`` applies ``norm`` -> GAP -> ``head``.
    """

    def __init__(
        self,
        large_kernel_sizes: Sequence[int] = (31, 29, 27, 13),
        layers: Sequence[int] = (2, 2, 18, 2),
        channels: Sequence[int] = (128, 256, 512, 1024),
        small_kernel: int | None = 5,
        dw_ratio: float = 1.0,
        ffn_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        small_kernel_merged: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("global_pool", None)  # timm may pass it; RepLKNet always averages
        if kwargs:
            raise TypeError(f"RepLKNet got unexpected arguments: {sorted(kwargs)}")
        if not len(large_kernel_sizes) == len(layers) == len(channels):
            raise ValueError("large_kernel_sizes, layers and channels need one entry per stage")
        self.pretrained_cfg: dict[str, Any] = _cfg()  # replaced by timm's resolved config in create_model
        self.default_cfg = self.pretrained_cfg
        self.num_classes = num_classes
        self.num_features = channels[-1]
        self.drop_rate = drop_rate
        c0 = channels[0]
        self.stem = nn.ModuleList([
            conv_bn(in_chans, c0, 3, stride=2, padding=1, act=nn.ReLU()),
            conv_bn(c0, c0, 3, stride=1, padding=1, groups=c0, act=nn.ReLU()),
            conv_bn(c0, c0, 1, stride=1, padding=0, act=nn.ReLU()),
            conv_bn(c0, c0, 3, stride=2, padding=1, groups=c0, act=nn.ReLU()),
        ])
        rates = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        start = 0
        for i, (k, depth, ch) in enumerate(zip(large_kernel_sizes, layers, channels, strict=True)):
            self.stages.append(RepLKNetStage(ch, depth, k, small_kernel, rates[start:start + depth],
                                             dw_ratio, ffn_ratio, small_kernel_merged))
            start += depth
            self.feature_info.append(dict(num_chs=ch, reduction=4 * 2**i, module=f"stages.{i}"))
            if i < len(layers) - 1:
                nxt = channels[i + 1]
                self.transitions.append(nn.Sequential(
                    conv_bn(ch, nxt, 1, padding=0, act=nn.ReLU()),
                    conv_bn(nxt, nxt, 3, stride=2, padding=1, groups=nxt, act=nn.ReLU()),
                ))
        self.norm = nn.BatchNorm2d(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # --- timm-style plumbing -------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the stages (as the authors train)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        """The final Linear layer."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (0: no head)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def structural_reparam(self) -> RepLKNet:
        """Merge every small-kernel branch and its BN into the large kernel (in place, for inference)."""
        structural_reparam(self)
        return self

    # --- forward -------------------------------------------------------------------------------
    def _stem(self, x: Tensor) -> Tensor:
        for layer in self.stem:
            x = layer(x)
        return x

    def stage_features(self, x: Tensor) -> list[Tensor]:
        """Each stage's output, strides 4, 8, 16, 32 (for a U-Net decoder); the last is forward_features."""
        x = self._stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """Last feature map (B, C, H/32, W/32), before the final BatchNorm."""
        return self.stage_features(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """BN -> GAP -> (dropout) -> Linear; ``pre_logits`` stops before the Linear."""
        x = torch.flatten(self.avgpool(self.norm(x)), 1)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 384, 384), "pool_size": (12, 12), "crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.0.conv", "classifier": "head",
        "paper_ids": "arXiv:2203.06717", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "replknet_31b": _cfg(),
    "replknet_31l": _cfg(),
    "replknet_xl": _cfg(),
})

_ARCHS: dict[str, dict[str, Any]] = {
    "replknet_31b": dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2),
                         channels=(128, 256, 512, 1024), small_kernel=5),
    "replknet_31l": dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2),
                         channels=(192, 384, 768, 1536), small_kernel=5),
    "replknet_xl": dict(large_kernel_sizes=(27, 27, 27, 13), layers=(2, 2, 18, 2),
                        channels=(256, 512, 1024, 2048), small_kernel=None, dw_ratio=1.5),
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> RepLKNet:
    return build_with_official_weights(RepLKNet, variant, pretrained, **{**_ARCHS[variant], **kwargs})


@register_model
def replknet_31b(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """RepLKNet-31B: kernels 31/29/27/13, depths 2/2/18/2, channels 128..1024, small kernel 5."""
    return _create("replknet_31b", pretrained, **kwargs)


@register_model
def replknet_31l(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """RepLKNet-31L: as 31B with channels 192/384/768/1536."""
    return _create("replknet_31l", pretrained, **kwargs)


@register_model
def replknet_xl(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """RepLKNet-XL: kernels 27/27/27/13, channels 256..2048, no small kernel, dw_ratio 1.5."""
    return _create("replknet_xl", pretrained, **kwargs)
