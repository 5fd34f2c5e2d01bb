"""PC1 (CAM Back Again, Yasuki & Taki): the first principal component of the class-weighted features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, forward_target_weights, frame_is_on


def orient_by_max_abs(v: Tensor) -> Tensor:
    """Fix the arbitrary sign of singular vectors (B, n): the entry of largest magnitude is positive."""
    idx = v.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(v.gather(1, idx))
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def pc1_maps(f: Tensor, w: Tensor, eps: float = 1e-12) -> Tensor:
    """Batched PC1 maps (B, h, w) from features F (B, C, h, w) and class weights W_k (B, C).

    1. weight channel c by ``W[k, c]``; 2. min-max normalise each channel to [0, 1] (a constant channel
    becomes 0); 3. the C channels are samples of an (h w)-vector: centre over channels and take the first
    principal direction (top right singular vector, ``torch.linalg.svd``); 4. divide by its max (sign
    chosen so the largest-magnitude entry is positive); 5. binarise at the map's mean and, if more than
    half of the pixels of the true one-pixel frame are on, flip to ``1 - map``. (The authors' script
    slices the border off by one; here the frame is the real outermost ring.)
    """
    b, c, h, wd = f.shape
    x = (f * w.to(f.dtype).view(b, c, 1, 1)).flatten(2).float()  # (B, C, hw)
    mn = x.amin(dim=2, keepdim=True)
    rng = x.amax(dim=2, keepdim=True) - mn
    x = torch.where(rng > eps, (x - mn) / rng.clamp_min(eps), torch.zeros_like(x))
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = orient_by_max_abs(vh[:, 0, :])
    v = v / v.amax(dim=1, keepdim=True).clamp_min(eps)
    maps = v.view(b, h, wd)
    flip = frame_is_on(maps)
    return torch.where(flip.view(b, 1, 1), 1 - maps, maps)


class PC1(CAMMethod):
    """PC1 of the CAM-weighted features; target = predicted class by default (the authors' script)."""

    name = "pc1"

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, logits, tgt, w, _ = forward_target_weights(model, x, explicit)
        with torch.no_grad():
            maps = pc1_maps(f, w)
        return maps, logits, tgt
