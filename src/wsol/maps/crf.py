"""Dense CRF on score maps: the exact Gaussian kernels shared by F-CAM's CRF loss, and mean-field refinement.

The fully connected CRF of Krahenbuhl & Koltun, as Bae et al. use it to post-process CAMs: a unary from the
score map (foreground probability p, background 1 - p), a Potts pairwise term with an appearance kernel
(position and colour, ``sigma_xy``, ``sigma_rgb``) and a smoothness kernel (position only), and a few
mean-field iterations. The kernels are computed exactly (no permutohedral lattice), on the image
average-pooled by ``downsample`` to keep the N x N kernel affordable; positions stay in input pixels so the
sigmas mean the same at any ``downsample``. Runs batched on the caller's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsol.errors import WSOLError

GRID = 64  # default longest side of the grid the CRF runs on (N = 4096 at most: a 64 MB kernel block)


def bilateral_features(image: Tensor, sigma_rgb: float, sigma_xy: float, downsample: int = 1) -> Tensor:
    """Scaled features (B, N, 5) ``[x / sigma_xy, y / sigma_xy, rgb / sigma_rgb]`` of a raw image (B, 3, H, W)
    average-pooled by ``downsample`` (positions = block centres in input pixels)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise WSOLError(f"CRF: image must be (B, 3, H, W), got shape {tuple(image.shape)}")
    s = int(downsample)
    img = F.avg_pool2d(image.float(), s, s, ceil_mode=True) if s > 1 else image.float()
    b, _, h, w = img.shape
    ys = (torch.arange(h, device=img.device, dtype=img.dtype) * s + (s - 1) / 2) / sigma_xy
    xs = (torch.arange(w, device=img.device, dtype=img.dtype) * s + (s - 1) / 2) / sigma_xy
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pos = torch.stack([xx, yy], -1).reshape(1, h * w, 2).expand(b, -1, -1)
    rgb = img.flatten(2).transpose(1, 2) / sigma_rgb
    return torch.cat([pos, rgb], dim=2)


def dense_gaussian_filter(features: Tensor, values: Tensor, chunk: int = 2048) -> Tensor:
    """``A @ values`` with ``A_ij = exp(-|f_i - f_j|^2 / 2)`` computed exactly, in row chunks.

    ``features`` (B, N, D), ``values`` (B, N, K) -> (B, N, K). Memory O(B x chunk x N).
    """
    out = torch.empty_like(values)
    sq = (features * features).sum(-1)
    for start in range(0, features.shape[1], chunk):
        f = features[:, start:start + chunk]
        d2 = sq[:, start:start + chunk, None] + sq[:, None, :] - 2 * f @ features.transpose(1, 2)
        out[:, start:start + chunk] = torch.exp(-0.5 * d2.clamp_min(0)) @ values
    return out


def crf_refine(images: Tensor, maps: Tensor, *, iterations: int = 5, sigma_rgb: float = 13.0,
               sigma_xy: float = 80.0, bilateral_weight: float = 10.0, smooth_sigma_xy: float = 3.0,
               smooth_weight: float = 3.0, downsample: int | None = None, chunk: int = 2048) -> Tensor:
    """Foreground probability (B, H, W) after mean-field inference of a dense CRF.

    ``images``: raw RGB (B, 3, H, W) in 0..255; ``maps``: score maps (B, H, W) in [0, 1] read as the
    foreground probability of the unary. Defaults are the usual pydensecrf settings (appearance kernel
    sxy 80, srgb 13, weight 10; smoothness kernel sxy 3, weight 3). ``downsample`` (default: the smallest
    that makes the pooled grid's longest side at most ``GRID``) trades resolution for the N x N kernel's cost.
    The result is at the input resolution (bilinear from the pooled grid when ``downsample > 1``).
    """
    if maps.ndim != 3 or images.ndim != 4 or images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
        raise WSOLError(f"CRF: maps {tuple(maps.shape)} must be (B, H, W) of images {tuple(images.shape)}")
    if torch.isnan(maps).any() or maps.min() < 0 or maps.max() > 1:
        raise WSOLError("CRF: score maps must lie in [0, 1] (normalise them first)")
    h, w = maps.shape[-2:]
    s = int(downsample) if downsample is not None else max(1, math.ceil(max(h, w) / GRID))
    with torch.no_grad():
        p = maps[:, None].float()
        p = F.avg_pool2d(p, s, s, ceil_mode=True) if s > 1 else p
        gh, gw = p.shape[-2:]
        p = p.flatten(1).clamp(1e-5, 1 - 1e-5)
        unary = torch.stack([torch.log1p(-p), torch.log(p)], dim=2)  # (B, N, 2): -U
        appearance = bilateral_features(images.float(), sigma_rgb, sigma_xy, s)
        smooth = appearance[..., :2] * (sigma_xy / smooth_sigma_xy)
        q = unary.softmax(dim=2)
        for _ in range(iterations):
            message = bilateral_weight * (dense_gaussian_filter(appearance, q, chunk) - q)  # k(i, i) = 1: not a
            message += smooth_weight * (dense_gaussian_filter(smooth, q, chunk) - q)        # message to itself
            q = (unary + message).softmax(dim=2)
        fg = q[..., 1].reshape(-1, 1, gh, gw)
        if (gh, gw) != (h, w):
            fg = F.interpolate(fg, size=(h, w), mode="bilinear", align_corners=False)
    return fg[:, 0].to(maps.dtype)


def crf_on_images(images: Tensor, maps: np.ndarray) -> np.ndarray:
    """:func:`crf_refine` of score maps (B, h, w) against their uint8 images (B, H, W, 3), the images resized
    (bilinear, antialiased) to the maps' size."""
    rgb = images.permute(0, 3, 1, 2).float()
    if tuple(rgb.shape[-2:]) != tuple(maps.shape[-2:]):
        rgb = F.interpolate(rgb, size=tuple(maps.shape[-2:]), mode="bilinear", antialias=True, align_corners=False)
    return crf_refine(rgb, torch.from_numpy(maps)).numpy()
