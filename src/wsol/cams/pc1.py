"""PC1 (CAM Back Again, Yasuki & Taki): the first principal component of the class-weighted features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, forward_raw_weights, forward_target_weights, frame_is_on


def orient_by_max_abs(v: Tensor) -> Tensor:
    """Fix the arbitrary sign of singular vectors (B, n): the entry of largest magnitude is positive (the
    convention of scikit-learn's PCA since 1.5, ``svd_flip(u_based_decision=False)``)."""
    idx = v.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(v.gather(1, idx))
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def first_component(f: Tensor, w: Tensor, eps: float = 1e-12) -> Tensor:
    """Steps 1-4 of PC1, shared by both variants: (B, h, w) maps with max 1 from F (B, C, h, w) and W_k (B, C).

    1. weight channel c by ``W[k, c]``; 2. min-max normalise each channel to [0, 1] (a constant channel
    becomes 0; the authors' script divides by zero there); 3. the C channels are samples of an (h w)-vector:
    centre over channels and take the first principal direction (top right singular vector, exact SVD;
    scikit-learn's randomised solver agrees to about 1e-6); 4. orient it by its largest-magnitude entry and
    divide by its max.
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
    return v.view(b, h, wd)


def pc1_maps(f: Tensor, w: Tensor, eps: float = 1e-12) -> Tensor:
    """Batched PC1 maps (B, h, w): :func:`first_component`, then binarised at the map's mean and, if more
    than half of the pixels of the true one-pixel frame are on, flipped to ``1 - map``. (The authors'
    script slices the border off by one: see :func:`pc1_maps_as_published`.)"""
    maps = first_component(f, w, eps)
    flip = frame_is_on(maps)
    return torch.where(flip.view(-1, 1, 1), 1 - maps, maps)


def published_frame_is_on(maps: Tensor) -> Tensor:
    """(B,) bool: the frame test of CAM Back Again's ``get_heatmap_from_features`` as written: pixels above the
    mean, the inside ``[1:h-2, 1:w-2]`` zeroed (so the frame is row / column 0 and the last *two* rows /
    columns), their count divided by ``2 (h - 1) + 2 (w - 1)`` (``(side - 1) * 4``), more than 0.5."""
    b, h, w = maps.shape
    on = maps > maps.flatten(1).mean(1).view(b, 1, 1)
    frame = torch.ones(h, w, dtype=torch.bool, device=maps.device)
    frame[1:h - 2, 1:w - 2] = False
    count = (on & frame).flatten(1).sum(1).double()
    return count / (2 * (h - 1) + 2 * (w - 1)) > 0.5


def pc1_maps_as_published(f: Tensor, w: Tensor, eps: float = 1e-12) -> Tensor:
    """PC1 as CAM Back Again's script computes it: :func:`first_component` of F times the *raw* head weights,
    flipped to ``1 - map`` by :func:`published_frame_is_on`."""
    maps = first_component(f, w, eps)
    flip = published_frame_is_on(maps)
    return torch.where(flip.view(-1, 1, 1), 1 - maps, maps)


class PC1(CAMMethod):
    """PC1 of the CAM-weighted features; target = predicted class by default (the authors' script).

    ``as_published=True``: the authors' procedure exactly (raw head weights, their frame test); the default
    uses the folded class weights (a head BatchNorm included) and the true one-pixel frame.
    """

    name = "pc1"

    def __init__(self, *, as_published: bool = False, eval_mode: bool = True) -> None:
        super().__init__(eval_mode=eval_mode)
        self.as_published = as_published

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if self.as_published:
            f, logits, tgt, w = forward_raw_weights(model, x, explicit)
            with torch.no_grad():
                return pc1_maps_as_published(f, w), logits, tgt
        f, logits, tgt, w, _ = forward_target_weights(model, x, explicit)
        with torch.no_grad():
            maps = pc1_maps(f, w)
        return maps, logits, tgt
