"""Streaming WSOL metrics, exact to the reference protocol: :class:`BoxAccuracy` and :class:`PixelAP`."""

from wsol.metrics.box_accuracy import FIXED_THRESHOLD, BoxAccuracy, threshold_hits, threshold_list
from wsol.metrics.pixel_ap import PixelAP

__all__ = ["FIXED_THRESHOLD", "BoxAccuracy", "PixelAP", "threshold_hits", "threshold_list"]
