"""Pooling heads whose class weights fold into an exact CAM.

A head maps the last feature map ``F`` (B, C, h, w) to logits (B, K). Every head can also return the
*effective* per-image linear classifier ``(W, b)`` acting on the pooled vector, with any per-channel
affine normalisation (BatchNorm before pooling, LayerNorm after pooling) folded in, so that for GAP

    logits == einsum("bkc,bc->bk", W, F.mean((2, 3))) + b

and therefore ``mean over space of (sum_c W[k, c] F_c) + b_k == logit_k`` (the CAM logit identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError

POOLS = ("gap", "gmp", "tap")


def tap_pool(f: Tensor, theta: float = 0.1) -> Tensor:
    """Thresholded average pooling (Bae et al.): (B, C, h, w) -> (B, C).

    Per sample and channel keep the positions where ``F_c > theta * max(F_c)`` and average over them
    (the sum divided by ``max(count, 1)``).
    """
    flat = f.flatten(2)
    thr = theta * flat.amax(dim=2, keepdim=True)
    keep = (flat > thr).to(flat.dtype)
    count = keep.sum(dim=2).clamp_min(1.0)
    return (flat * keep).sum(dim=2) / count


class Pool(nn.Module):
    """Global pooling ``gap`` (mean), ``gmp`` (max) or ``tap`` (thresholded average, ``theta``)."""

    def __init__(self, kind: str = "gap", theta: float = 0.1) -> None:
        super().__init__()
        kind = kind.lower()
        if kind not in POOLS:
            raise WSOLError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLS)}")
        self.kind = kind
        self.theta = float(theta)

    def forward(self, f: Tensor) -> Tensor:
        if self.kind == "gap":
            return f.mean(dim=(2, 3))
        if self.kind == "gmp":
            return f.amax(dim=(2, 3))
        return tap_pool(f, self.theta)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (f", theta={self.theta}" if self.kind == "tap" else "")


class LinearHead(nn.Module):
    """``pool -> (dropout) -> Linear``: ResNet, VGG-GAP, EfficientNet, Inception-CAM."""

    def __init__(self, fc: nn.Linear, pool: Pool | None = None, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = pool if pool is not None else Pool("gap")
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = fc

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    @property
    def in_features(self) -> int:
        return self.fc.in_features

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(f)))

    def class_weights(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Effective ``W`` (B, K, C) and ``b`` (B, K) acting on the pooled vector."""
        w = self.fc.weight
        b = self.fc.bias if self.fc.bias is not None else w.new_zeros(w.shape[0])
        bsz = f.shape[0]
        return w.unsqueeze(0).expand(bsz, -1, -1), b.unsqueeze(0).expand(bsz, -1)


class BatchNormHead(LinearHead):
    """``BatchNorm2d -> pool -> Linear`` (RepLKNet); the BN affine part is folded into ``W``."""

    def __init__(self, norm: nn.BatchNorm2d, fc: nn.Linear, pool: Pool | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__(fc, pool, drop_rate)
        self.norm = norm

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.norm(f))))

    def _affine(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel ``(scale, shift)`` with ``BN(F) = scale * F + shift`` as the forward uses it."""
        bn = self.norm
        use_batch = bn.training or bn.running_mean is None
        if use_batch:
            mean = f.mean(dim=(0, 2, 3))
            var = f.var(dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return scale, shift

    def class_weights(self, f: Tensor) -> tuple[Tensor, Tensor]:
        w, b = super().class_weights(f)
        scale, shift = self._affine(f)
        return w * scale, b + w @ shift


class LayerNormHead(LinearHead):
    """``pool -> LayerNorm -> Linear`` (ConvNeXt, SLaK); folded per image from the pooled vector."""

    def __init__(self, norm: nn.Module, fc: nn.Linear, pool: Pool | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__(fc, pool, drop_rate)
        if getattr(norm, "weight", None) is None and getattr(norm, "elementwise_affine", True):
            raise WSOLError(f"LayerNormHead: {type(norm).__name__} has no affine parameters")
        self.norm = norm

    def _norm(self, p: Tensor) -> Tensor:
        n = self.norm
        return F.layer_norm(p, (p.shape[1],), getattr(n, "weight", None), getattr(n, "bias", None), n.eps)

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(self.drop(self._norm(self.pool(f))))

    def class_weights(self, f: Tensor) -> tuple[Tensor, Tensor]:
        w, b = super().class_weights(f)
        p = self.pool(f)
        mean = p.mean(dim=1, keepdim=True)
        var = p.var(dim=1, unbiased=False, keepdim=True)
        inv = torch.rsqrt(var + self.norm.eps)  # (B, 1)
        gamma = getattr(self.norm, "weight", None)
        beta = getattr(self.norm, "bias", None)
        scale = inv if gamma is None else inv * gamma  # (B, C)
        shift = -mean * scale  # (B, C)
        if beta is not None:
            shift = shift + beta
        w_eff = w * scale.unsqueeze(1)
        b_eff = b + torch.einsum("bkc,bc->bk", w, shift)
        return w_eff, b_eff
