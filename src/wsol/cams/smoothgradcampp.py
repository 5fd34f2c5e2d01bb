"""Smooth Grad-CAM++ (Omeiza et al.): Grad-CAM++ with derivatives averaged over noisy copies."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.gradient import GradientCAM, activations_and_grads, gradcampp_weights


class SmoothGradCAMpp(GradientCAM):
    """The clean image and ``n_samples`` noisy copies (Gaussian, ``std`` in normalised-input units) run
    in ONE batched forward/backward; the first, second and third derivative powers are averaged over
    the noisy copies and plugged into the Grad-CAM++ closed form on the clean activations.

    Args:
        n_samples: noisy copies per image (4 as in torchcam).
        std: noise standard deviation (0.3 as in torchcam).
        seed: seed of the noise generator (None: the global RNG).
    """

    name = "smoothgradcampp"

    def __init__(self, *, n_samples: int = 4, std: float = 0.3, seed: int | None = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_samples = int(n_samples)
        self.std = float(std)
        self.seed = seed

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        b = x.shape[0]
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = torch.randn((self.n_samples, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
        xs = torch.cat([x.unsqueeze(0), x.unsqueeze(0) + self.std * noise]).flatten(0, 1)
        act, grad, logits, tgt = activations_and_grads(model, xs, explicit, self.target_layer, n_clean=b)
        clean = act[:b]
        g = grad[b:].view(self.n_samples, b, *grad.shape[1:])
        g1 = g.mean(0)
        g2 = (g * g).mean(0)
        g3 = (g * g * g).mean(0)
        maps = torch.einsum("bc,bchw->bhw", gradcampp_weights(clean, g1, g2, g3), clean)
        return (maps.clamp_min(0) if self.relu else maps), logits, tgt
