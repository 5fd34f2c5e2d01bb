"""One WSOL split's metrics from batches of (image ids, score maps, logits, labels).

The one place that pairs a split's score maps with its annotations: the GT boxes rescaled to the maps'
224 x 224 frame as the reference does, the masks loaded per batch, Top-1/Top-5 Loc from the logits. ``wsol
evaluate`` (saved maps), ``wsol localize --metadata`` and training's validation and test all use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsol.data.metadata import Metadata
from wsol.metrics.counts import BoxCounts, PixelCounts


class SplitEvaluator:
    """MaxBoxAcc, MaxBoxAccV2 and Top-1/Top-5 Loc where the split has boxes; PxAP and peak IoU where it has
    masks and ``mask_root`` is given (``masks=False`` leaves them out).

    ``synced=False`` counts with the torch-free :class:`~wsol.metrics.counts.BoxCounts` /
    :class:`~wsol.metrics.counts.PixelCounts`; ``synced=True`` with the torchmetrics
    :class:`~wsol.metrics.BoxAccuracy` / :class:`~wsol.metrics.PixelAP`, whose states sum across DDP ranks
    (training). ``gt_boxes`` passes boxes already rescaled (several evaluators of one split share them).
    """

    def __init__(self, metadata: Metadata, mask_root: str | Path | None = None, *,
                 cam_curve_interval: float = 0.001, iou_thresholds: Sequence[int] = (30, 50, 70),
                 synced: bool = False, masks: bool = True,
                 gt_boxes: Mapping[str, np.ndarray] | None = None) -> None:
        self.metadata = metadata
        self.mask_root = mask_root
        if synced:
            from wsol.metrics.box_accuracy import BoxAccuracy
            from wsol.metrics.pixel_ap import PixelAP

            box_metric, pixel_metric = BoxAccuracy, PixelAP
        else:
            box_metric, pixel_metric = BoxCounts, PixelCounts
        self.boxes = box_metric(cam_curve_interval, iou_thresholds) if metadata.has_boxes else None
        self.masks = (pixel_metric(cam_curve_interval)
                      if masks and metadata.has_masks and mask_root is not None else None)
        self.gt_boxes = (gt_boxes if gt_boxes is not None else metadata.resized_boxes()) if self.boxes else {}

    @property
    def metrics(self) -> dict[str, Any]:
        """The metric objects by kind (``boxes``, ``masks``), those the split has."""
        return {name: m for name, m in (("boxes", self.boxes), ("masks", self.masks)) if m is not None}

    def load_masks(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """GT foregrounds and ignore regions (B, 224, 224) of ``ids``."""
        pairs = [self.metadata.load_mask(i, self.mask_root) for i in ids]  # type: ignore[arg-type]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def update(self, ids: Sequence[str], score_maps: Any, logits: Any = None, labels: Any = None, *,
               masks: tuple[np.ndarray, np.ndarray] | None = None, names: Sequence[str] | None = None) -> None:
        """Add a batch: score maps (B, 224, 224) in [0, 1] of the images ``ids``; ``logits`` (B, K) and GT
        ``labels`` for Top-1/Top-5 Loc; ``masks`` if already loaded; ``names`` for error messages (the ids
        by default, e.g. the map files)."""
        names = list(names) if names is not None else list(ids)
        if self.boxes is not None:
            self.boxes.update(score_maps, [self.gt_boxes[i] for i in ids], logits=logits, labels=labels, names=names)
        if self.masks is not None:
            foreground, ignore = masks if masks is not None else self.load_masks(ids)
            self.masks.update(score_maps, foreground, ignore, names=names)

    def compute(self) -> dict[str, dict[str, Any]]:
        """``{"boxes": ..., "masks": ...}``: each metric's result, for the kinds the split has."""
        return {name: m.compute() for name, m in self.metrics.items()}
