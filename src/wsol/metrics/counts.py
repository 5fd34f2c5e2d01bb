"""The WSOL metrics' arithmetic without torch: per-threshold hits, summed counters, and the final numbers.

:class:`~wsol.metrics.BoxAccuracy` and :class:`~wsol.metrics.PixelAP` (torchmetrics ``Metric`` s, used in
training and DDP) and the torch-free :class:`BoxCounts` and :class:`PixelCounts` (``wsol evaluate``, which
then starts without importing torch, and merged shards) run the same functions below on the same kernels,
so their numbers are identical. A state is a dict of integer arrays that add up across batches,
processes, shards and DDP ranks (:data:`BOX_STATES`, :data:`PIXEL_STATES`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from wsol.errors import WSOLError
from wsol.maps.boxes import EMPTY_BOX, box_iou, to_uint8, trace_boxes
from wsol.maps.normalize import check_score_map
from wsol.metrics._kernels import pixel_histograms, sweep_levels

FIXED_THRESHOLD = 0.2  # the classic CAM rule, for users without an annotated split to choose tau on
LARGEST_IOU = 0.5  # MaxBoxAcc: the largest contour's box at IoU >= 50 %
MIN_CAM_CURVE_INTERVAL = 1e-4  # 10,000 thresholds; finer grids only cost memory and time
BOX_STATES = ("correct_largest", "correct_all", "top1_largest", "top1_all", "top5_largest", "top5_all",
              "num_images", "num_top1", "num_top5", "num_with_logits")
PIXEL_STATES = ("fg_hist", "bg_hist", "num_images")


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


def check_iou_thresholds(iou_thresholds: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(i) for i in iou_thresholds)
    if not values or any(not 0 < i <= 100 for i in values):
        raise WSOLError(f"IoU thresholds must be percentages in (0, 100], got {list(iou_thresholds)}")
    return values


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
    disagree = np.flatnonzero(needed & (passing > 0) & (passing < num_components))
    if len(disagree):
        row_max, col_max = u8.max(1), u8.max(0)
    for cut in disagree:
        # the components disagree, so which one is the largest decides: trace it as OpenCV does
        rows = np.flatnonzero(row_max > cut)
        cols = np.flatnonzero(col_max > cut)
        crop = u8[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        boxes, index = trace_boxes((crop > cut).view(np.uint8), (cols[0], rows[0]), (u8.shape[1], u8.shape[0]))
        largest[cut] = box_iou(boxes[index:index + 1], gt).max() >= largest_criterion
    return largest[cuts], any_passing[cuts, :-1].T


def box_hits(maps: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray,
             iou_thresholds: Sequence[int], num_threads: int = 1,
             names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Checked :func:`threshold_hits` of a batch (B, H, W): ``largest`` (B, T) and ``every`` (B, I, T), the
    images evaluated in ``num_threads`` threads (the sweep and OpenCV release the GIL)."""
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
    criteria = np.asarray(iou_thresholds) / 100  # as the reference's delta / 100
    largest = np.zeros((len(maps), len(thresholds)), dtype=bool)
    every = np.zeros((len(maps), len(iou_thresholds), len(thresholds)), dtype=bool)

    def evaluate(i: int) -> None:
        largest[i], every[i] = threshold_hits(maps[i], gt_boxes[i], thresholds, criteria)

    if num_threads > 1 and len(maps) > 1:
        with ThreadPoolExecutor(min(num_threads, len(maps))) as pool:
            list(pool.map(evaluate, range(len(maps))))
    else:
        for i in range(len(maps)):
            evaluate(i)
    return largest, every


def default_threads() -> int:
    return min(4, os.cpu_count() or 1)


def empty_box_state(num_thresholds: int, num_ious: int) -> dict[str, np.ndarray]:
    state = {name: np.zeros(num_thresholds, np.int64) for name in ("correct_largest", "top1_largest", "top5_largest")}
    state.update({name: np.zeros((num_ious, num_thresholds), np.int64) for name in ("correct_all", "top1_all",
                                                                                    "top5_all")})
    state.update({name: np.zeros((), np.int64) for name in ("num_images", "num_top1", "num_top5", "num_with_logits")})
    return state


