"""CAM (Zhou et al.) with negative weight clamping (NWC, Bae et al.): one forward pass, one einsum."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, forward_target_weights


class CAM(CAMMethod):
    """``M_k = sum_c W[k, c] F_c`` with the head's folded weights.

    Args:
        nwc: use ``max(W[k, c], 0)`` (negative weight clamping).
        include_bias: add ``b_k`` to every pixel, so that the spatial mean of the map equals the logit
            for GAP heads (``mean(CAM) + b == logit``). methods.md writes ``+ b / (h w)``, which gives that
            identity only for the per-pixel logit share ``(W F + b) / (h w)`` summed over space; both
            differ from the plain CAM by a constant, which min-max normalisation removes.
    """

    name = "cam"

    def __init__(self, *, nwc: bool = False, include_bias: bool = False, eval_mode: bool = True) -> None:
        super().__init__(eval_mode=eval_mode)
        self.nwc = nwc
        self.include_bias = include_bias

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, logits, tgt, w, b = forward_target_weights(model, x, explicit)
        with torch.no_grad():
            if self.nwc:
                w = w.clamp_min(0)
            maps = torch.einsum("bc,bchw->bhw", w.to(f.dtype), f)
            if self.include_bias:
                maps = maps + b.view(-1, 1, 1)
        return maps, logits, tgt
