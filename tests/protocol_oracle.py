"""A straightforward, per-threshold implementation of the WSOL evaluation protocol: the tests' oracle.

It follows the reference (clovaai/wsolevaluation ``evaluation.py``) step by step, one OpenCV threshold and
findContours call per threshold, with no shortcut, so that the fast implementation in ``wsol.metrics`` can
be checked against it for exact equality.
"""

from __future__ import annotations

import cv2
import numpy as np


def oracle_boxes(score_map: np.ndarray, thresholds, multi_contour: bool) -> list[np.ndarray]:
    height, width = score_map.shape
    image = np.expand_dims((score_map * 255).astype(np.uint8), 2)
    out = []
    for tau in thresholds:
        _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            out.append(np.array([[0, 0, 0, 0]]))
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        out.append(np.array(boxes))
    return out


def oracle_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ious = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0, min(p[2], q[2]) - max(p[0], q[0]) + 1)
            ih = max(0, min(p[3], q[3]) - max(p[1], q[1]) + 1)
            inter = iw * ih
            union = (p[2] - p[0] + 1) * (p[3] - p[1] + 1) + (q[2] - q[0] + 1) * (q[3] - q[1] + 1) - inter
            ious[i, j] = inter / union if union > 0 else 0.0
    return ious


def oracle_box_accuracy(score_maps, gt_boxes, interval: float, iou_thresholds=(30, 50, 70),
                        multi_contour: bool = False) -> dict[int, np.ndarray]:
    """BoxAcc (%) curve per IoU criterion, as the reference's BoxEvaluator computes it."""
    thresholds = list(np.arange(0, 1, interval))
    correct = {iou: np.zeros(len(thresholds)) for iou in iou_thresholds}
    for score_map, gt in zip(score_maps, gt_boxes):
        per_threshold = oracle_boxes(score_map, thresholds, multi_contour)
        best = np.array([oracle_iou(boxes, np.asarray(gt)).max() for boxes in per_threshold])
        for iou in iou_thresholds:
            correct[iou][np.where(best >= iou / 100)[0]] += 1
    return {iou: c * 100.0 / float(len(score_maps)) for iou, c in correct.items()}


def oracle_pxap(score_maps, gt_masks, ignore_masks, interval: float) -> float:
    thresholds = np.arange(0, 1, interval)
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    fg_hist = np.zeros(len(edges) - 1)
    bg_hist = np.zeros(len(edges) - 1)
    for score_map, fg, ignore in zip(score_maps, gt_masks, ignore_masks):
        coded = fg.astype(np.uint8) + 255 * (ignore & ~fg).astype(np.uint8)
        fg_hist += np.histogram(score_map[coded == 1], bins=edges)[0]
        bg_hist += np.histogram(score_map[coded == 0], bins=edges)[0]
    tp = fg_hist[::-1].cumsum()
    fn = fg_hist.sum() - tp
    fp = bg_hist[::-1].cumsum()
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)
