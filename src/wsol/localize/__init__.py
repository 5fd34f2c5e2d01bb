"""From a raw map to score maps, thresholds, boxes and masks (explicit, named steps). Names are imported
on first use (the CRF needs torch; boxes and the score-map checks do not)."""

from __future__ import annotations

from wsol.lazy import lazy_exports

_EXPORTS = {
    **{name: "boxes" for name in ("box_iou", "boxes_from_map", "boxes_from_maps", "contour_boxes", "mask_from_map",
                                  "masks_from_maps", "threshold_value", "threshold_values", "to_uint8",
                                  "trace_boxes")},
    "crf_refine": "crf",
    **{name: "maps" for name in ("check_score_map", "minmax_normalize", "resize_map", "resize_maps",
                                 "to_score_maps")},
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
