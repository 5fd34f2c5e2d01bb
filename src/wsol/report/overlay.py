"""Overlays: an image with its score map as a heatmap (OpenCV JET) and boxes drawn on top."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from wsol.errors import WSOLError
from wsol.files import write_bytes

BOX_COLOR = (0, 255, 0)  # RGB
OVERLAY_SUFFIX = ".jpg"  # overlays are photos: JPEG encodes ~10x faster than PNG and is ~5x smaller
_ENCODE_PARAMS = {
    ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 90],
    # "up" filter + Huffman-only deflate: 2.5x faster than zlib level 1 on photos, files of the same size
    ".png": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
             cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY],
}


def heatmap(score_map: np.ndarray) -> np.ndarray:
    """A score map in [0, 1] (H, W) as an RGB uint8 JET heatmap (blue = low, red = high)."""
    u8 = (np.clip(np.nan_to_num(score_map), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def render_overlay(image: np.ndarray, score_map: np.ndarray, boxes: np.ndarray | None = None,
                   label: str | None = None, alpha: float = 0.45) -> np.ndarray:
    """Blend ``image`` (H, W, 3) uint8 RGB with the heatmap of ``score_map`` and draw ``boxes``.

    ``score_map`` is resized to the image if needed; ``boxes`` (n, 4) are inclusive ``x0, y0, x1, y1`` in the
    image's pixels; ``label`` is written in the top-left corner.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise WSOLError(f"overlay: expected an RGB image (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    if score_map.shape != (h, w):
        score_map = cv2.resize(score_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(image, 1 - alpha, heatmap(score_map), alpha, 0)
    thick = max(2, round(max(h, w) / 250))
    for x0, y0, x1, y1 in np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.int64):
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), BOX_COLOR, thick)
    if label:
        scale = max(0.4, max(h, w) / 900)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (min(w - 1, tw + 8), th + base + 8), (0, 0, 0), -1)
        cv2.putText(out, label, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image atomically, as JPEG or PNG by the path's suffix."""
    suffix = Path(path).suffix.lower()
    suffix = ".jpg" if suffix == ".jpeg" else suffix
    if suffix not in _ENCODE_PARAMS:
        raise WSOLError(f"{path}: overlays are written as .jpg or .png")
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), _ENCODE_PARAMS[suffix])
    if not ok:
        raise WSOLError(f"{path}: cannot encode the image")
    write_bytes(path, buf.tobytes())


def write_overlay(path: str | Path, image: np.ndarray, score_map: np.ndarray, boxes: np.ndarray | None = None,
                  label: str | None = None, alpha: float = 0.45) -> None:
    """:func:`render_overlay` then :func:`write_image`."""
    write_image(path, render_overlay(image, score_map, boxes, label, alpha))


def label_text(name: str, prob: float, extra: Sequence[str] = ()) -> str:
    """A short overlay label: the first synonym of a class name and its probability."""
    short = name.split(",")[0].strip()
    return " ".join([f"{short} {prob:.0%}", *extra])
