"""Evaluate a folder of score maps saved under the reference naming: ``<root>/<image_id>.npy``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from wsol.data.metadata import EVAL_SIZE, Metadata
from wsol.errors import WSOLError
from wsol.metrics.box_accuracy import BoxAccuracy
from wsol.metrics.pixel_ap import PixelAP


def load_score_map(path: Path, size: int = EVAL_SIZE) -> np.ndarray:
    """One saved score map, checked to be a 2-D float ``size`` x ``size`` array (range is checked later)."""
    try:
        score_map = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise WSOLError(f"{path}: score map not found") from None
    except (ValueError, OSError, EOFError) as error:
        raise WSOLError(f"{path}: not a readable .npy score map ({error})") from None
    if score_map.shape != (size, size):
        raise WSOLError(f"{path}: score map has shape {score_map.shape}, expected ({size}, {size})")
    return score_map


def evaluate_scoremaps(metadata: Metadata, scoremap_root: str | Path, mask_root: str | Path | None = None,
                       cam_curve_interval: float = 0.001, iou_thresholds=(30, 50, 70), batch_size: int = 64,
                       on_batch: Callable[[int], None] | None = None) -> tuple[dict, BoxAccuracy | None,
                                                                               PixelAP | None]:
    """Box metrics when the split has boxes, PxAP when it has masks and ``mask_root`` is given.

    Returns ``(result, box_metric, mask_metric)``; ``on_batch(n)`` is called after each batch (progress).
    """
    root = Path(scoremap_root)
    if not root.is_dir():
        raise WSOLError(f"{root}: score map folder not found")
    boxes = BoxAccuracy(cam_curve_interval, iou_thresholds) if metadata.has_boxes else None
    masks = PixelAP(cam_curve_interval) if metadata.has_masks and mask_root is not None else None
    if boxes is None and masks is None:
        hint = " (pass --mask-root for its masks)" if metadata.has_masks else ""
        raise WSOLError(f"{metadata.split_dir}: no localization.txt with boxes or masks to evaluate against{hint}")
    if masks is not None:
        metadata.check_mask_files(mask_root)
    gt_boxes = metadata.resized_boxes() if boxes is not None else {}
    ids = metadata.image_ids
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        paths = [root / f"{image_id}.npy" for image_id in batch]
        maps = np.stack([load_score_map(p) for p in paths])
        names = [str(p) for p in paths]
        if boxes is not None:
            boxes.update(maps, [gt_boxes[i] for i in batch], names=names)
        if masks is not None:
            fg, ignore = zip(*(metadata.load_mask(i, mask_root) for i in batch))
            masks.update(maps, np.stack(fg), np.stack(ignore), names=names)
        if on_batch is not None:
            on_batch(len(batch))
    result: dict = {}
    if boxes is not None:
        result.update(boxes.compute())
    if masks is not None:
        mask_result = masks.compute()
        result.update(mask_result)
    return result, boxes, masks
