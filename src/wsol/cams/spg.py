"""SPG's localization map (Zhang et al., ECCV 2018), as wsolevaluation computes it at test time.

``ResNetSpg`` / ``VggSpg`` / ``InceptionSpg`` ``forward(x, labels, return_cam=True)``: the target's channel of
``SPG_A4`` (``SPG_A_4`` for VGG16), the 1x1 class convolution, bias included. In wsol ``SPG_A4`` is
``head.fc`` over the feature map F, so this is ``W_k . F + b_k`` (``cam`` without the constant ``b_k``).
Only for models trained with ``method.name=spg`` (:mod:`wsol.methods.spg`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, pick_targets


class SPGMap(CAMMethod):
    """The target's ``SPG_A4`` class map."""

    name = "spg"

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        from wsol.methods.spg import spg_network

        spg_network(model)  # a clear error for a model without SPG's layers
        with torch.no_grad():
            f = model.features(x)
            logits = model.logits_from_features(f)
            tgt = pick_targets(explicit, logits)
            fc = model.head.fc
            maps = torch.einsum("bc,bchw->bhw", fc.weight[tgt].to(f.dtype), f) + fc.bias[tgt].view(-1, 1, 1)
        return maps, logits, tgt
