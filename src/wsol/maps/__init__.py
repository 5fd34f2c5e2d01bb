"""Map primitives: from a raw map to score maps, thresholds, boxes and masks, in explicit, named steps.

The layer below everything that turns maps into numbers (``metrics``, ``train``, the ``localize`` job and
the reports): :mod:`~wsol.maps.normalize` (the reference's bicubic resize and min-max), :mod:`~wsol.maps.boxes`
(the threshold rule, max or percentile, contour boxes, masks, box IoU), :mod:`~wsol.maps.variants` (a CAM
method with NWC, PaS or as published, as score maps at 224) and :mod:`~wsol.maps.crf` (Bae et al.'s dense
CRF). Names are imported on first use: the CRF and the variants need torch; boxes and normalisation do not
(``wsol evaluate`` never loads torch).
"""

from __future__ import annotations

from wsol.lazy import lazy_exports

_EXPORTS = {
    **{name: "boxes" for name in ("box_iou", "boxes_from_map", "boxes_from_maps", "boxes_with_scores",
                                  "contour_boxes", "mask_from_map", "masks_from_maps", "scale_boxes",
                                  "threshold_value", "threshold_values", "to_uint8", "trace_boxes")},
    **{name: "crf" for name in ("crf_on_images", "crf_refine")},
    **{name: "normalize" for name in ("check_score_map", "map_percentiles", "minmax_normalize", "pas_normalize",
                                      "resize_map", "resize_maps", "to_score_maps")},
    "MapVariant": "variants",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
