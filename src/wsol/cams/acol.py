"""ACoL's localization map (Zhang et al., CVPR 2018), as wsolevaluation computes it at test time.

``ResNetAcol`` / ``VggAcol`` / ``InceptionAcol`` ``forward(x, labels, return_cam=True)``: branch B runs on the
trunk features erased by branch A's map of the target class (``acol_threshold`` of the model), and the map is
``max(normalize_tensor(A_k), normalize_tensor(B_k))`` (each min-max scaled to [0, 1]; NaN where a branch's
map is constant, as upstream). Only for models trained with ``method.name=acol``
(:mod:`wsol.methods.acol`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod


class ACoLMap(CAMMethod):
    """The maximum of ACoL's two normalised class maps of the target."""

    name = "acol"

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        from wsol.methods.acol import acol_forward
        from wsol.methods.protocol import normalize_tensor

        with torch.no_grad():
            out = acol_forward(model, x, explicit)  # the top-1 of branch A when no targets are given
            idx = torch.arange(x.shape[0], device=out.maps_a.device)
            tgt = out.labels.to(out.maps_a.device)
            a = normalize_tensor(out.maps_a[idx, tgt].unsqueeze(1))  # per-channel: the target's channel only
            b = normalize_tensor(out.maps_b[idx, tgt].unsqueeze(1))
        return torch.maximum(a, b)[:, 0], out.logits, tgt
