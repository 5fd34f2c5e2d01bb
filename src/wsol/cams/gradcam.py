"""Grad-CAM (Selvaraju et al.): channel weights = spatial mean of dS_k/dA."""

from __future__ import annotations

from torch import Tensor

from wsol.cams.gradient import GradientCAM


class GradCAM(GradientCAM):
    """``ReLU(sum_c mean_ij(dS_k/dA_c) A_c)``."""

    name = "gradcam"

    def weights(self, act: Tensor, grad: Tensor) -> Tensor:
        return grad.mean(dim=(2, 3))
