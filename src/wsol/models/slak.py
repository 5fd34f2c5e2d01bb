"""SLaK (Liu et al., ICLR 2023), written for wsol, with the official checkpoints' key names.

``import wsol.models.slak`` registers ``slak_tiny``, ``slak_small`` and ``slak_base`` with timm. The layout
follows the authors' ``SLaK.py`` in the setting of the released ImageNet-1K models (``--Decom True
--kernel_size 51 49 47 13 5 --width_factor 1.3``, BN after every conv): ConvNeXt-like stages whose
depth-wise conv is the sum of a (K x 5) conv, a (5 x K) conv and a 5 x 5 conv, each followed by
BatchNorm (``large_kernel.LoRA1``, ``large_kernel.LoRA2``, ``large_kernel.small_conv``).

Checkpoints: the weights are read from ``"model"`` / ``"state_dict"`` wrappers; SLaK is trained with
sparse masks, but only the dense (already masked) weights are needed, so mask entries are ignored.
Older code of the authors called the two decomposed branches ``Decom1`` / ``Decom2``; those keys are
renamed to ``LoRA1`` / ``LoRA2``. A checkpoint holding a single full ``lkb_origin`` kernel per block
cannot be decomposed and is refused with the list of keys.

The pretrained config uses mean = std = (0.5, 0.5, 0.5) and 384 x 384 inputs, as CAM Back Again
fine-tunes (12 x 12 last feature maps); the authors' ImageNet models were trained at 224 with the
ImageNet mean/std. Nothing is downloaded: ``timm.create_model("slak_tiny", pretrained=True,
pretrained_cfg_overlay={"file": PATH})`` loads a local checkpoint through :func:`load_official_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wsol.models.official import (
    ReparamLargeKernelConv,
    build_with_official_weights,
    load_official_checkpoint,
    structural_reparam,
)

__all__ = ["SLaK", "load_official_checkpoint", "slak_base", "slak_small", "slak_tiny"]


class SLaKBlock(nn.Module):
    """Decomposed large kernel (+BN) -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale, residual."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        small_kernel: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        decom: bool = True,
        bn: bool = True,
        merged: bool = False,
    ) -> None:
        super().__init__()
        if decom:
            branches = {"LoRA1": (kernel_size, small_kernel), "LoRA2": (small_kernel, kernel_size)}
        else:
            branches = {"lkb_origin": (kernel_size, kernel_size)}
        if small_kernel < kernel_size:
            branches["small_conv"] = (small_kernel, small_kernel)
        self.large_kernel = ReparamLargeKernelConv(dim, branches, merged=merged, bn=bn)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Residual block, channels-last MLP as in ConvNeXt."""
        y = self.large_kernel(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class SLaK(nn.Module):
    """SLaK classifier: ConvNeXt macro design with sparse-trained decomposed 51x51 kernels.

    ``forward_features`` returns the last stage's map (B, C, H/32, W/32) before pooling;
    ``forward_head`` applies GAP -> LayerNorm ``norm`` -> Linear ``head``. ``dims`` are multiplied by
    ``width_factor`` (truncated to int) as in the official code; ``kernel_size`` lists the four stage
    kernels followed by the short side of the decomposed kernels (and size of the small branch).
    """

    #: Key renames applied to official checkpoints (the authors' older branch names).
    official_key_renames: tuple[tuple[str, str], ...] = (
        (r"\.large_kernel\.Decom1\.", ".large_kernel.LoRA1."),
        (r"\.large_kernel\.Decom2\.", ".large_kernel.LoRA2."),
    )

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        kernel_size: Sequence[int] = (51, 49, 47, 13, 5),
        width_factor: float = 1.3,
        decom: bool = True,
        bn: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        head_init_scale: float = 1.0,
        small_kernel_merged: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("global_pool", None)  # timm may pass it; SLaK always averages
        if kwargs:
            raise TypeError(f"SLaK got unexpected arguments: {sorted(kwargs)}")
        if len(depths) != 4 or len(dims) != 4 or len(kernel_size) != 5:
            raise ValueError("SLaK needs 4 depths, 4 dims and 5 kernel sizes (4 stages + the small one)")
        widths = [int(d * width_factor) for d in dims]
        self.pretrained_cfg: dict[str, Any] = _cfg()  # replaced by timm's resolved config in create_model
        self.default_cfg = self.pretrained_cfg
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.drop_rate = drop_rate
        # timm's LayerNorm2d: layer norm over C of a (B, C, H, W) tensor, parameters ``weight`` and ``bias``
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_chans, widths[0], 4, stride=4), LayerNorm2d(widths[0], eps=1e-6))
        ])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(widths[i], eps=1e-6), nn.Conv2d(widths[i], widths[i + 1], 2, stride=2)
            ))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        start = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                SLaKBlock(widths[i], kernel_size[i], kernel_size[-1], rates[start + j],
                          layer_scale_init_value, decom, bn, small_kernel_merged)
                for j in range(depths[i])
            ]))
            start += depths[i]
            self.feature_info.append(dict(num_chs=widths[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d | nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- timm-style plumbing -------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the stages."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        """The final Linear layer."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (0: no head)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def structural_reparam(self) -> SLaK:
        """Fold the decomposed and small branches (and their BN) into one K x K kernel (in place)."""
        structural_reparam(self)
        return self

    # --- forward -------------------------------------------------------------------------------
    def stage_features(self, x: Tensor) -> list[Tensor]:
        """Each stage's output, strides 4, 8, 16, 32 (for a U-Net decoder); the last is forward_features."""
        outs = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = down(x)
            if self.grad_checkpointing and torch.is_grad_enabled():
                for block in stage:
                    x = checkpoint(block, x, use_reentrant=False)
            else:
                x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """Last feature map (B, C, H/32, W/32), before pooling and the final LayerNorm."""
        return self.stage_features(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """GAP -> LayerNorm -> (dropout) -> Linear; ``pre_logits`` stops before the Linear."""
        x = self.norm(x.mean(dim=(-2, -1)))
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 384, 384), "pool_size": (12, 12), "crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "downsample_layers.0.0", "classifier": "head",
        "paper_ids": "arXiv:2207.03620", **kwargs,
    }


default_cfgs = generate_default_cfgs({"slak_tiny": _cfg(), "slak_small": _cfg(), "slak_base": _cfg()})

_ARCHS: dict[str, dict[str, Any]] = {
    "slak_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "slak_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "slak_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SLaK:
    return build_with_official_weights(SLaK, variant, pretrained, **{**_ARCHS[variant], **kwargs})


@register_model
def slak_tiny(pretrained: bool = False, **kwargs: Any) -> SLaK:
    """SLaK-T: depths 3/3/9/3, dims 96..768 x 1.3, kernels 51/49/47/13 decomposed with 5."""
    return _create("slak_tiny", pretrained, **kwargs)


@register_model
def slak_small(pretrained: bool = False, **kwargs: Any) -> SLaK:
    """SLaK-S: depths 3/3/27/3, dims 96..768 x 1.3."""
    return _create("slak_small", pretrained, **kwargs)


@register_model
def slak_base(pretrained: bool = False, **kwargs: Any) -> SLaK:
    """SLaK-B: depths 3/3/27/3, dims 128..1024 x 1.3."""
    return _create("slak_base", pretrained, **kwargs)
