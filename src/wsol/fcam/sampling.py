"""Pseudo-pixel sampling for F-CAM, batched on the device.

From the frozen classifier's CAM ``C`` of the GT class, upsampled to the input size (see
:func:`upsample_cams`), per image:

- foreground region ``C+`` = pixels above the Otsu threshold of ``C``, eroded with a square
  ``erosion x erosion`` kernel (11 in F-CAM); when the erosion leaves nothing, the un-eroded region;
- background region ``C-`` = the ``n_neg`` fraction of pixels with the lowest activation (exactly
  ``ceil(n_neg * H * W)`` pixels, ties broken arbitrarily), minus any pixel also in ``C+`` (a pixel
  cannot be both: such pixels are left out of both regions);
- every minibatch, ``num_samples`` pixels are drawn uniformly from each region, each seed is dilated with
  a ``dilation x dilation`` square (3 in F-CAM) *within its region*, and every other pixel is ignored.

Labels are ``1`` foreground, ``0`` background and :data:`IGNORE` elsewhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from wsol.errors import WSOLError

IGNORE = -1


def upsample_cams(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Raw CAMs (B, h, w) -> (B, H, W) by bilinear interpolation (the region rules are scale-free)."""
    if cams.ndim != 3:
        raise WSOLError(f"CAMs must be (B, h, w), got shape {tuple(cams.shape)}")
    if tuple(cams.shape[-2:]) == tuple(size):
        return cams.float()
    return F.interpolate(cams[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def otsu_thresholds(maps: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold of each map (B, ...) -> (B,), from a ``bins``-bin histogram over its [min, max].

    The threshold is the upper edge of the last bin of the class below it (as scikit-image's
    ``threshold_otsu`` uses bin centres, values may differ by less than one bin width). A constant map
    gets its value (nothing lies above it).
    """
    flat = maps.flatten(1).float()
    b = flat.shape[0]
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    span = (hi - lo).clamp_min(torch.finfo(flat.dtype).tiny)
    idx = ((flat - lo) / span * bins).long().clamp_(0, bins - 1)
    hist = torch.zeros(b, bins, device=flat.device, dtype=flat.dtype).scatter_add_(1, idx, torch.ones_like(flat))
    centres = (torch.arange(bins, device=flat.device, dtype=flat.dtype) + 0.5) / bins
    w0 = hist.cumsum(1)
    w1 = hist.sum(1, keepdim=True) - w0
    m0 = (hist * centres).cumsum(1)
    mean0 = m0 / w0.clamp_min(1)
    mean1 = (m0[:, -1:] - m0) / w1.clamp_min(1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    between[:, -1] = -1  # splitting after the last bin puts everything in one class
    k = between.argmax(1)
    thr = lo[:, 0] + (k + 1).to(flat.dtype) / bins * span[:, 0]
    return torch.where((hi - lo)[:, 0] > 0, thr, hi[:, 0])


def erode(mask: Tensor, size: int) -> Tensor:
    """Binary erosion (B, H, W) with a ``size x size`` square (odd); outside the image counts as on."""
    if size <= 1:
        return mask
    pad = size // 2
    inv = (~mask)[:, None].float()
    return F.max_pool2d(inv, size, stride=1, padding=pad)[:, 0] < 0.5


def dilate(mask: Tensor, size: int) -> Tensor:
    """Binary dilation (B, H, W) with a ``size x size`` square (odd)."""
    if size <= 1:
        return mask
    return F.max_pool2d(mask[:, None].float(), size, stride=1, padding=size // 2)[:, 0] > 0.5


def sampling_regions(cams: Tensor, n_neg: float = 0.1, erosion: int = 11) -> tuple[Tensor, Tensor]:
    """Foreground ``C+`` and background ``C-`` regions (bool (B, H, W)) of CAMs at the input size."""
    if not 0.0 < n_neg < 1.0:
        raise WSOLError(f"F-CAM n_neg must lie in (0, 1), got {n_neg}")
    if erosion < 1 or erosion % 2 == 0:
        raise WSOLError(f"F-CAM erosion must be an odd size >= 1, got {erosion}")
    b, h, w = cams.shape
    flat = cams.flatten(1).float()
    above = flat > otsu_thresholds(flat)[:, None]
    above = above.view(b, h, w)
    eroded = erode(above, erosion)
    keep = eroded.flatten(1).any(1).view(b, 1, 1)
    fg = torch.where(keep, eroded, above)
    k = max(1, math.ceil(n_neg * h * w))
    low = flat.topk(k, dim=1, largest=False).indices
    bg = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, low, True).view(b, h, w)
    both = fg & bg
    return fg & ~both, bg & ~both


def _draw(region: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    """``num`` seeds drawn uniformly without replacement from each region (fewer if it is smaller)."""
    b = region.shape[0]
    flat = region.flatten(1)
    scores = torch.rand(flat.shape, device=flat.device, generator=generator)
    scores = scores.masked_fill(~flat, -1.0)
    top = scores.topk(min(num, flat.shape[1]), dim=1)
    seeds = torch.zeros_like(flat)
    seeds.scatter_(1, top.indices, top.values >= 0)
    return seeds.view(b, *region.shape[1:])


def sample_pseudo_labels(cams: Tensor, n_neg: float = 0.1, num_samples: int = 1, erosion: int = 11,
                         dilation: int = 3, generator: torch.Generator | None = None) -> Tensor:
    """Partial pseudo-labels (B, H, W) long: 1 foreground seeds, 0 background seeds, ``IGNORE`` elsewhere.

    ``cams`` are CAMs at the input size (:func:`upsample_cams`); a new draw on every call.
    """
    if num_samples < 1:
        raise WSOLError(f"F-CAM num_samples must be >= 1, got {num_samples}")
    if dilation < 1 or dilation % 2 == 0:
        raise WSOLError(f"F-CAM dilation must be an odd size >= 1, got {dilation}")
    fg, bg = sampling_regions(cams, n_neg, erosion)
    fg_seeds = dilate(_draw(fg, num_samples, generator), dilation) & fg
    bg_seeds = dilate(_draw(bg, num_samples, generator), dilation) & bg
    labels = torch.full(cams.shape, IGNORE, dtype=torch.long, device=cams.device)
    labels[bg_seeds] = 0
    labels[fg_seeds] = 1
    return labels
