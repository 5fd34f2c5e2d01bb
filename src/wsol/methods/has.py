"""Hide-and-Seek (Singh & Lee, ICCV 2017): hide random square patches of each training image.

As wsolevaluation's ``wsol/method/has.py``: the image is cut into ``grid_size`` x ``grid_size``-pixel
patches (the last row / column may be smaller), each hidden (set to 0, the dataset mean after normalisation)
with probability ``drop_rate``, independently per image; test images are left whole. Any backbone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.methods.base import TrainingMethod


def hide_patches(images: Tensor, grid_size: int, drop_rate: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """A copy of ``images`` (B, C, H, W) with each ``grid_size``-pixel patch zeroed with probability
    ``drop_rate`` (one draw per image and patch); ``grid_size`` 0 leaves them as they are."""
    if grid_size == 0:
        return images
    b, _, h, w = images.shape
    rows, cols = math.ceil(h / grid_size), math.ceil(w / grid_size)
    draws = torch.rand(b, 1, rows, cols, generator=generator, device="cpu").to(images.device)
    keep = (draws > drop_rate).to(images.dtype)  # hidden where draw <= drop_rate, as random() <= drop_rate
    keep = F.interpolate(keep, scale_factor=grid_size, mode="nearest")[:, :, :h, :w]
    return images * keep


class HaS(TrainingMethod):
    """Cross-entropy on images with hidden patches."""

    name = "has"

    @classmethod
    def check(cls, options) -> None:
        if options.has_grid_size < 0:
            raise WSOLError(f"config method.has_grid_size={options.has_grid_size}: must be >= 0 (pixels)")
        if not 0 <= options.has_drop_rate <= 1:
            raise WSOLError(f"config method.has_drop_rate={options.has_drop_rate}: must lie in [0, 1]")

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        hidden = hide_patches(images, self.options.has_grid_size, self.options.has_drop_rate)
        return super().loss(model, hidden, labels)
