"""MaxBoxAcc, MaxBoxAccV2 and Top-1/Top-5 Loc: streaming, mergeable, exact to the WSOL reference.

The reference evaluates each score map at every threshold of ``arange(0, 1, interval)`` with one OpenCV
threshold + findContours call per threshold (1000 by default). We get the same boxes' verdicts for all
thresholds from one union-find sweep over the pixels (:mod:`wsol.metrics._kernels`), and call OpenCV only
for the few thresholds where it matters which contour is the largest (components that disagree).

Per image and threshold we keep whether a box reaches each IoU criterion, for the largest contour
(MaxBoxAcc) and for all contours (MaxBoxAccV2); the states are counters that add up across batches,
processes and DDP ranks. The arithmetic lives in :mod:`wsol.metrics.counts` (shared with the torch-free
:class:`~wsol.metrics.counts.BoxCounts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wsol.metrics._counters import CounterMetric
from wsol.metrics.counts import (
    BOX_STATES,
    FIXED_THRESHOLD,
    LARGEST_IOU,
    MIN_CAM_CURVE_INTERVAL,
    box_curves,
    box_hits,
    box_increments,
    box_result,
    check_iou_thresholds,
    default_threads,
    empty_box_state,
    grid_index,
    threshold_hits,
    threshold_list,
    topk_hits,
)

__all__ = ["FIXED_THRESHOLD", "LARGEST_IOU", "MIN_CAM_CURVE_INTERVAL", "BoxAccuracy", "grid_index",
           "threshold_hits", "threshold_list"]


class BoxAccuracy(CounterMetric):
    """GT-known box accuracy over thresholds: MaxBoxAcc, MaxBoxAccV2, and Top-1/Top-5 Loc.

    ``update(score_maps, gt_boxes, logits=None, labels=None)`` takes a batch of score maps (B, H, W) in
    [0, 1] (tensor or array, normally 224 x 224, of each image's GT class), the GT boxes of each image in
    the same pixel frame (a list of (n_i, 4) arrays), and optionally the classifier's logits (B, K) and the
    GT labels (B,) for Top-1/Top-5 Loc and classification accuracy.

    States are counts per threshold: for the largest contour at IoU 50 (MaxBoxAcc) and for all contours
    per IoU criterion (MaxBoxAccV2), summed across processes (:meth:`state_arrays` / :meth:`add_arrays`
    move them to and from plain arrays, e.g. for shards).
    """

    STATES = BOX_STATES

    full_state_update = False
    higher_is_better = True

    def __init__(self, cam_curve_interval: float = 0.001, iou_thresholds: Sequence[int] = (30, 50, 70),
                 num_threads: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cam_curve_interval = cam_curve_interval
        # the sweep (numba) and OpenCV release the GIL: images of a batch are evaluated in threads.
        self.num_threads = num_threads or default_threads()
        self.thresholds = threshold_list(cam_curve_interval)
        self.iou_thresholds = check_iou_thresholds(iou_thresholds)
        for name, default in empty_box_state(len(self.thresholds), len(self.iou_thresholds)).items():
            self.add_state(name, default=torch.from_numpy(default), dist_reduce_fx="sum")

    def update(self, score_maps: torch.Tensor | np.ndarray, gt_boxes: Sequence[np.ndarray],
               logits: torch.Tensor | None = None, labels: torch.Tensor | Sequence[int] | None = None,
               names: Sequence[str] | None = None) -> None:
        maps = score_maps.detach().cpu().numpy() if isinstance(score_maps, torch.Tensor) else np.asarray(score_maps)
        largest, every = box_hits(maps, gt_boxes, self.thresholds, self.iou_thresholds, self.num_threads, names)
        hits = topk_hits(logits, labels) if logits is not None else (None, None)
        self.add_arrays(box_increments(largest, every, *hits))

    def curves(self) -> dict[str, np.ndarray]:
        """BoxAcc (%) per threshold: ``largest`` (T,) at IoU 50, ``all`` (I, T) per IoU criterion."""
        return box_curves(self.state_arrays())

    def compute(self) -> dict:
        """See :func:`wsol.metrics.counts.box_result`."""
        return box_result(self.state_arrays(), self.thresholds, self.iou_thresholds, self.cam_curve_interval)
