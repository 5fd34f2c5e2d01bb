"""The Grad-CAM family: one batched forward and one backward to the target layer, no parameter grads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.cams.base import CAMMethod, capture_output, pick_targets, resolve_layer


def activations_and_grads(model: nn.Module, x: Tensor, explicit: Tensor | None,
                          layer: str | nn.Module | None = None,
                          n_clean: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Activations A and gradients dS_k/dA of the target scores at ``layer`` (default: F).

    With ``layer`` = F (the default) the backbone runs without autograd and the backward touches the head
    only. Other layers are captured by a forward hook removed on exit. Gradients are taken with
    ``torch.autograd.grad``, so no parameter ``.grad`` is written. ``n_clean``: only the first
    ``n_clean`` rows give the logits / top-1 targets (the rest are noisy copies, targets repeated).
    Returns ``(A, dS/dA, logits of the clean rows, targets of the clean rows)``.
    """
    mod = resolve_layer(model, layer)
    n = x.shape[0] if n_clean is None else n_clean
    if mod is None or mod is getattr(model, "feature_layer", None):
        with torch.no_grad():
            f = model.features(x)
        act = f.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model.logits_from_features(act)
    else:
        with capture_output(mod) as store, torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
        act = store.output
        if act is None or not act.requires_grad:
            raise RuntimeError(f"target layer {type(mod).__name__} produced no differentiable output")
    tgt = pick_targets(explicit, logits[:n])
    reps = x.shape[0] // n
    full = tgt.repeat(reps)
    with torch.enable_grad():  # the caller may be inside torch.no_grad() (e.g. a validation loop)
        score = logits.gather(1, full.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, act)
    return act.detach(), grad.detach(), logits[:n].detach(), tgt


class GradientCAM(CAMMethod):
    """Base: ``map = [ReLU](sum_c weights_c A_c)``; subclasses define ``weights`` or ``combine``."""

    def __init__(self, *, target_layer: str | nn.Module | None = None, relu: bool = True,
                 eval_mode: bool = True) -> None:
        super().__init__(eval_mode=eval_mode)
        self.target_layer = target_layer
        self.relu = relu

    def weights(self, act: Tensor, grad: Tensor) -> Tensor:
        """Channel weights (B, C)."""
        raise NotImplementedError

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        return torch.einsum("bc,bchw->bhw", self.weights(act, grad), act)

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        act, grad, logits, tgt = activations_and_grads(model, x, explicit, self.target_layer)
        maps = self.combine(act, grad)
        return (maps.clamp_min(0) if self.relu else maps), logits, tgt


def gradcampp_weights(act: Tensor, g1: Tensor, g2: Tensor, g3: Tensor, eps: float = 1e-6) -> Tensor:
    """Grad-CAM++ channel weights (eq. 19 of the paper): ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)``,
    zero where the gradient is zero; ``w_c = sum_ij alpha_ij ReLU(g_ij)``."""
    sum_a = act.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + eps)
    alpha = torch.where(g1 != 0, alpha, torch.zeros_like(alpha))
    return (alpha * g1.clamp_min(0)).sum(dim=(2, 3))
