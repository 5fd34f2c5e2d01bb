"""Streaming WSOL metrics, exact to the reference protocol: :class:`BoxAccuracy` and :class:`PixelAP`
(torchmetrics), their torch-free twins :class:`BoxCounts` and :class:`PixelCounts`, and the
:class:`SplitEvaluator` that runs them over a WSOL split. Names are imported
on first use, so that ``wsol evaluate`` does not load torch."""

from __future__ import annotations

from wsol.lazy import lazy_exports

_EXPORTS = {
    "BoxAccuracy": "box_accuracy", "PixelAP": "pixel_ap",
    "FIXED_THRESHOLD": "counts", "BoxCounts": "counts", "PixelCounts": "counts", "threshold_hits": "counts",
    "threshold_list": "counts", "topk_hits": "counts",
    "ClassAccuracy": "classification", "SplitEvaluator": "split",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
