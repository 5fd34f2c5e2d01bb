"""F-CAM (Belharbi et al.): the foreground probability of a trained decoder, at the input resolution.

Needs an :class:`wsol.fcam.FCAM` (a frozen classifier + decoder, from ``wsol fcam train`` and
:func:`wsol.fcam.load_fcam`); the map is class-agnostic, the logits and targets are the classifier's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, pick_targets
from wsol.errors import WSOLError


class FCAMMap(CAMMethod):
    """``maps = softmax(decoder(multiscale_features(x)))[:, foreground]`` (B, H, W), values in [0, 1]."""

    name = "fcam"

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        from wsol.fcam.model import FCAM

        if not isinstance(model, FCAM):
            raise WSOLError(f"method 'fcam' needs an F-CAM model (classifier + trained decoder), got "
                            f"{type(model).__name__}; train one with `wsol fcam train` and load it with "
                            "wsol.fcam.load_fcam (CLI: wsol localize --checkpoint fcam.pt --method fcam)")
        with torch.no_grad():
            feats = model.encode(x)
            logits = model.classifier.logits_from_features(feats[-1])
            tgt = pick_targets(explicit, logits)
            maps = model.decode(x, feats).float().softmax(1)[:, 1]
        return maps, logits, tgt
