"""MaxBoxAcc, MaxBoxAccV2 and Top-1/Top-5 Loc: streaming, mergeable, exact to the WSOL reference.

The reference evaluates each score map at every threshold of ``arange(0, 1, interval)`` with one OpenCV
threshold + findContours call per threshold. We compute the same boxes with three exact shortcuts:

- thresholds that give the same uint8 cut, or cuts between which no pixel value lies, give the same
  foreground: contours are traced once per distinct foreground (at most 256 per map, not 1000);
- every box lies inside the foreground's bounding box (grown by the reference's one-pixel quirk), so its
  IoU with a GT box ``g`` is at most ``|bbox & g| / |g|``: a foreground whose bound is below the smallest
  IoU criterion cannot count as correct and is not traced;
- contours are traced on the crop around the foreground, not the whole map.

Per image and threshold we keep whether the best IoU reaches each criterion, for the largest contour
(MaxBoxAcc) and for all contours (MaxBoxAccV2); the states are counters that add up across batches,
processes and DDP ranks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torchmetrics import Metric

from wsol.errors import WSOLError
from wsol.localize.boxes import EMPTY_BOX, box_iou, to_uint8
from wsol.localize.maps import check_score_map

FIXED_THRESHOLD = 0.2  # the classic CAM rule, for users without an annotated split to choose tau on


def threshold_list(cam_curve_interval: float) -> np.ndarray:
    """The reference's thresholds: ``numpy.arange(0, 1, cam_curve_interval)``."""
    if not 0 < cam_curve_interval < 1:
        raise WSOLError(f"cam_curve_interval must lie in (0, 1), got {cam_curve_interval}")
    return np.arange(0, 1, cam_curve_interval)


def best_ious(score_map: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
              min_iou: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU with the GT boxes at every threshold, for the largest contour and for all contours.

    Returns two float arrays of shape (T,). Values are exact wherever they are ``>= min_iou``; below it a
    threshold may be reported with an upper bound of its IoU instead (it cannot reach ``min_iou`` anyway).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    u8 = to_uint8(score_map)
    height, width = u8.shape
    cuts = (thresholds * u8.max()).astype(np.int64)  # == int(tau * np.max(u8)) for tau >= 0
    present = np.flatnonzero(np.bincount(u8.ravel(), minlength=256))
    # Two cuts give the same foreground iff the same number of present values lie at or below them.
    keys = np.searchsorted(present, cuts, side="right")
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    level_cuts = cuts[first]
    num_levels = len(level_cuts)

    rows_on = u8.max(1)[None, :] > level_cuts[:, None]  # (L, H)
    cols_on = u8.max(0)[None, :] > level_cuts[:, None]  # (L, W)
    nonempty = rows_on.any(1)
    y0 = rows_on.argmax(1)
    y1 = height - 1 - rows_on[:, ::-1].argmax(1)
    x0 = cols_on.argmax(1)
    x1 = width - 1 - cols_on[:, ::-1].argmax(1)
    grown = np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], 1)
    gt_area = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1)
    iw = np.maximum(0, np.minimum(grown[:, None, 2], gt_boxes[None, :, 2])
                    - np.maximum(grown[:, None, 0], gt_boxes[None, :, 0]) + 1)
    ih = np.maximum(0, np.minimum(grown[:, None, 3], gt_boxes[None, :, 3])
                    - np.maximum(grown[:, None, 1], gt_boxes[None, :, 1]) + 1)
    inter = iw * ih
    bound = (inter / np.maximum(gt_area, 1)[None, :]).max(1) if len(gt_boxes) else np.zeros(num_levels)

    best_largest = np.minimum(bound, 1.0)
    best_all = best_largest.copy()
    traced = np.flatnonzero(nonempty & (bound >= min_iou - 1e-9))
    if len(traced):
        contours = []
        for level in traced:
            ya, yb, xa, xb = y0[level], y1[level], x0[level], x1[level]
            foreground = cv2.threshold(u8[ya:yb + 1, xa:xb + 1], int(level_cuts[level]), 1, cv2.THRESH_BINARY)[1]
            contours.append(cv2.findContours(foreground, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0])
        boxes, twice_area, owner = _contour_geometry(contours, x0[traced], y0[traced], (width, height))
        ious = box_iou(boxes, gt_boxes).max(1)
        best_all[traced] = 0.0
        np.maximum.at(best_all, traced[owner], ious)
        # the largest contour of each level: first of maximal area, as Python's max() in the reference
        order = np.lexsort((np.arange(len(owner)), -twice_area, owner))
        first_of_level = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        best_largest[traced[owner[first_of_level]]] = ious[first_of_level]
    empty = ~nonempty
    if empty.any():
        best_largest[empty] = best_all[empty] = box_iou(EMPTY_BOX, gt_boxes).max()
    return best_largest[inverse], best_all[inverse]


