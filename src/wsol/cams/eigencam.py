"""EigenCAM (Muhammad & Yeasin): class-agnostic first principal component of F over pixels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, capture_output, frame_is_on, pick_targets, resolve_layer
from wsol.cams.pc1 import orient_by_max_abs


def eigen_maps(act: Tensor) -> Tensor:
    """Projection of the pixel vectors (centred over pixels) on their first principal direction, (B, h, w).

    The sign is fixed like PC1's: if more than half of the one-pixel frame lies above the map's mean,
    the map is negated, so the object, not the frame, is high (pytorch-grad-cam leaves it arbitrary).
    """
    b, c, h, w = act.shape
    x = act.flatten(2).transpose(1, 2).float()  # (B, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    proj = orient_by_max_abs(u[:, :, 0]) * s[:, :1]
    maps = proj.view(b, h, w)
    flip = frame_is_on(maps)
    return torch.where(flip.view(b, 1, 1), -maps, maps)


class EigenCAM(CAMMethod):
    """EigenCAM on F (or ``target_layer``); ``targets`` only label the output (the map is class-agnostic)."""

    name = "eigencam"

    def __init__(self, *, target_layer: str | nn.Module | None = None, eval_mode: bool = True) -> None:
        super().__init__(eval_mode=eval_mode)
        self.target_layer = target_layer

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        mod = resolve_layer(model, self.target_layer)
        with torch.no_grad():
            if mod is None or mod is getattr(model, "feature_layer", None):
                act = model.features(x)
                logits = model.logits_from_features(act)
            else:
                with capture_output(mod) as store:
                    logits = model(x)
                act = store.output
        tgt = pick_targets(explicit, logits)
        return eigen_maps(act), logits, tgt
