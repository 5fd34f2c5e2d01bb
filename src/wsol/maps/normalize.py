"""Explicit, named steps that turn a raw activation map into a score map: resize, normalise, validate.

These follow the WSOL reference (clovaai/wsolevaluation) exactly: bicubic resizing with OpenCV's
``INTER_CUBIC`` and per-map min-max normalisation where a NaN or constant map becomes all zeros.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Union

import cv2
import numpy as np

from wsol.errors import WSOLError

PAS_PERCENTILE = 90.0  # Bae et al.'s percentile

if TYPE_CHECKING:  # torch is imported only by callers that pass tensors (wsol evaluate never loads it)
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]


def _is_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def minmax_normalize(maps: ArrayLike) -> ArrayLike:
    """Per-map ``(m - min) / max(m - min)`` over the last two axes; NaN or constant maps become zeros.

    Accepts one map (H, W) or a batch (..., H, W), as a numpy array or a tensor (kept on its device).
    Same arithmetic as the reference's ``normalize_scoremap``: subtract the min, then divide by the new max.
    """
    if _is_tensor(maps):
        import torch

        flat = maps.flatten(-2)
        shifted = flat - flat.amin(-1, keepdim=True)
        peak = shifted.amax(-1, keepdim=True)
        bad = torch.isnan(flat).any(-1, keepdim=True) | (peak == 0)
        out = torch.where(bad, torch.zeros_like(shifted), shifted / torch.where(bad, torch.ones_like(peak), peak))
        return out.view_as(maps)
    maps = np.asarray(maps)
    flat = maps.reshape(*maps.shape[:-2], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = flat - flat.min(-1, keepdims=True)
        peak = shifted.max(-1, keepdims=True)
        bad = np.isnan(flat).any(-1, keepdims=True) | (peak == 0)
        out = np.where(bad, 0, shifted / np.where(bad, 1, peak))
    return out.astype(maps.dtype, copy=False).reshape(maps.shape)


def resize_map(score_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one 2-D map to ``size = (width, height)`` bicubically, exactly as OpenCV ``INTER_CUBIC``."""
    return cv2.resize(np.asarray(score_map, dtype=np.float32), tuple(size), interpolation=cv2.INTER_CUBIC)


def resize_maps(maps: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """Resize a batch (B, h, w) to (B, height, width) with :func:`resize_map`; returns float32 numpy."""
    if _is_tensor(maps):
        maps = maps.detach().float().cpu().numpy()
    return np.stack([resize_map(m, size) for m in maps]) if len(maps) else np.zeros((0, size[1], size[0]), np.float32)


def to_score_maps(raw_maps: ArrayLike, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """The reference's path from raw CAMs to evaluable score maps: bicubic resize, then min-max normalise."""
    return minmax_normalize(resize_maps(raw_maps, size))


def check_score_map(score_map: np.ndarray, name: str = "score map") -> None:
    """Raise a one-line :class:`WSOLError` naming ``name`` unless the map is a finite 2-D float map in [0, 1]."""
    if not isinstance(score_map, np.ndarray) or score_map.dtype.kind != "f":
        dtype = getattr(score_map, "dtype", type(score_map).__name__)
        raise WSOLError(f"{name}: expected a float array, got {dtype}")
    if score_map.ndim != 2:
        raise WSOLError(f"{name}: expected a 2-D map, got shape {tuple(score_map.shape)}")
    if np.isnan(score_map).any():
        raise WSOLError(f"{name}: contains NaN")
    low, high = float(score_map.min()), float(score_map.max())
    if low < 0 or high > 1:
        raise WSOLError(f"{name}: values must lie in [0, 1], found [{low:g}, {high:g}] (normalise it first)")


def map_percentiles(maps: np.ndarray, percentile: float) -> np.ndarray:
    """The ``percentile``-th value of each map of a batch (B, H, W), numpy's linear rule; the max (in the
    maps' dtype) at 100 and above. The reference value of both PaS rules: :func:`pas_normalize` and
    :func:`wsol.maps.boxes.threshold_values`."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    return flat.max(1) if percentile >= 100 else np.percentile(flat, percentile, axis=1)


def pas_normalize(maps: np.ndarray, percentile: float = PAS_PERCENTILE) -> np.ndarray:
    """``clip(map / percentile(map), 0, 1)`` per map of a (B, H, W) batch; maps with a zero percentile stay.

    PaS (percentile as a standard, Bae et al.) as a score-map transform that the unchanged evaluator
    consumes: its foreground at threshold tau is then ``map > tau * p`` (up to the uint8 cut), so the tau
    swept by MaxBoxAcc is the PaS ratio (the authors' fixed rule is tau = 0.35 at p90, which ``wsol
    localize --threshold 0.35 --percentile 90`` applies to one map with :func:`wsol.maps.boxes.threshold_values`).
    Pixels above ``p`` share the top score, which PxAP sees as ties.
    """
    ref = map_percentiles(maps, percentile).astype(np.float32)
    safe = np.where(ref > 0, ref, 1.0).astype(np.float32)
    return np.clip(maps / safe[:, None, None], 0.0, 1.0).astype(np.float32)
