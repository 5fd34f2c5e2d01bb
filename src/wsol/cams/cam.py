"""CAM (Zhou et al.) with negative weight clamping (NWC, Bae et al.): one forward pass, one einsum."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, forward_raw_weights, forward_target_weights
from wsol.errors import WSOLError


class CAM(CAMMethod):
    """``M_k = sum_c W[k, c] F_c`` with the head's folded weights.

    ``as_published=True`` is CAM Back Again's ``generate_heatmap.py`` instead (``get_feature_maps`` +
    ``get_heatmap_from_features``): the backbone's output before any head norm times the target's *raw*
    head weights, averaged over channels, ``relu``, divided by its max. It ignores a head BatchNorm
    (RepLKNet's), which changes the map; the default folds it in, so that ``mean(map) + b`` is the logit.

    Args:
        nwc: use ``max(W[k, c], 0)`` (negative weight clamping).
        include_bias: add ``b_k`` to every pixel, so that the spatial mean of the map equals the logit
            for GAP heads (``mean(CAM) + b == logit``). methods.md writes ``+ b / (h w)``, which gives that
            identity only for the per-pixel logit share ``(W F + b) / (h w)`` summed over space; both
            differ from the plain CAM by a constant, which min-max normalisation removes.
    """

    name = "cam"

    def __init__(self, *, nwc: bool = False, include_bias: bool = False, as_published: bool = False,
                 eval_mode: bool = True) -> None:
        super().__init__(eval_mode=eval_mode)
        if as_published and (nwc or include_bias):
            raise WSOLError("cam: as_published is the authors' procedure; it takes no nwc / include_bias")
        self.nwc = nwc
        self.include_bias = include_bias
        self.as_published = as_published

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if self.as_published:
            f, logits, tgt, w = forward_raw_weights(model, x, explicit)
            with torch.no_grad():
                maps = (f * w.to(f.dtype)[:, :, None, None]).mean(1).clamp_min(0)
                peak = maps.flatten(1).amax(1).view(-1, 1, 1)
                maps = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
            return maps, logits, tgt
        f, logits, tgt, w, b = forward_target_weights(model, x, explicit)
        with torch.no_grad():
            if self.nwc:
                w = w.clamp_min(0)
            maps = torch.einsum("bc,bchw->bhw", w.to(f.dtype), f)
            if self.include_bias:
                maps = maps + b.view(-1, 1, 1)
        return maps, logits, tgt
