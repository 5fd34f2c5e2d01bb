"""Compiled kernels of the metrics: contour boxes at every threshold at once, and pixel histograms.

Contour boxes at every threshold of a map come from one union-find over the pixels sorted by value.

OpenCV's ``findContours(RETR_TREE)`` on a binary image returns one outer contour per 8-connected
foreground component and one inner contour per hole (a 4-connected background component that does not
touch the image frame). Their ``boundingRect`` boxes follow from the pixels alone:

- an outer contour runs through the component's border pixels: its box is the component's bounding box;
- a hole's contour runs through the foreground pixels around it: its box is the hole's bounding box
  grown by one pixel on every side.

Adding the pixels in decreasing value order builds the foreground components of every threshold in one
pass (and the background components in increasing order), so the boxes of all thresholds cost one
near-linear sweep instead of one OpenCV call per threshold.

Which contour is the *largest* (``contourArea``, first on ties) is not decided here. It is always an outer
contour: a hole's contour lies inside its component's outer contour, so its area is at most the outer
one's, and on a tie the outer contour comes first (OpenCV lists parents before children). So where all
components' boxes agree on correctness, the largest one's result is known; where they disagree, the
caller traces that threshold with OpenCV.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, inline="always")
def _box_passes(bx0: int, by0: int, bx1: int, by1: int, gt: np.ndarray, criteria: np.ndarray,
                passes: np.ndarray) -> None:
    """``passes[c]`` = the box's best IoU over the GT boxes is >= ``criteria[c]`` (reference arithmetic)."""
    best = 0.0
    area = (bx1 - bx0 + 1) * (by1 - by0 + 1)
    for g in range(gt.shape[0]):
        iw = min(bx1, gt[g, 2]) - max(bx0, gt[g, 0]) + 1
        ih = min(by1, gt[g, 3]) - max(by0, gt[g, 1]) + 1
        inter = max(0, iw) * max(0, ih)
        union = area + (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1) - inter
        iou = inter / union if union > 0 else 0.0
        if iou > best:
            best = iou
    for c in range(criteria.shape[0]):
        passes[c] = best >= criteria[c]


