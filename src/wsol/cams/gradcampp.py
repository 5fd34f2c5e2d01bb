"""Grad-CAM++ (Chattopadhay et al.), the paper's closed form (as pytorch-grad-cam computes it)."""

from __future__ import annotations

from torch import Tensor

from wsol.cams.gradient import GradientCAM, gradcampp_weights


class GradCAMpp(GradientCAM):
    """``ReLU(sum_c w_c A_c)``, ``w_c = sum_ij alpha_ij ReLU(g_ij)``, ``alpha = g^2/(2g^2 + sum(A) g^3)``."""

    name = "gradcampp"

    def weights(self, act: Tensor, grad: Tensor) -> Tensor:
        g2 = grad * grad
        return gradcampp_weights(act, grad, g2, g2 * grad)
