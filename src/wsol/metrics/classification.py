"""Top-1 / top-5 classification accuracy over a split, exact across DDP ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from wsol.metrics.counts import topk_hits


class ClassAccuracy(Metric):
    """``update(logits, labels)``; ``compute()`` gives ``top1_cls`` and ``top5_cls`` (%) and ``num_images``.

    The hits are :func:`~wsol.metrics.counts.topk_hits`, the ranks Top-1/Top-5 Loc use, so ``top1_cls`` here
    and in :class:`~wsol.metrics.BoxAccuracy` agree image for image. (torchmetrics' ``MulticlassAccuracy``
    takes top-1 by ``argmax``, which breaks exact ties differently from ``topk``.) Integer counters, summed
    across ranks.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("top1", "top5", "total"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        top1, top5 = topk_hits(logits, labels)
        self.top1 += int(top1.sum())
        self.top5 += int(top5.sum())
        self.total += len(top1)

    def compute(self) -> dict[str, float]:
        n = max(int(self.total), 1)
        return {"top1_cls": int(self.top1) * 100.0 / n, "top5_cls": int(self.top5) * 100.0 / n,
                "num_images": int(self.total)}
