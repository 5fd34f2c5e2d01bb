"""PxAP (pixel average precision) and peak IoU for mask datasets, exact to the WSOL reference.

The state is two histograms of score-map values, one over GT-foreground pixels and one over background
pixels, on the bin edges ``append(arange(0, 1, interval), [1, 2, 3])``; ignored pixels count nowhere.
Memory is O(bins), and histograms add up across batches, processes and DDP ranks. The arithmetic lives
in :mod:`wsol.metrics.counts` (shared with the torch-free :class:`~wsol.metrics.counts.PixelCounts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wsol.metrics._counters import CounterMetric
from wsol.metrics.counts import (
    PIXEL_STATES,
    empty_pixel_state,
    pixel_counts,
    pixel_curves,
    pixel_edges,
    pixel_result,
    threshold_list,
)


class PixelAP(CounterMetric):
    """``update(score_maps, gt_masks, ignore_masks=None)`` with maps (B, H, W) in [0, 1] and bool masks."""

    STATES = PIXEL_STATES

    full_state_update = False
    higher_is_better = True

    def __init__(self, cam_curve_interval: float = 0.001, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = threshold_list(cam_curve_interval)
        self.edges = pixel_edges(self.thresholds)
        for name, default in empty_pixel_state(len(self.edges) - 1).items():
            self.add_state(name, default=torch.from_numpy(default), dist_reduce_fx="sum")

    def update(self, score_maps: torch.Tensor | np.ndarray, gt_masks: torch.Tensor | np.ndarray,
               ignore_masks: torch.Tensor | np.ndarray | None = None, names: Sequence[str] | None = None) -> None:
        maps, masks = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                       for x in (score_maps, gt_masks))
        if isinstance(ignore_masks, torch.Tensor):
            ignore_masks = ignore_masks.detach().cpu().numpy()
        counts = pixel_counts(maps, masks, ignore_masks, self.edges, self.cam_curve_interval, names)
        self.add_arrays({"fg_hist": counts[0], "bg_hist": counts[1], "num_images": np.int64(len(maps))})

    def curves(self) -> dict[str, np.ndarray]:
        """Precision, recall and IoU at each bin edge from the top, as the reference arranges them."""
        return pixel_curves(self.state_arrays(), self.edges)

    def compute(self) -> dict[str, float | int]:
        """PxAP (%, the reference's right-Riemann sum) and the peak mask IoU (%) with its threshold."""
        return pixel_result(self.state_arrays(), self.edges, self.cam_curve_interval)
