"""F-CAM losses: partial cross-entropy, the dense CRF loss (Tang et al.) and the size constraint by an
extended log-barrier (Kervadec et al.), with the log-barrier's ``t`` schedule.

Dense CRF loss
--------------
``R(S, X) = -(1/B) sum_b sum_k S_k^T A S_k`` with the bilateral affinity
``A_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))`` on pixel positions ``p``
and the raw 0..255 colours ``I`` (``A_ii = 1`` is included), weighted by ``lambda_crf`` (2e-9). Tang et al.
filter with a permutohedral lattice (a C++ extension, no maintained PyPI package installs here). We
compute ``A S`` *exactly* and densely, on the device, in chunks of rows (memory O(chunk x N)), on an
image average-pooled by ``downsample = s``: block colours are block means, block positions are block
centres in input pixels (so ``sigma_xy`` keeps its meaning), and the energy is multiplied by ``s^4`` (the
number of full-resolution pixel pairs a block pair stands for), so that the value and ``lambda_crf``
stay those of the full-resolution loss. ``s = 1`` is the exact full-resolution energy. The error of
``s > 1`` comes from colours and probabilities varying inside a block (block means make colours more
alike). Measured relative error of the energy (``tests/test_fcam_losses.py``): a 48 x 48 two-colour image
with a blurred disc: 1.2% (s = 2), 5% (s = 4), 19% (s = 8); a smoothed random texture: 17% (s = 2 or 4).
The paper configs use s = 2 at 224 px. Cost: O((HW / s^2)^2) per image: at 224 px with ``s = 4``, 3136^2 = 9.8 M
kernel entries per image (milliseconds on a GPU); the gradient ``-2 A S / B`` reuses the forward's
``A S`` (no kernel is kept for backward).

Size constraint
---------------
Both maps must be large: ``-sum_p S^r_p <= 0`` for r in {background, foreground}, relaxed by the
extended log-barrier ``ELB(z) = -(1/t) log(-z)`` if ``z <= -1/t^2``, else ``t z - (1/t) log(1/t^2) + 1/t``,
averaged over the B x 2 constraints; ``t`` starts at 1 and is multiplied by 1.01 each epoch, up to 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsol.errors import WSOLError
from wsol.fcam.sampling import IGNORE
from wsol.maps.crf import bilateral_features, dense_gaussian_filter


# ---------------------------------------------------------------------------------------------- pCE
def partial_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled pixels (``labels != IGNORE``); 0 when none is labelled."""
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum()
    return loss / count.clamp_min(1)


# ---------------------------------------------------------------------------------------------- CRF
class _DenseCRFEnergy(torch.autograd.Function):
    """``sum_b sum_k S_k^T A S_k`` with the gradient ``2 A S`` (A symmetric) from the forward's ``A S``."""

    @staticmethod
    def forward(ctx, features: Tensor, probs: Tensor, chunk: int) -> Tensor:  # noqa: ANN001
        a_s = dense_gaussian_filter(features, probs, chunk)
        ctx.save_for_backward(a_s)
        return (probs * a_s).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # noqa: ANN001
        (a_s,) = ctx.saved_tensors
        return None, 2 * grad * a_s, None


def dense_crf_loss(image: Tensor, probs: Tensor, sigma_rgb: float = 15.0, sigma_xy: float = 100.0,
                   downsample: int = 1, chunk: int = 2048) -> Tensor:
    """``-(s^4 / B) sum_b sum_k S_k^T A S_k`` (unweighted) for a raw 0..255 image (B, 3, H, W) and soft
    segmentations ``probs`` (B, K, H, W); see the module docstring for ``downsample = s``."""
    if probs.ndim != 4 or probs.shape[0] != image.shape[0] or probs.shape[-2:] != image.shape[-2:]:
        raise WSOLError(f"CRF loss: probabilities {tuple(probs.shape)} do not match image {tuple(image.shape)}")
    s = int(downsample)
    if s < 1:
        raise WSOLError(f"CRF loss: downsample must be >= 1, got {downsample}")
    with torch.autocast(probs.device.type, enabled=False):  # distances need float32, not bf16/fp16
        with torch.no_grad():
            feats = bilateral_features(image.detach().float(), sigma_rgb, sigma_xy, s)
        p = F.avg_pool2d(probs.float(), s, s, ceil_mode=True) if s > 1 else probs.float()
        values = p.flatten(2).transpose(1, 2)  # (B, N, K)
        energy = _DenseCRFEnergy.apply(feats, values, int(chunk))
    return -energy * (s ** 4) / probs.shape[0]