def _contour_geometry(contours_per_level: list, x_offsets: np.ndarray, y_offsets: np.ndarray,
                      frame: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, twice the ``cv2.contourArea`` and level row of every contour, vectorised over all of them.

    Equals ``boundingRect`` + the reference's box rule and ``contourArea`` (exact: integer shoelace);
    a level without contours gets the single box (0, 0, 0, 0) in the full frame.
    """
    width, height = frame
    counts = np.fromiter(map(len, contours_per_level), dtype=np.int64, count=len(contours_per_level))
    owner = np.repeat(np.arange(len(counts)), np.maximum(counts, 1))
    flat = [c for level in contours_per_level for c in level]
    boxes = np.zeros((len(owner), 4), dtype=np.int64)
    twice_area = np.zeros(len(owner), dtype=np.int64)
    has = np.repeat(counts > 0, np.maximum(counts, 1))
    if flat:
        points = np.concatenate(flat).reshape(-1, 2).astype(np.int64)
        lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        x, y = points[:, 0], points[:, 1]
        left, right = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)
        top, bottom = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
        dx, dy = x_offsets[owner[has]], y_offsets[owner[has]]
        # boundingRect gives w = right - left + 1; the reference's box ends at x + w, clipped to W - 1
        boxes[has] = np.stack([left + dx, top + dy, np.minimum(right + 1 + dx, width - 1),
                               np.minimum(bottom + 1 + dy, height - 1)], 1)
        previous = np.arange(len(points)) - 1
        previous[starts] = starts + lengths - 1
        cross = x[previous] * y - y[previous] * x
        twice_area[has] = np.abs(np.add.reduceat(cross, starts))
    return boxes, twice_area, owner


class BoxAccuracy(Metric):
    """GT-known box accuracy over thresholds: MaxBoxAcc, MaxBoxAccV2, and Top-1/Top-5 Loc.

    ``update(score_maps, gt_boxes, logits=None, labels=None)`` takes a batch of score maps (B, H, W) in
    [0, 1] (tensor or array, normally 224 x 224, of each image's GT class), the GT boxes of each image in
    the same pixel frame (a list of (n_i, 4) arrays), and optionally the classifier's logits (B, K) and the
    GT labels (B,) for Top-1/Top-5 Loc and classification accuracy.

    States are counts per (IoU criterion, threshold), summed across processes.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, cam_curve_interval: float = 0.001, iou_thresholds: Sequence[int] = (30, 50, 70),
                 num_threads: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cam_curve_interval = cam_curve_interval
        # OpenCV releases the GIL while tracing contours: images of a batch are evaluated in threads.
        self.num_threads = num_threads or min(4, os.cpu_count() or 1)
        self.thresholds = threshold_list(cam_curve_interval)
        self.iou_thresholds = tuple(int(i) for i in iou_thresholds)
        if not self.iou_thresholds or any(not 0 < i <= 100 for i in self.iou_thresholds):
            raise WSOLError(f"IoU thresholds must be percentages in (0, 100], got {list(iou_thresholds)}")
        shape = (len(self.iou_thresholds), len(self.thresholds))
        for name in ("correct_largest", "correct_all", "top1_largest", "top1_all", "top5_largest", "top5_all"):
            self.add_state(name, default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
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
        criteria = np.asarray(self.iou_thresholds)[:, None] / 100  # (I, 1), as the reference's delta / 100
        hits = np.zeros((2, len(maps)) + self.correct_all.shape, dtype=bool)  # (mode, B, I, T)
        for i, (score_map, boxes) in enumerate(zip(maps, gt_boxes)):
            name = names[i] if names is not None else f"score map {i} of the batch"
            check_score_map(score_map, name)
            if len(boxes) == 0:
                raise WSOLError(f"{name}: no GT box")

        def evaluate(i: int) -> None:
            largest, every = best_ious(maps[i], gt_boxes[i], self.thresholds, min_iou=criteria.min())
            hits[0, i] = largest[None, :] >= criteria
            hits[1, i] = every[None, :] >= criteria

        if self.num_threads > 1 and len(maps) > 1:
            with ThreadPoolExecutor(self.num_threads) as pool:
                list(pool.map(evaluate, range(len(maps))))
        else:
            for i in range(len(maps)):
                evaluate(i)
        self.correct_largest += torch.as_tensor(hits[0].sum(0), device=self.device)
        self.correct_all += torch.as_tensor(hits[1].sum(0), device=self.device)
        self.num_images += len(maps)
        if logits is None:
            return
        if labels is None:
            raise WSOLError("Top-1/Top-5 Loc need the GT labels along with the logits")
        labels = torch.as_tensor(labels, device=logits.device).view(-1, 1)
        top = logits.detach().topk(min(5, logits.shape[1]), dim=1).indices
        top1 = (top[:, :1] == labels).any(1).cpu().numpy()
        top5 = (top == labels).any(1).cpu().numpy()
        self.top1_largest += torch.as_tensor(hits[0][top1].sum(0), device=self.device)
        self.top1_all += torch.as_tensor(hits[1][top1].sum(0), device=self.device)
        self.top5_largest += torch.as_tensor(hits[0][top5].sum(0), device=self.device)
        self.top5_all += torch.as_tensor(hits[1][top5].sum(0), device=self.device)
        self.num_top1 += int(top1.sum())
        self.num_top5 += int(top5.sum())
        self.num_with_logits += len(top1)

    def curves(self) -> dict[str, np.ndarray]:
        """BoxAcc (%) per (IoU criterion, threshold) for the largest contour and for all contours."""
        n = max(int(self.num_images), 1)
        return {
            "largest": self.correct_largest.cpu().numpy() * 100.0 / n,
            "all": self.correct_all.cpu().numpy() * 100.0 / n,
        }

    def compute(self) -> dict[str, float | int | dict]:
        """MaxBoxAcc (IoU 50, largest contour), MaxBoxAccV2 (all contours, mean over the IoU criteria),
        the best threshold of each criterion, the fixed-threshold (tau = 0.2) accuracy, and Top-1/Top-5 Loc
        with classification accuracy when logits were given."""
        n = int(self.num_images)
        if n == 0:
            raise WSOLError("no score maps were evaluated")
        curves = self.curves()
        fixed = int(round(FIXED_THRESHOLD / self.cam_curve_interval))
        result: dict = {"num_images": n, "cam_curve_interval": self.cam_curve_interval,
                        "iou_thresholds": list(self.iou_thresholds)}
        per_iou = {}
        for row, iou in enumerate(self.iou_thresholds):
            per_iou[iou] = {
                "largest": {"max_box_acc": float(curves["largest"][row].max()),
                            "best_threshold": float(self.thresholds[curves["largest"][row].argmax()]),
                            "box_acc_at_0.2": float(curves["largest"][row][fixed])},
                "all": {"max_box_acc": float(curves["all"][row].max()),
                        "best_threshold": float(self.thresholds[curves["all"][row].argmax()])},
            }
        result["per_iou"] = per_iou
        if 50 in self.iou_thresholds:
            result["MaxBoxAcc"] = per_iou[50]["largest"]["max_box_acc"]
            result["MaxBoxAcc_threshold"] = per_iou[50]["largest"]["best_threshold"]
            result["BoxAcc@0.2"] = per_iou[50]["largest"]["box_acc_at_0.2"]
        result["MaxBoxAccV2"] = float(np.mean([per_iou[i]["all"]["max_box_acc"] for i in self.iou_thresholds]))
        m = int(self.num_with_logits)
        if m:
            if m != n:
                raise WSOLError(f"logits were given for {m} of {n} images: give them for all or none")
            result["top1_cls"] = int(self.num_top1) * 100.0 / n
            result["top5_cls"] = int(self.num_top5) * 100.0 / n
            if 50 in self.iou_thresholds:
                row = self.iou_thresholds.index(50)
                result["top1_loc"] = float(self.top1_largest[row].max()) * 100.0 / n
                result["top5_loc"] = float(self.top5_largest[row].max()) * 100.0 / n
                result["top1_loc_fixed"] = float(self.top1_largest[row, fixed]) * 100.0 / n
            result["top1_loc_v2"] = float(np.mean([float(v.max()) for v in self.top1_all])) * 100.0 / n
            result["top5_loc_v2"] = float(np.mean([float(v.max()) for v in self.top5_all])) * 100.0 / n
        return result
