"""From a raw map to score maps, thresholds, boxes and masks (explicit, named steps)."""

from wsol.localize.boxes import (
    box_iou,
    boxes_from_map,
    boxes_from_maps,
    contour_boxes,
    mask_from_map,
    masks_from_maps,
    threshold_value,
    threshold_values,
    to_uint8,
    trace_boxes,
)
from wsol.localize.crf import crf_refine
from wsol.localize.maps import check_score_map, minmax_normalize, resize_map, resize_maps, to_score_maps

__all__ = [
    "box_iou", "boxes_from_map", "boxes_from_maps", "check_score_map", "contour_boxes", "crf_refine",
    "mask_from_map", "masks_from_maps", "minmax_normalize", "resize_map", "resize_maps", "threshold_value",
    "threshold_values",
    "to_score_maps", "to_uint8", "trace_boxes",
]
