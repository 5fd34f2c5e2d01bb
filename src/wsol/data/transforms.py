"""The WSOL protocol's image pipelines, with sizes and normalisation as parameters.

Why these and not keep-aspect resizing: the reference implementation (wsolevaluation ``data_loaders.py``)
resizes every image to a *square*, whatever its aspect, and its GT boxes are rescaled the same way
(``x * 224 / width``). A keep-aspect pipeline would misalign maps and boxes. Classic torchvision transforms
on PIL images are used so that resizing is PIL's bilinear (antialiased), exactly as in the reference.

- train: resize (s, s) -> random crop c -> random horizontal flip -> tensor -> normalise
  (protocol: s = 256, c = 224; CAM Back Again's large-kernel runs: 384 crops with mean = std = 0.5).
- eval:  resize (c, c) -> tensor -> normalise (no crop: the score map must cover the whole image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision import transforms as T

from wsol.errors import WSOLError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)  # EfficientNet-Lite0 and CAM Back Again's RepLKNet/ConvNeXt recipes


def _check(name: str, values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != 3:
        raise WSOLError(f"{name}: expected 3 values (R, G, B), got {len(values)}")
    if name == "std" and min(values) <= 0:
        raise WSOLError(f"std: every value must be > 0, got {values}")
    return values


def train_transform(
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """PIL image -> augmented, normalised tensor (3, crop, crop): the protocol's training pipeline."""
    if not 0 < crop <= resize:
        raise WSOLError(f"crop size {crop} must be positive and at most the resize size {resize}")
    return T.Compose(
        [
            T.Resize((resize, resize)),
            T.RandomCrop(crop),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(_check("mean", mean), _check("std", std)),
        ]
    )


def eval_transform(
    size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable:
    """PIL image -> normalised tensor (3, size, size), squashed to a square as the reference does."""
    if size <= 0:
        raise WSOLError(f"image size must be positive, got {size}")
    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(_check("mean", mean), _check("std", std))])


def normalize_batch(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """A uint8 batch (B, H, W, 3) -> the normalised float batch (B, 3, H, W).

    Same arithmetic as ``ToTensor`` + ``Normalize`` (divide by 255, subtract the mean, divide by the std), so
    the result is bit-identical to :func:`eval_transform`'s on the same resized pixels. Decoding workers
    hand over uint8 (4x less to copy between processes and to the GPU) and the device does the arithmetic.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise WSOLError(f"expected a uint8 batch (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    m = torch.tensor(_check("mean", mean), dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(_check("std", std), dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.permute(0, 3, 1, 2).contiguous().float().div(255).sub(m).div(s)
