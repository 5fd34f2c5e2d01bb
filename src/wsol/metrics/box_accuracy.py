"""MaxBoxAcc, MaxBoxAccV2 and Top-1/Top-5 Loc: streaming, mergeable, exact to the WSOL reference.

The reference evaluates each score map at every threshold of ``arange(0, 1, interval)`` with one OpenCV
threshold + findContours call per threshold (1000 by default). We get the same boxes' verdicts for all
thresholds from one union-find sweep over the pixels (:mod:`wsol.metrics._kernels`), and call OpenCV only
for the few thresholds where it matters which contour is the largest (components that disagree).

Per image and threshold we keep whether a box reaches each IoU criterion, for the largest contour
(MaxBoxAcc) and for all contours (MaxBoxAccV2); the states are counters that add up across batches,
processes and DDP ranks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchmetrics import Metric

from wsol.errors import WSOLError
from wsol.localize.boxes import EMPTY_BOX, box_iou, to_uint8, trace_boxes
from wsol.localize.maps import check_score_map
from wsol.metrics._kernels import sweep_levels

FIXED_THRESHOLD = 0.2  # the classic CAM rule, for users without an annotated split to choose tau on
LARGEST_IOU = 0.5  # MaxBoxAcc: the largest contour's box at IoU >= 50 %
MIN_CAM_CURVE_INTERVAL = 1e-4  # 10,000 thresholds; finer grids only cost memory and time


def threshold_list(cam_curve_interval: float) -> np.ndarray:
    """The reference's thresholds: ``numpy.arange(0, 1, cam_curve_interval)``."""
    if not MIN_CAM_CURVE_INTERVAL <= cam_curve_interval < 1:
        raise WSOLError(f"cam_curve_interval must lie in [{MIN_CAM_CURVE_INTERVAL:g}, 1) (the protocol uses 0.001 "
                        f"or 0.01), got {cam_curve_interval}")
    return np.arange(0, 1, cam_curve_interval)


def grid_index(thresholds: np.ndarray, value: float) -> int | None:
    """Index of ``value`` on the threshold grid, or None when no grid threshold equals it (up to rounding)."""
    index = int(np.abs(thresholds - value).argmin())
    return index if abs(thresholds[index] - value) < 1e-9 else None


