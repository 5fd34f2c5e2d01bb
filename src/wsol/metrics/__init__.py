"""Streaming WSOL metrics, exact to the reference protocol: :class:`BoxAccuracy` and :class:`PixelAP`
(torchmetrics), and their torch-free twins :class:`BoxCounts` and :class:`PixelCounts`. Names are imported
on first use, so that ``wsol evaluate`` does not load torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BoxAccuracy": "box_accuracy", "PixelAP": "pixel_ap",
    "FIXED_THRESHOLD": "counts", "BoxCounts": "counts", "PixelCounts": "counts", "threshold_hits": "counts",
    "threshold_list": "counts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wsol.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wsol.metrics.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
