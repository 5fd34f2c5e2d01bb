"""PxAP (pixel average precision) and peak IoU for mask datasets, exact to the WSOL reference.

The state is two histograms of score-map values, one over GT-foreground pixels and one over background
pixels, on the bin edges ``append(arange(0, 1, interval), [1, 2, 3])``; ignored pixels count nowhere.
Memory is O(bins), and histograms add up across batches, processes and DDP ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from wsol.errors import WSOLError
from wsol.localize.maps import check_score_map
from wsol.metrics._kernels import pixel_histograms
from wsol.metrics.box_accuracy import threshold_list


class PixelAP(Metric):
    """``update(score_maps, gt_masks, ignore_masks=None)`` with maps (B, H, W) in [0, 1] and bool masks."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, cam_curve_interval: float = 0.001, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = threshold_list(cam_curve_interval)
        self.edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        num_bins = len(self.edges) - 1
        self.add_state("fg_hist", default=torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bg_hist", default=torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, score_maps: torch.Tensor | np.ndarray, gt_masks: torch.Tensor | np.ndarray,
               ignore_masks: torch.Tensor | np.ndarray | None = None, names: Sequence[str] | None = None) -> None:
        maps, masks, ignore = (np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
                               for x in (score_maps, gt_masks, np.zeros((0, 0, 0), bool) if ignore_masks is None
                                         else ignore_masks))
        if maps.ndim != 3 or masks.shape != maps.shape or (ignore.size and ignore.shape != maps.shape):
            raise WSOLError(f"score maps {maps.shape}, GT masks {masks.shape} and ignore masks {ignore.shape} "
                            "must all be (B, H, W)")
        if maps.dtype.kind != "f":
            raise WSOLError(f"score maps must be float, got {maps.dtype}")
        if maps.dtype == np.float16:  # a half-precision model's maps: the histogram kernel takes 32/64 bits
            maps = maps.astype(np.float32)
        counts, problems = pixel_histograms(maps, masks.astype(bool, copy=False), ignore.astype(bool, copy=False),
                                            self.edges, self.cam_curve_interval)
        for i in np.flatnonzero(problems):
            check_score_map(maps[i], names[i] if names is not None else f"score map {i} of the batch")
        self.fg_hist += torch.as_tensor(counts[0], device=self.device)
        self.bg_hist += torch.as_tensor(counts[1], device=self.device)
        self.num_images += len(maps)

    def curves(self) -> dict[str, np.ndarray]:
        """Precision, recall and IoU at each bin edge from the top, as the reference arranges them."""
        fg = self.fg_hist.cpu().numpy().astype(np.float64)
        bg = self.bg_hist.cpu().numpy().astype(np.float64)
        tp = fg[::-1].cumsum()
        fp = bg[::-1].cumsum()
        fn = fg.sum() - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
            iou = tp / (tp + fp + fn)
        # edge of each entry: entry j counts the scores >= edges[-2 - j]
        return {"precision": precision, "recall": recall, "iou": iou, "tp": tp, "fp": fp,
                "threshold": self.edges[-2::-1]}

    def compute(self) -> dict[str, float | int]:
        """PxAP (%, the reference's right-Riemann sum) and the peak mask IoU (%) with its threshold."""
        curves = self.curves()
        tp, fp = curves["tp"], curves["fp"]
        if self.fg_hist.sum() == 0:
            raise WSOLError("no GT foreground pixel in the evaluated masks: PxAP is undefined")
        if not (tp + fp > 0).any():
            raise WSOLError("no scored pixel in the evaluated maps: PxAP is undefined")
        counted = (tp + fp != 0)[1:]
        pxap = float((curves["precision"][1:] * np.diff(curves["recall"]))[counted].sum() * 100)
        iou = np.nan_to_num(curves["iou"], nan=0.0)
        best = int(iou.argmax())
        return {"PxAP": pxap, "peak_IoU": float(iou[best] * 100),
                "peak_IoU_threshold": float(curves["threshold"][best]),
                "num_images": int(self.num_images), "cam_curve_interval": self.cam_curve_interval}
