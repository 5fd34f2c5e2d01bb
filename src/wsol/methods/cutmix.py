"""CutMix (Yun et al., ICCV 2019): paste a random box of another image of the batch, mix the labels by area.

As wsolevaluation's ``wsol/method/cutmix.py`` and its use in ``main.py``: with probability ``prob`` (and
``beta > 0``) draw ``lam ~ Beta(beta, beta)``, a box of side ratio ``sqrt(1 - lam)`` centred uniformly (clipped
to the image), paste the box of a random permutation of the batch, and weigh the two cross-entropies by the
box's actual area: ``lam = 1 - area / (H W)``. Test images are left whole. Any backbone. Draws come from
torch's generator (seeded by the run, like the data augmentation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.methods.base import TrainingMethod


def cut_box(height: int, width: int, lam: float, centre: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` (end exclusive) of the box of side ratio ``sqrt(1 - lam)`` centred at ``centre``
    = (y, x), clipped to the image (so it may cover less than ``1 - lam``)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = centre
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return y0, x0, y1, x1


def paste(images: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, float]:
    """Images with ``box`` taken from ``images[perm]``, and the kept share ``lam = 1 - box area / (H W)``."""
    y0, x0, y1, x1 = box
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (images.shape[2] * images.shape[3])


class CutMix(TrainingMethod):
    """Cross-entropy on mixed images, weighted by the area of each label."""

    name = "cutmix"

    @classmethod
    def check(cls, options) -> None:
        if not (math.isfinite(options.cutmix_beta) and options.cutmix_beta >= 0):
            raise WSOLError(f"config method.cutmix_beta={options.cutmix_beta}: must be >= 0 (0: no mixing)")
        if not 0 <= options.cutmix_prob <= 1:
            raise WSOLError(f"config method.cutmix_prob={options.cutmix_prob}: must lie in [0, 1]")

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        o = self.options
        if o.cutmix_beta > 0 and o.cutmix_prob > float(torch.rand(())):
            beta = torch.tensor(float(o.cutmix_beta))
            lam = float(torch.distributions.Beta(beta, beta).sample())
            h, w = images.shape[2], images.shape[3]
            centre = (int(torch.randint(h, ())), int(torch.randint(w, ())))
            perm = torch.randperm(images.shape[0]).to(images.device)
            mixed, lam = paste(images, perm, cut_box(h, w, lam, centre))
            logits = model(mixed)
            return F.cross_entropy(logits, labels) * lam + F.cross_entropy(logits, labels[perm]) * (1 - lam), logits
        return super().loss(model, images, labels)
