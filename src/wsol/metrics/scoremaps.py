"""Evaluate a folder of score maps saved under the reference naming: ``<root>/<image_id>.npy``.

Torch-free (:class:`~wsol.metrics.counts.BoxCounts`, :class:`~wsol.metrics.counts.PixelCounts`): ``wsol
evaluate`` starts in a fraction of the time torch takes to import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from wsol.data.metadata import EVAL_SIZE, Metadata
from wsol.errors import WSOLError
from wsol.metrics.counts import BoxCounts, PixelCounts
from wsol.metrics.split import SplitEvaluator


def load_score_map(path: Path, size: int = EVAL_SIZE) -> np.ndarray:
    """One saved score map as a float ``size`` x ``size`` array (its range is checked later).

    The header's dtype and shape are checked before any data is read, so each file is judged on its own (not
    after a batch's ``np.stack`` has promoted it) and a header claiming a huge shape costs nothing. float32
    and float64 maps are kept as saved; int, bool and float16 maps become float32, longer floats float64.
    """
    try:
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":
                raise WSOLError(f"{path}: a zip archive (an .npz?), not a .npy score map")
            file.seek(0)
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:  # 3.0 is only written for structured dtypes with non-Latin-1 field names
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            if dtype.kind not in "biuf":
                raise WSOLError(f"{path}: score map has dtype {dtype}, expected real numbers (float, int or bool)")
            if shape != (size, size):
                raise WSOLError(f"{path}: score map has shape {shape}, expected ({size}, {size})")
            file.seek(0)
            score_map = np.lib.format.read_array(file, allow_pickle=False)
    except FileNotFoundError:
        raise WSOLError(f"{path}: score map not found") from None
    except (ValueError, OSError, EOFError) as error:
        raise WSOLError(f"{path}: not a readable .npy score map ({error})") from None
    if score_map.dtype in (np.float32, np.float64):
        return score_map
    return score_map.astype(np.float64 if score_map.dtype.kind == "f" and score_map.dtype.itemsize > 8 else np.float32)


def evaluate_scoremaps(metadata: Metadata, scoremap_root: str | Path, mask_root: str | Path | None = None,
                       cam_curve_interval: float = 0.001, iou_thresholds=(30, 50, 70), batch_size: int = 64,
                       on_batch: Callable[[int], None] | None = None) -> tuple[dict, BoxCounts | None,
                                                                               PixelCounts | None]:
    """Box metrics when the split has boxes, PxAP when it has masks and ``mask_root`` is given.

    Returns ``(result, box_metric, mask_metric)``; ``on_batch(n)`` is called after each batch (progress).
    """
    root = Path(scoremap_root)
    if not root.is_dir():
        raise WSOLError(f"{root}: score map folder not found")
    evaluator = SplitEvaluator(metadata, mask_root, cam_curve_interval=cam_curve_interval,
                               iou_thresholds=iou_thresholds)
    if not evaluator.metrics:
        hint = " (pass --mask-root for its masks)" if metadata.has_masks else ""
        raise WSOLError(f"{metadata.split_dir}: no localization.txt with boxes or masks to evaluate against{hint}")
    if evaluator.masks is not None:
        metadata.check_mask_files(mask_root)
    ids = metadata.image_ids
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        paths = [root / f"{image_id}.npy" for image_id in batch]
        evaluator.update(batch, np.stack([load_score_map(p) for p in paths]), names=[str(p) for p in paths])
        if on_batch is not None:
            on_batch(len(batch))
    result: dict = {}
    for kind_result in evaluator.compute().values():
        result.update(kind_result)
    return result, evaluator.boxes, evaluator.masks  # type: ignore[return-value]