def threshold_hits(score_map: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
                   criteria: np.ndarray, largest_criterion: float = LARGEST_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Whether the best IoU with the GT boxes reaches the criteria, at every threshold.

    Returns a bool array (T,): the largest contour's box reaches ``largest_criterion`` (MaxBoxAcc), and a
    bool array (C, T): some contour's box reaches ``criteria[c]`` (MaxBoxAccV2). Criteria are fractions
    (the reference's ``delta / 100``).
    """
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    criteria = np.append(np.asarray(criteria, dtype=np.float64), largest_criterion)
    u8 = to_uint8(score_map)
    peak = int(u8.max())
    if peak == 0:  # nothing above any threshold: the single box (0, 0, 0, 0) everywhere
        hit = np.repeat((box_iou(EMPTY_BOX, gt).max() >= criteria)[:, None], len(thresholds), axis=1)
        return hit[-1], hit[:-1]
    cuts = (thresholds * peak).astype(np.int64)  # == int(tau * np.max(u8)) for tau >= 0
    needed = np.zeros(256, dtype=bool)
    needed[cuts] = True
    num_components, components_passing, any_passing = sweep_levels(u8, needed, gt, criteria)
    passing = components_passing[:, -1]
    largest = passing == num_components
    row_max, col_max = u8.max(1), u8.max(0)
    for cut in np.flatnonzero(needed & (passing > 0) & (passing < num_components)):
        # the components disagree, so which one is the largest decides: trace it as OpenCV does
        rows = np.flatnonzero(row_max > cut)
        cols = np.flatnonzero(col_max > cut)
        crop = u8[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        boxes, index = trace_boxes((crop > cut).view(np.uint8), (cols[0], rows[0]), (u8.shape[1], u8.shape[0]))
        largest[cut] = box_iou(boxes[index:index + 1], gt).max() >= largest_criterion
    return largest[cuts], any_passing[cuts, :-1].T


class BoxAccuracy(Metric):
    """GT-known box accuracy over thresholds: MaxBoxAcc, MaxBoxAccV2, and Top-1/Top-5 Loc.

    ``update(score_maps, gt_boxes, logits=None, labels=None)`` takes a batch of score maps (B, H, W) in
    [0, 1] (tensor or array, normally 224 x 224, of each image's GT class), the GT boxes of each image in
    the same pixel frame (a list of (n_i, 4) arrays), and optionally the classifier's logits (B, K) and the
    GT labels (B,) for Top-1/Top-5 Loc and classification accuracy.

    States are counts per threshold: for the largest contour at IoU 50 (MaxBoxAcc) and for all contours
    per IoU criterion (MaxBoxAccV2), summed across processes.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, cam_curve_interval: float = 0.001, iou_thresholds: Sequence[int] = (30, 50, 70),
                 num_threads: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cam_curve_interval = cam_curve_interval
        # the sweep (numba) and OpenCV release the GIL: images of a batch are evaluated in threads.
        self.num_threads = num_threads or min(4, os.cpu_count() or 1)
        self.thresholds = threshold_list(cam_curve_interval)
        self.iou_thresholds = tuple(int(i) for i in iou_thresholds)
        if not self.iou_thresholds or any(not 0 < i <= 100 for i in self.iou_thresholds):
            raise WSOLError(f"IoU thresholds must be percentages in (0, 100], got {list(iou_thresholds)}")
        num_t = len(self.thresholds)
        for name in ("correct_largest", "top1_largest", "top5_largest"):
            self.add_state(name, default=torch.zeros(num_t, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("correct_all", "top1_all", "top5_all"):
            self.add_state(name, default=torch.zeros((len(self.iou_thresholds), num_t), dtype=torch.long),
                           dist_reduce_fx="sum")
        for name in ("num_images", "num_top1", "num_top5", "num_with_logits"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, score_maps: torch.Tensor | np.ndarray, gt_boxes: Sequence[np.ndarray],
               logits: torch.Tensor | None = None, labels: torch.Tensor | Sequence[int] | None = None,
               names: Sequence[str] | None = None) -> None:
        maps = score_maps.detach().cpu().numpy() if isinstance(score_maps, torch.Tensor) else np.asarray(score_maps)
        if maps.ndim != 3:
            raise WSOLError(f"score maps must be a batch (B, H, W), got shape {tuple(maps.shape)}")
        if len(gt_boxes) != len(maps):
            raise WSOLError(f"got {len(maps)} score maps but {len(gt_boxes)} sets of GT boxes")
        gt_boxes = [np.asarray(boxes) for boxes in gt_boxes]
        for i, (score_map, boxes) in enumerate(zip(maps, gt_boxes)):
            name = names[i] if names is not None else f"score map {i} of the batch"
            check_score_map(score_map, name)
            if boxes.size == 0:
                raise WSOLError(f"{name}: no GT box")
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise WSOLError(f"{name}: GT boxes must be an (n, 4) array of x0, y0, x1, y1, got shape {boxes.shape}")
        criteria = np.asarray(self.iou_thresholds) / 100  # as the reference's delta / 100
        largest = np.zeros((len(maps), len(self.thresholds)), dtype=bool)
        every = np.zeros((len(maps), len(self.iou_thresholds), len(self.thresholds)), dtype=bool)

        def evaluate(i: int) -> None:
            largest[i], every[i] = threshold_hits(maps[i], gt_boxes[i], self.thresholds, criteria)

        if self.num_threads > 1 and len(maps) > 1:
            with ThreadPoolExecutor(self.num_threads) as pool:
                list(pool.map(evaluate, range(len(maps))))
        else:
            for i in range(len(maps)):
                evaluate(i)
        self.correct_largest += torch.as_tensor(largest.sum(0), device=self.device)
        self.correct_all += torch.as_tensor(every.sum(0), device=self.device)
        self.num_images += len(maps)
        if logits is None:
            return
        if labels is None:
            raise WSOLError("Top-1/Top-5 Loc need the GT labels along with the logits")
        labels = torch.as_tensor(labels, device=logits.device).view(-1, 1)
        top = logits.detach().topk(min(5, logits.shape[1]), dim=1).indices
        top1 = (top[:, :1] == labels).any(1).cpu().numpy()
        top5 = (top == labels).any(1).cpu().numpy()
        self.top1_largest += torch.as_tensor(largest[top1].sum(0), device=self.device)
        self.top1_all += torch.as_tensor(every[top1].sum(0), device=self.device)
        self.top5_largest += torch.as_tensor(largest[top5].sum(0), device=self.device)
        self.top5_all += torch.as_tensor(every[top5].sum(0), device=self.device)
        self.num_top1 += int(top1.sum())
        self.num_top5 += int(top5.sum())
        self.num_with_logits += len(top1)

    def curves(self) -> dict[str, np.ndarray]:
        """BoxAcc (%) per threshold: ``largest`` (T,) at IoU 50, ``all`` (I, T) per IoU criterion."""
        n = max(int(self.num_images), 1)
        return {"largest": self.correct_largest.cpu().numpy() * 100.0 / n,
                "all": self.correct_all.cpu().numpy() * 100.0 / n}

    def compute(self) -> dict:
        """MaxBoxAcc (largest contour, IoU 50) with its threshold and, when tau = 0.2 is on the threshold
        grid, the fixed-threshold accuracy ``BoxAcc@0.2``; MaxBoxAccV2 (all contours, mean over the IoU
        criteria) with each criterion's best accuracy and threshold; Top-1/Top-5 Loc and classification
        accuracy when logits were given."""
        n = int(self.num_images)
        if n == 0:
            raise WSOLError("no score maps were evaluated")
        curves = self.curves()
        fixed = grid_index(self.thresholds, FIXED_THRESHOLD)
        per_iou = {iou: {"max_box_acc": float(curve.max()), "best_threshold": float(self.thresholds[curve.argmax()])}
                   for iou, curve in zip(self.iou_thresholds, curves["all"])}
        result: dict = {
            "num_images": n, "cam_curve_interval": self.cam_curve_interval,
            "iou_thresholds": list(self.iou_thresholds),
            "MaxBoxAcc": float(curves["largest"].max()),
            "MaxBoxAcc_threshold": float(self.thresholds[curves["largest"].argmax()]),
        }
        if fixed is not None:
            result["BoxAcc@0.2"] = float(curves["largest"][fixed])
        result["MaxBoxAccV2"] = float(np.mean([v["max_box_acc"] for v in per_iou.values()]))
        result["per_iou"] = per_iou
        m = int(self.num_with_logits)
        if m:
            if m != n:
                raise WSOLError(f"logits were given for {m} of {n} images: give them for all or none")
            result["top1_cls"] = int(self.num_top1) * 100.0 / n
            result["top5_cls"] = int(self.num_top5) * 100.0 / n
            result["top1_loc"] = int(self.top1_largest.max()) * 100.0 / n
            result["top5_loc"] = int(self.top5_largest.max()) * 100.0 / n
            if fixed is not None:
                result["top1_loc_fixed"] = int(self.top1_largest[fixed]) * 100.0 / n
            result["top1_loc_v2"] = float(np.mean([int(v.max()) * 100.0 / n for v in self.top1_all]))
            result["top5_loc_v2"] = float(np.mean([int(v.max()) * 100.0 / n for v in self.top5_all]))
        return result