def topk_hits(logits: object, labels: object, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-``k`` correctness (bool per image) of logits (B, K) against GT labels (B,), with torch's
    ``topk`` (the ranks the reference's Top-1/Top-5 Loc use; ties as torch breaks them). Tensors or arrays;
    torch is imported here, only when logits are given."""
    import torch

    scores = logits.detach() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if labels is None:
        raise WSOLError("Top-1/Top-5 Loc need the GT labels along with the logits")
    truth = torch.as_tensor(labels, device=scores.device).reshape(-1, 1)
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top[:, :1] == truth).any(1).cpu().numpy(), (top == truth).any(1).cpu().numpy()


def box_increments(largest: np.ndarray, every: np.ndarray, top1: np.ndarray | None = None,
                   top5: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What a batch adds to a box state (``top1`` / ``top5``: bool per image, when logits were given)."""
    out = {"correct_largest": largest.sum(0), "correct_all": every.sum(0), "num_images": np.int64(len(largest))}
    if top1 is not None and top5 is not None:
        out.update(top1_largest=largest[top1].sum(0), top1_all=every[top1].sum(0),
                   top5_largest=largest[top5].sum(0), top5_all=every[top5].sum(0),
                   num_top1=np.int64(top1.sum()), num_top5=np.int64(top5.sum()), num_with_logits=np.int64(len(top1)))
    return out


def box_curves(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BoxAcc (%) per threshold: ``largest`` (T,) at IoU 50, ``all`` (I, T) per IoU criterion."""
    n = max(int(state["num_images"]), 1)
    return {"largest": np.asarray(state["correct_largest"]) * 100.0 / n,
            "all": np.asarray(state["correct_all"]) * 100.0 / n}


def box_result(state: Mapping[str, np.ndarray], thresholds: np.ndarray, iou_thresholds: Sequence[int],
               cam_curve_interval: float) -> dict:
    """MaxBoxAcc (largest contour, IoU 50) with its threshold and, when tau = 0.2 is on the threshold grid,
    the fixed-threshold accuracy ``BoxAcc@0.2``; MaxBoxAccV2 (all contours, mean over the IoU criteria)
    with each criterion's best accuracy and threshold; Top-1/Top-5 Loc and classification accuracy when
    logits were given."""
    n = int(state["num_images"])
    if n == 0:
        raise WSOLError("no score maps were evaluated")
    curves = box_curves(state)
    fixed = grid_index(thresholds, FIXED_THRESHOLD)
    per_iou = {iou: {"max_box_acc": float(curve.max()), "best_threshold": float(thresholds[curve.argmax()])}
               for iou, curve in zip(iou_thresholds, curves["all"])}
    result: dict = {
        "num_images": n, "cam_curve_interval": cam_curve_interval,
        "iou_thresholds": list(iou_thresholds),
        "MaxBoxAcc": float(curves["largest"].max()),
        "MaxBoxAcc_threshold": float(thresholds[curves["largest"].argmax()]),
    }
    if fixed is not None:
        result["BoxAcc@0.2"] = float(curves["largest"][fixed])
    result["MaxBoxAccV2"] = float(np.mean([v["max_box_acc"] for v in per_iou.values()]))
    result["per_iou"] = per_iou
    m = int(state["num_with_logits"])
    if m:
        if m != n:
            raise WSOLError(f"logits were given for {m} of {n} images: give them for all or none")
        result["top1_cls"] = int(state["num_top1"]) * 100.0 / n
        result["top5_cls"] = int(state["num_top5"]) * 100.0 / n
        result["top1_loc"] = int(state["top1_largest"].max()) * 100.0 / n
        result["top5_loc"] = int(state["top5_largest"].max()) * 100.0 / n
        if fixed is not None:
            result["top1_loc_fixed"] = int(state["top1_largest"][fixed]) * 100.0 / n
        result["top1_loc_v2"] = float(np.mean([int(v.max()) * 100.0 / n for v in state["top1_all"]]))
        result["top5_loc_v2"] = float(np.mean([int(v.max()) * 100.0 / n for v in state["top5_all"]]))
    return result


def pixel_edges(thresholds: np.ndarray) -> np.ndarray:
    return np.append(thresholds, [1.0, 2.0, 3.0])


def pixel_counts(maps: np.ndarray, gt_masks: np.ndarray, ignore_masks: np.ndarray | None, edges: np.ndarray,
                 cam_curve_interval: float, names: Sequence[str] | None = None) -> np.ndarray:
    """Checked foreground and background histograms (2, bins) of a batch of maps (B, H, W)."""
    maps, masks = np.asarray(maps), np.asarray(gt_masks)
    ignore = np.zeros((0, 0, 0), bool) if ignore_masks is None else np.asarray(ignore_masks)
    if maps.ndim != 3 or masks.shape != maps.shape or (ignore.size and ignore.shape != maps.shape):
        raise WSOLError(f"score maps {maps.shape}, GT masks {masks.shape} and ignore masks {ignore.shape} "
                        "must all be (B, H, W)")
    if maps.dtype.kind != "f":
        raise WSOLError(f"score maps must be float, got {maps.dtype}")
    if maps.dtype == np.float16:  # a half-precision model's maps: the histogram kernel takes 32/64 bits
        maps = maps.astype(np.float32)
    counts, problems = pixel_histograms(maps, masks.astype(bool, copy=False), ignore.astype(bool, copy=False),
                                        edges, cam_curve_interval)
    for i in np.flatnonzero(problems):
        check_score_map(maps[i], names[i] if names is not None else f"score map {i} of the batch")
    return counts


def empty_pixel_state(num_bins: int) -> dict[str, np.ndarray]:
    return {"fg_hist": np.zeros(num_bins, np.int64), "bg_hist": np.zeros(num_bins, np.int64),
            "num_images": np.zeros((), np.int64)}


def pixel_curves(state: Mapping[str, np.ndarray], edges: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and IoU at each bin edge from the top, as the reference arranges them."""
    fg = np.asarray(state["fg_hist"]).astype(np.float64)
    bg = np.asarray(state["bg_hist"]).astype(np.float64)
    tp = fg[::-1].cumsum()
    fp = bg[::-1].cumsum()
    fn = fg.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        iou = tp / (tp + fp + fn)
    # edge of each entry: entry j counts the scores >= edges[-2 - j]
    return {"precision": precision, "recall": recall, "iou": iou, "tp": tp, "fp": fp, "threshold": edges[-2::-1]}


def pixel_result(state: Mapping[str, np.ndarray], edges: np.ndarray, cam_curve_interval: float) -> dict:
    """PxAP (%, the reference's right-Riemann sum) and the peak mask IoU (%) with its threshold."""
    curves = pixel_curves(state, edges)
    tp, fp = curves["tp"], curves["fp"]
    if np.asarray(state["fg_hist"]).sum() == 0:
        raise WSOLError("no GT foreground pixel in the evaluated masks: PxAP is undefined")
    if not (tp + fp > 0).any():
        raise WSOLError("no scored pixel in the evaluated maps: PxAP is undefined")
    counted = (tp + fp != 0)[1:]
    pxap = float((curves["precision"][1:] * np.diff(curves["recall"]))[counted].sum() * 100)
    iou = np.nan_to_num(curves["iou"], nan=0.0)
    best = int(iou.argmax())
    return {"PxAP": pxap, "peak_IoU": float(iou[best] * 100), "peak_IoU_threshold": float(curves["threshold"][best]),
            "num_images": int(state["num_images"]), "cam_curve_interval": cam_curve_interval}


class _SummedCounters:
    """``state``: integer arrays that :meth:`add` sums (another batch's, a shard's)."""

    state: dict[str, np.ndarray]

    def add(self, state: Mapping[str, np.ndarray]) -> None:
        for name, value in state.items():
            self.state[name] = self.state[name] + np.asarray(value, np.int64)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The summed counters (as the torchmetrics twins' ``state_arrays``)."""
        return dict(self.state)


class BoxCounts(_SummedCounters):
    """:class:`~wsol.metrics.BoxAccuracy` without torch (unless logits are given): ``update(maps, gt_boxes,
    logits=None, labels=None)``, ``add``
    another state (a shard's), ``curves()``, ``compute()``; ``state`` holds the summed counters."""

    def __init__(self, cam_curve_interval: float = 0.001, iou_thresholds: Sequence[int] = (30, 50, 70),
                 num_threads: int | None = None) -> None:
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = threshold_list(cam_curve_interval)
        self.iou_thresholds = check_iou_thresholds(iou_thresholds)
        self.num_threads = num_threads or default_threads()
        self.state = empty_box_state(len(self.thresholds), len(self.iou_thresholds))

    def update(self, score_maps: np.ndarray, gt_boxes: Sequence[np.ndarray], logits: object = None,
               labels: object = None, names: Sequence[str] | None = None) -> None:
        largest, every = box_hits(np.asarray(score_maps), gt_boxes, self.thresholds, self.iou_thresholds,
                                  self.num_threads, names)
        hits = topk_hits(logits, labels) if logits is not None else (None, None)
        self.add(box_increments(largest, every, *hits))

    def curves(self) -> dict[str, np.ndarray]:
        return box_curves(self.state)

    def compute(self) -> dict:
        return box_result(self.state, self.thresholds, self.iou_thresholds, self.cam_curve_interval)


class PixelCounts(_SummedCounters):
    """:class:`~wsol.metrics.PixelAP` without torch: ``update(maps, gt_masks, ignore_masks)``, ``add``,
    ``curves()``, ``compute()``."""

    def __init__(self, cam_curve_interval: float = 0.001) -> None:
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = threshold_list(cam_curve_interval)
        self.edges = pixel_edges(self.thresholds)
        self.state = empty_pixel_state(len(self.edges) - 1)

    def update(self, score_maps: np.ndarray, gt_masks: np.ndarray, ignore_masks: np.ndarray | None = None,
               names: Sequence[str] | None = None) -> None:
        counts = pixel_counts(score_maps, gt_masks, ignore_masks, self.edges, self.cam_curve_interval, names)
        self.add({"fg_hist": counts[0], "bg_hist": counts[1], "num_images": np.int64(len(score_maps))})

    def curves(self) -> dict[str, np.ndarray]:
        return pixel_curves(self.state, self.edges)

    def compute(self) -> dict:
        return pixel_result(self.state, self.edges, self.cam_curve_interval)
