"""The F-CAM decoder: a U-Net that upsamples a frozen classifier's multi-scale features to the input size.

Blocks follow F-CAM (Belharbi et al.) / the U-Net of segmentation_models: starting from the deepest
feature map (the CAM features F), each block upsamples by nearest-neighbour interpolation (x2: to the
next skip's size, or twice the current size once the skips are used up, never above the input size),
concatenates the skip of that resolution when there is one, and applies 2 x (conv3x3 + BN + ReLU).
A 3x3 head gives 2 maps (background, foreground), resized bilinearly to the input when they differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class ConvBNReLU(nn.Sequential):
    """conv3x3 (no bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample (nearest) -> [concat skip] -> 2 x (conv3x3 + BN + ReLU)."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.skip_channels = skip
        self.conv1 = ConvBNReLU(cin + skip, cout)
        self.conv2 = ConvBNReLU(cout, cout)

    def forward(self, x: Tensor, size: tuple[int, int], skip: Tensor | None = None) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class FCAMDecoder(nn.Module):
    """U-Net decoder over ``features = [f_1, ..., f_L]`` (increasing stride, ``f_L`` = F).

    Args:
        feature_channels: channels of each encoder feature map, shallowest first, F last.
        channels: output channels of the decoder blocks (F-CAM: 256, 128, 64, 32, 16).
        num_outputs: maps of the head (2: background, foreground).
    """

    def __init__(self, feature_channels: Sequence[int], channels: Sequence[int] = DECODER_CHANNELS,
                 num_outputs: int = 2) -> None:
        super().__init__()
        feature_channels = [int(c) for c in feature_channels]
        channels = [int(c) for c in channels]
        if not feature_channels or min(feature_channels) < 1:
            raise WSOLError(f"F-CAM decoder: bad encoder channels {feature_channels}")
        if not channels or min(channels) < 1:
            raise WSOLError(f"F-CAM decoder: bad decoder channels {channels}")
        skips = feature_channels[-2::-1]  # deepest skip first
        if len(skips) > len(channels):
            raise WSOLError(f"F-CAM decoder: {len(skips)} skip connections need at least as many blocks, "
                            f"got channels={channels}")
        self.feature_channels = feature_channels
        self.channels = channels
        cin = feature_channels[-1]
        blocks = []
        for i, cout in enumerate(channels):
            blocks.append(DecoderBlock(cin, skips[i] if i < len(skips) else 0, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, num_outputs, 3, padding=1)

    def forward(self, features: Sequence[Tensor], input_size: tuple[int, int]) -> Tensor:
        """Logits (B, num_outputs, H, W) at ``input_size = (H, W)``."""
        if len(features) != len(self.feature_channels):
            raise WSOLError(f"F-CAM decoder: expected {len(self.feature_channels)} feature maps "
                            f"(channels {self.feature_channels}), got {len(features)}")
        skips = list(features[-2::-1])
        x = features[-1]
        h_in, w_in = int(input_size[0]), int(input_size[1])
        for i, block in enumerate(self.blocks):
            skip = skips[i] if i < len(skips) else None
            if skip is not None:
                size = (int(skip.shape[-2]), int(skip.shape[-1]))
            else:
                size = (min(2 * int(x.shape[-2]), h_in), min(2 * int(x.shape[-1]), w_in))
            x = block(x, size, skip)
        out = self.head(x)
        if tuple(out.shape[-2:]) != (h_in, w_in):
            out = F.interpolate(out, size=(h_in, w_in), mode="bilinear", align_corners=False)
        return out
