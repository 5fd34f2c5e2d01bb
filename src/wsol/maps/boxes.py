"""Boxes from score maps, and box IoU, with the WSOL reference's exact conventions.

The reference (clovaai/wsolevaluation) turns a map in [0, 1] into boxes at a threshold ``tau`` as follows,
and so do we:

1. ``u8 = (map * 255).astype(uint8)`` (truncation);
2. foreground = ``u8 > int(tau * u8.max())`` (strict, relative to the uint8 maximum);
3. OpenCV contours with ``RETR_TREE`` (holes give inner contours, which also give boxes) and
   ``CHAIN_APPROX_SIMPLE``; each contour's ``boundingRect`` ``(x, y, w, h)`` becomes the box
   ``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` (one pixel wider than the contour: a reference quirk);
4. no contour gives the single box ``(0, 0, 0, 0)``;
5. "largest" keeps the contour of largest ``cv2.contourArea`` (the first one on ties), "all" keeps all.

Boxes are ``x0, y0, x1, y1`` with inclusive ends: area ``(x1 - x0 + 1) * (y1 - y0 + 1)``.
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np

from wsol.maps.normalize import map_percentiles

EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)
Components = Literal["largest", "all"]


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a`` (n, 4) with every box in ``boxes_b`` (m, 4), inclusive pixel ends.

    A degenerate pair (union <= 0) has IoU 0, as in the reference.
    """
    a = np.asarray(boxes_a, dtype=np.int64).reshape(-1, 1, 4)
    b = np.asarray(boxes_b, dtype=np.int64).reshape(1, -1, 4)
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def to_uint8(score_map: np.ndarray) -> np.ndarray:
    """``(map * 255).astype(uint8)``: the reference's truncating conversion."""
    return (np.asarray(score_map) * 255).astype(np.uint8)


def trace_boxes(foreground: np.ndarray, offset: tuple[int, int] = (0, 0),
                frame: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Boxes (n, 4) of all contours of a binary uint8 image, and the row of the largest contour.

    No contour gives the single box ``(0, 0, 0, 0)``. The largest is the first contour of maximal
    ``cv2.contourArea``, as Python's ``max`` picks it in the reference. ``offset = (x, y)`` places a crop
    back into its image and ``frame = (W, H)`` is that image's size (for the ``W - 1`` / ``H - 1``
    clipping); by default the foreground is the whole image.
    """
    height, width = foreground.shape if frame is None else (frame[1], frame[0])
    contours = cv2.findContours(foreground, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return EMPTY_BOX, 0
    largest = 0 if len(contours) == 1 else int(np.argmax([cv2.contourArea(c) for c in contours]))
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)
    x0 = rects[:, 0] + offset[0]
    y0 = rects[:, 1] + offset[1]
    x1 = np.minimum(x0 + rects[:, 2], width - 1)
    y1 = np.minimum(y0 + rects[:, 3], height - 1)
    return np.stack([x0, y0, x1, y1], axis=1), largest


def contour_boxes(foreground: np.ndarray, components: Components = "all") -> np.ndarray:
    """Boxes (n, 4) of the contours of a binary uint8 image: the largest one, or all of them."""
    boxes, largest = trace_boxes(foreground)
    return boxes[largest:largest + 1] if components == "largest" else boxes


def threshold_values(score_maps: np.ndarray, threshold: float, percentile: float = 100.0) -> np.ndarray:
    """The integer cut of each map of a batch (B, H, W): ``int(threshold * R)`` with R the ``percentile``-th
    value of its uint8 map (:func:`~wsol.maps.normalize.map_percentiles`).

    ``percentile = 100`` is the max (the classic rule and the evaluation protocol); a lower value is the
    percentile-as-standard (PaS) rule of Bae et al. (e.g. ``threshold = 0.35, percentile = 90``).
    """
    reference = map_percentiles(to_uint8(score_maps), percentile)
    return (threshold * reference).astype(np.int64)  # int() of a non-negative float, per map


def threshold_value(score_map: np.ndarray, threshold: float, percentile: float = 100.0) -> int:
    """:func:`threshold_values` of one map."""
    return int(threshold_values(np.asarray(score_map)[None], threshold, percentile)[0])


def masks_from_maps(score_maps: np.ndarray, threshold: float = 0.2, percentile: float = 100.0) -> np.ndarray:
    """Foregrounds (bool, B x H x W) of a batch: ``u8 > cut`` per map (see :func:`threshold_values`)."""
    return to_uint8(score_maps) > threshold_values(score_maps, threshold, percentile)[:, None, None]


def mask_from_map(score_map: np.ndarray, threshold: float = 0.2, percentile: float = 100.0) -> np.ndarray:
    """The foreground (bool) of one map, that :func:`boxes_from_map` draws its boxes around."""
    return masks_from_maps(np.asarray(score_map)[None], threshold, percentile)[0]


def boxes_from_maps(score_maps: np.ndarray, threshold: float = 0.2, percentile: float = 100.0,
                    components: Components = "largest") -> list[np.ndarray]:
    """Boxes of each map of a batch (B, H, W): one (n_i, 4) array per map, ``(0, 0, 0, 0)`` if empty."""
    masks = masks_from_maps(score_maps, threshold, percentile)
    return [contour_boxes(mask.view(np.uint8), components) for mask in masks]


def boxes_from_map(score_map: np.ndarray, threshold: float = 0.2, percentile: float = 100.0,
                   components: Components = "largest") -> np.ndarray:
    """Boxes (n, 4) of one score map in [0, 1] at ``threshold`` (see :func:`threshold_values`)."""
    return contour_boxes(mask_from_map(score_map, threshold, percentile).view(np.uint8), components)


def scale_boxes(boxes: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Inclusive boxes from a ``src = (w, h)`` pixel grid to ``dst = (W, H)``: pixel ``[x0, x1]`` covers
    ``[x0 * W / w, (x1 + 1) * W / w)`` in the destination."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.stack([np.floor(b[:, 0] * sx), np.floor(b[:, 1] * sy),
                    np.ceil((b[:, 2] + 1) * sx) - 1, np.ceil((b[:, 3] + 1) * sy) - 1], 1)
    out = np.clip(out, 0, [dst[0] - 1, dst[1] - 1, dst[0] - 1, dst[1] - 1])
    return out.astype(np.int64)


def boxes_with_scores(score_map: np.ndarray, threshold: float, percentile: float, components: str,
                      size: tuple[int, int]) -> list[dict[str, Any]]:
    """Boxes of ``score_map`` in the pixels of an image of ``size = (W, H)``, each with the mean map value
    inside it, largest first; an empty foreground gives no box (not the protocol's ``(0, 0, 0, 0)``)."""
    foreground = mask_from_map(score_map, threshold, percentile)
    if not foreground.any():
        return []
    boxes = contour_boxes(foreground.view(np.uint8), components)  # type: ignore[arg-type]
    h, w = score_map.shape
    out = []
    for (x0, y0, x1, y1), big in zip(boxes, scale_boxes(boxes, (w, h), size)):
        score = float(score_map[y0:y1 + 1, x0:x1 + 1].mean())
        out.append({"box": [int(v) for v in big], "score": round(score, 4)})
    out.sort(key=lambda r: -(r["box"][2] - r["box"][0] + 1) * (r["box"][3] - r["box"][1] + 1))  # largest first
    return out
