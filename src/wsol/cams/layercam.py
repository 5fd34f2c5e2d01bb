"""LayerCAM (Jiang et al.): element-wise ReLU(gradient) times activation."""

from __future__ import annotations

from torch import Tensor

from wsol.cams.gradient import GradientCAM


class LayerCAM(GradientCAM):
    """``ReLU(sum_c ReLU(g_c) * A_c)``."""

    name = "layercam"

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        return (grad.clamp_min(0) * act).sum(dim=1)