def dense_crf_loss_bruteforce(image: Tensor, probs: Tensor, sigma_rgb: float = 15.0,
                              sigma_xy: float = 100.0) -> Tensor:
    """The same energy by the O(N^2) definition, pixel pair by pixel pair in float64 (tests only)."""
    b, k, h, w = probs.shape
    total = torch.zeros((), dtype=torch.float64)
    img = image.double()
    pr = probs.double()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], 1)
    for i in range(b):
        rgb = img[i].flatten(1).T
        for p in range(h * w):
            a = torch.exp(-((pos - pos[p]) ** 2).sum(1) / (2 * sigma_xy ** 2)
                          - ((rgb - rgb[p]) ** 2).sum(1) / (2 * sigma_rgb ** 2))
            total = total + (pr[i].flatten(1)[:, p:p + 1] * pr[i].flatten(1) * a).sum()
    return -total / b


# ---------------------------------------------------------------------------------------------- size / ELB
def extended_log_barrier(z: Tensor, t: float) -> Tensor:
    """Elementwise ``ELB(z)`` for the constraint ``z <= 0`` (methods.md): ``-(1/t) log(-z)`` if
    ``z <= -1/t^2``, else ``t z - (1/t) log(1/t^2) + 1/t`` (continuous, with a continuous derivative)."""
    if t <= 0:
        raise WSOLError(f"log-barrier t must be > 0, got {t}")
    bound = -1.0 / t ** 2
    inside = z <= bound
    safe = torch.where(inside, z, torch.full_like(z, bound))
    barrier = -torch.log(-safe) / t
    linear = t * z - math.log(1.0 / t ** 2) / t + 1.0 / t
    return torch.where(inside, barrier, linear)


def size_loss(probs: Tensor, t: float) -> Tensor:
    """Both regions large: mean over images and the two maps of ``ELB(-sum_p S^r_p)``."""
    return extended_log_barrier(-probs.float().flatten(2).sum(-1), t).mean()


@dataclass
class LogBarrierSchedule:
    """``t`` of the extended log-barrier: ``init`` at epoch 0, times ``mult`` per epoch, at most ``max_t``."""

    init: float = 1.0
    mult: float = 1.01
    max_t: float = 10.0

    def t(self, epoch: int) -> float:
        return float(min(self.max_t, self.init * self.mult ** max(0, int(epoch))))


# ---------------------------------------------------------------------------------------------- total
@dataclass
class FCAMLossWeights:
    """alpha (pCE), lambda_crf, lambda_size and the CRF kernel (F-CAM defaults)."""

    alpha: float = 1.0
    lambda_crf: float = 2e-9
    lambda_size: float = 0.1
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    crf_downsample: int = 1


def fcam_loss(logits: Tensor, labels: Tensor, raw_image: Tensor, t: float,
              w: FCAMLossWeights | None = None) -> dict[str, Tensor]:
    """All terms for decoder logits (B, 2, H, W), pseudo-labels (B, H, W) and the raw 0..255 image."""
    w = w or FCAMLossWeights()
    probs = logits.float().softmax(1)
    terms = {"pce": partial_cross_entropy(logits.float(), labels)}
    zero = logits.new_zeros((), dtype=torch.float32)
    terms["crf"] = dense_crf_loss(raw_image, probs, w.sigma_rgb, w.sigma_xy, w.crf_downsample) \
        if w.lambda_crf > 0 else zero
    terms["size"] = size_loss(probs, t) if w.lambda_size > 0 else zero
    terms["loss"] = w.alpha * terms["pce"] + w.lambda_crf * terms["crf"] + w.lambda_size * terms["size"]
    return terms
