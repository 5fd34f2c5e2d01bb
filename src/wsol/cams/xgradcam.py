"""XGrad-CAM (Fu et al.): activation-weighted gradients, normalised by the channel's activation sum."""

from __future__ import annotations

from torch import Tensor

from wsol.cams.gradient import GradientCAM


class XGradCAM(GradientCAM):
    """``w_c = sum_ij(g_ij A_ij) / (sum_ij A_ij + eps)``."""

    name = "xgradcam"

    def __init__(self, *, eps: float = 1e-7, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def weights(self, act: Tensor, grad: Tensor) -> Tensor:
        return (grad * act).sum(dim=(2, 3)) / (act.sum(dim=(2, 3)) + self.eps)