@njit(cache=True, nogil=True)
def sweep_levels(u8: np.ndarray, needed: np.ndarray, gt: np.ndarray, criteria: np.ndarray):
    """Per needed cut ``t`` (foreground ``u8 > t``): the number of components, how many of their boxes
    reach each IoU criterion, and whether any contour box (components and holes) reaches it.

    Returns ``(num_components (256,), components_passing (256, C), any_passing (256, C))``.
    """
    height, width = u8.shape
    n = height * width
    flat = u8.ravel()
    num_criteria = criteria.shape[0]
    num_components = np.zeros(256, np.int64)
    components_passing = np.zeros((256, num_criteria), np.int64)
    any_passing = np.zeros((256, num_criteria), np.bool_)
    passes = np.zeros(num_criteria, np.bool_)

    # Pixels grouped by value (counting sort), indexed in a grid padded by one never-activated pixel on
    # every side, so that neighbours need no bounds checks.
    stride = width + 2
    counts = np.zeros(257, np.int64)
    for i in range(n):
        counts[flat[i] + 1] += 1
    starts = np.cumsum(counts)
    order = np.empty(n, np.int32)
    order_x = np.empty(n, np.int32)
    order_y = np.empty(n, np.int32)
    fill = starts[:256].copy()
    for y in range(height):
        for x in range(width):
            value = u8[y, x]
            k = fill[value]
            order[k] = (y + 1) * stride + x + 1
            order_x[k] = x
            order_y[k] = y
            fill[value] += 1
    eight = np.array([-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1], np.int32)
    four = np.array([-stride, -1, 1, stride], np.int32)

    padded = (height + 2) * stride
    parent = np.empty(padded, np.int32)
    size = np.empty(padded, np.int32)
    x0 = np.empty(padded, np.int32)
    y0 = np.empty(padded, np.int32)
    x1 = np.empty(padded, np.int32)
    y1 = np.empty(padded, np.int32)
    frame = np.zeros(padded, np.bool_)
    roots = np.empty(n, np.int32)

    for sweep in range(2):  # 0: foreground, values high -> low, 8-connected; 1: background, low -> high, 4
        parent[:] = -1
        num_roots = 0
        neighbours = eight if sweep == 0 else four
        for step in range(256):
            value = 255 - step if sweep == 0 else step
            for k in range(starts[value], starts[value + 1]):
                p = order[k]
                px, py = order_x[k], order_y[k]
                parent[p] = p
                size[p] = 1
                x0[p] = px
                x1[p] = px
                y0[p] = py
                y1[p] = py
                frame[p] = px == 0 or py == 0 or px == width - 1 or py == height - 1
                roots[num_roots] = p
                num_roots += 1
                root = p  # p's current root: only our own unions below change it
                for offset in neighbours:
                    q = p + offset
                    if parent[q] < 0:
                        continue
                    other = _find(parent, q)
                    if other == root:
                        continue
                    if size[other] > size[root]:
                        root, other = other, root
                    parent[other] = root
                    size[root] += size[other]
                    x0[root] = min(x0[root], x0[other])
                    y0[root] = min(y0[root], y0[other])
                    x1[root] = max(x1[root], x1[other])
                    y1[root] = max(y1[root], y1[other])
                    frame[root] = frame[root] or frame[other]
            # state now: foreground of cut (value - 1), or background of cut (value)
            cut = value - 1 if sweep == 0 else value
            if cut < 0 or cut > 255 or not needed[cut]:
                continue
            kept = 0
            for j in range(num_roots):
                r = roots[j]
                if parent[r] != r:
                    continue
                roots[kept] = r
                kept += 1
                if sweep == 0:  # outer contour: the component's box, one pixel wider (reference quirk)
                    _box_passes(x0[r], y0[r], min(x1[r] + 1, width - 1), min(y1[r] + 1, height - 1),
                                gt, criteria, passes)
                elif frame[r]:
                    continue
                else:  # hole: the contour around it is one pixel out on every side, then the quirk
                    _box_passes(x0[r] - 1, y0[r] - 1, min(x1[r] + 2, width - 1), min(y1[r] + 2, height - 1),
                                gt, criteria, passes)
                for c in range(num_criteria):
                    any_passing[cut, c] |= passes[c]
                if sweep == 0:
                    num_components[cut] += 1
                    for c in range(num_criteria):
                        components_passing[cut, c] += passes[c]
            num_roots = kept
    return num_components, components_passing, any_passing


@njit(cache=True, nogil=True)
def pixel_histograms(maps: np.ndarray, foreground: np.ndarray, ignore: np.ndarray, edges: np.ndarray,
                     interval: float) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the scores of foreground and of background pixels, bins ``[edges[i], edges[i + 1])``
    exactly as numpy.histogram; ignored background pixels (``ignore``, may be empty) count nowhere.

    A division guesses the bin of the uniform edges and one comparison each way with the actual edges
    corrects float rounding, so the result is exact for values in [0, 1] without a search. Also returns a
    code per map: 0 valid, 1 NaN, 2 a value outside [0, 1] (such maps are not counted).
    """
    num_maps = maps.shape[0]
    num_bins = edges.shape[0] - 1
    last = num_bins - 2  # the bin [1.0, 2.0)
    counts = np.zeros((2, num_bins), np.int64)
    problems = np.zeros(num_maps, np.int8)
    use_ignore = ignore.size > 0
    for b in range(num_maps):
        score_map = maps[b]
        for y in range(score_map.shape[0]):
            for x in range(score_map.shape[1]):
                value = np.float64(score_map[y, x])
                if np.isnan(value):
                    problems[b] = 1
                elif value < 0.0 or value > 1.0:
                    problems[b] = max(problems[b], 2)
        if problems[b]:
            continue
        for y in range(score_map.shape[0]):
            for x in range(score_map.shape[1]):
                is_foreground = foreground[b, y, x]
                if not is_foreground and use_ignore and ignore[b, y, x]:
                    continue
                value = np.float64(score_map[y, x])
                index = min(np.int64(value / interval), last)
                if value < edges[index]:
                    index -= 1
                if value >= edges[index + 1]:
                    index += 1
                counts[0 if is_foreground else 1, index] += 1
    return counts, problems
