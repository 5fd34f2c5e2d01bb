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
near-linear sweep instead of one OpenCV call per threshold. Two shortcuts keep the sweep short: a new pixel
is united only with one neighbour of each group of mutually adjacent active neighbours (adjacent active
pixels are in one component already), and the background sweep (holes) runs only up to the highest cut
where holes exist (the Euler number, kept up to date from each pixel's 8 neighbours, counts them) and the
components do not already reach every criterion.

Which contour is the *largest* (``contourArea``, first on ties) is not decided here. It is always an outer
contour: a hole's contour lies inside its component's outer contour, so its area is at most the outer
one's, and on a tie the outer contour comes first (OpenCV lists parents before children). So where all
components' boxes agree on correctness, the largest one's result is known; where they disagree, the
caller traces that threshold with OpenCV.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
from numba import njit


def _skip_numba_blas_probe() -> None:
    """Load ``numba.np.arraymath`` without its BLAS probe, which imports scipy.linalg (0.3 to 0.7 s of the
    first call of any kernel, even a cached one) only to choose how ``np.convolve`` is compiled. The probe's
    answer is set from whether scipy is installed, so compiled code is the same; ``wsol evaluate`` starts
    that much sooner."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        import numba.np.linalg as linalg
    except ImportError:  # another numba layout: keep its own probe
        return

    def no_probe() -> None:
        raise ImportError("BLAS probe skipped")

    real = linalg.ensure_blas
    linalg.ensure_blas = no_probe
    try:
        import numba.np.arraymath as arraymath
    finally:
        linalg.ensure_blas = real
    arraymath.ensure_blas = real
    arraymath._HAVE_BLAS = importlib.util.find_spec("scipy") is not None


_skip_numba_blas_probe()


def _euler_delta_table() -> np.ndarray:
    """4 x the change of the 8-connected Euler number when a pixel is switched on, by its 8 neighbours."""
    def quad_value(bits):  # Gray's bit quads: Q1 - Q3 - 2 QD
        ones = sum(bits)
        if ones == 1:
            return 1
        if ones == 3:
            return -1
        if ones == 2 and bits[0] == bits[3]:  # diagonal pair: (tl, br) or (tr, bl)
            return -2
        return 0
    table = np.zeros(256, np.int64)
    for code in range(256):
        nw, n, ne, w, e, sw, s, se = ((code >> i) & 1 for i in range(8))
        delta = 0
        for on in (0, 1):
            quads = ((nw, n, w, on), (n, ne, on, e), (w, on, sw, s), (on, e, s, se))
            total = sum(quad_value(q) for q in quads)
            delta += total if on else -total
        table[code] = delta
    return table


EULER_DELTA = _euler_delta_table()


def _top(group: dict[int, int], j: int) -> int:
    while group[j] != j:
        j = group[j]
    return j


def _representatives_table() -> np.ndarray:
    """Per 8-neighbourhood code: one neighbour index of each group of mutually 8-adjacent active neighbours
    (-1 padded). Adjacent active pixels are already in one component, so only these need a union."""
    pos = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]
    table = np.full((256, 4), -1, np.int64)
    for code in range(256):
        active = [j for j in range(8) if code >> j & 1]
        group = {j: j for j in active}
        for a in active:
            for b in active:
                if a < b and max(abs(pos[a][0] - pos[b][0]), abs(pos[a][1] - pos[b][1])) == 1:
                    group[_top(group, b)] = _top(group, a)
        reps = sorted({_top(group, j) for j in active})
        table[code, :len(reps)] = reps
    return table


REPRESENTATIVES = _representatives_table()


@njit(cache=True, inline="always")
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, inline="always")
def _merge(parent: np.ndarray, info: np.ndarray, root: int, other: int) -> int:
    """Merge two components (their roots; ``info`` rows: x0, y0, x1, y1, size, frame); returns the root."""
    if info[other, 4] > info[root, 4]:
        root, other = other, root
    parent[other] = root
    info[root, 4] += info[other, 4]
    info[root, 0] = min(info[root, 0], info[other, 0])
    info[root, 1] = min(info[root, 1], info[other, 1])
    info[root, 2] = max(info[root, 2], info[other, 2])
    info[root, 3] = max(info[root, 3], info[other, 3])
    info[root, 5] = info[root, 5] | info[other, 5]
    return root


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
    num_criteria = criteria.shape[0]
    num_components = np.zeros(256, np.int64)
    components_passing = np.zeros((256, num_criteria), np.int64)
    any_passing = np.zeros((256, num_criteria), np.bool_)
    passes = np.zeros(num_criteria, np.bool_)

    stride = width + 2
    flat = u8.ravel()
    counts = np.zeros(257, np.int64)
    for i in range(n):
        counts[flat[i] + 1] += 1
    starts = np.cumsum(counts)
    order = np.empty(n, np.int32)
    fill = starts[:256].copy()
    for y in range(height):
        for x in range(width):
            value = u8[y, x]
            order[fill[value]] = (y + 1) * stride + x + 1
            fill[value] += 1
    eight = np.array([-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1], np.int32)
    four = np.array([-stride, -1, 1, stride], np.int32)

    padded = (height + 2) * stride
    parent = np.empty(padded, np.int32)
    info = np.empty((padded, 6), np.int32)  # x0, y0, x1, y1, size, touches the frame
    roots = np.empty(n, np.int32)
    holes = np.zeros(256, np.int64)  # holes at each cut (components - Euler number)
    hole_cut = -1  # the highest cut where holes can change the answer

    for sweep in range(2):  # 0: foreground, values high -> low, 8-connected; 1: background, low -> high, 4
        if sweep == 1 and hole_cut < 0:
            break
        parent[:] = -1
        num_roots = 0
        live = 0
        euler4 = 0
        for step in range(256):
            value = 255 - step if sweep == 0 else step
            if sweep == 1 and value > hole_cut:
                break
            for k in range(starts[value], starts[value + 1]):
                p = order[k]
                py = p // stride - 1
                px = p - (py + 1) * stride - 1
                code = 0
                if sweep == 0:
                    for j in range(8):
                        if parent[p + eight[j]] >= 0:
                            code |= 1 << j
                    euler4 += EULER_DELTA[code]
                root = -1  # p joins the first neighbouring component, then merges the others into it
                if sweep == 0:
                    for j in range(4):
                        r = REPRESENTATIVES[code, j]
                        if r < 0:
                            break
                        other = _find(parent, p + eight[r])
                        if root < 0:
                            root = other
                        elif other != root:
                            root = _merge(parent, info, root, other)
                            live -= 1
                else:
                    for j in range(4):
                        q = p + four[j]
                        if parent[q] >= 0:
                            other = _find(parent, q)
                            if root < 0:
                                root = other
                            elif other != root:
                                root = _merge(parent, info, root, other)
                                live -= 1
                if root < 0:  # a new component
                    root = p
                    info[p, 0] = px
                    info[p, 1] = py
                    info[p, 2] = px
                    info[p, 3] = py
                    info[p, 4] = 0
                    info[p, 5] = 0
                    roots[num_roots] = p
                    num_roots += 1
                    live += 1
                parent[p] = root
                info[root, 0] = min(info[root, 0], px)
                info[root, 1] = min(info[root, 1], py)
                info[root, 2] = max(info[root, 2], px)
                info[root, 3] = max(info[root, 3], py)
                info[root, 4] += 1
                if px == 0 or py == 0 or px == width - 1 or py == height - 1:
                    info[root, 5] = 1
            cut = value - 1 if sweep == 0 else value
            if cut < 0 or cut > 255 or not needed[cut]:
                continue
            if sweep == 0:
                holes[cut] = live - euler4 // 4
            elif holes[cut] == 0:
                continue
            kept = 0
            for j in range(num_roots):
                r = roots[j]
                if parent[r] != r:
                    continue
                roots[kept] = r
                kept += 1
                if sweep == 0:
                    _box_passes(info[r, 0], info[r, 1], min(info[r, 2] + 1, width - 1), min(info[r, 3] + 1, height - 1),
                                gt, criteria, passes)
                elif info[r, 5]:
                    continue
                else:
                    _box_passes(info[r, 0] - 1, info[r, 1] - 1, min(info[r, 2] + 2, width - 1),
                                min(info[r, 3] + 2, height - 1), gt, criteria, passes)
                for c in range(num_criteria):
                    any_passing[cut, c] |= passes[c]
                if sweep == 0:
                    num_components[cut] += 1
                    for c in range(num_criteria):
                        components_passing[cut, c] += passes[c]
            num_roots = kept
            if sweep == 0 and holes[cut] > 0:
                reached = True
                for c in range(num_criteria):
                    reached = reached and any_passing[cut, c]
                if reached:  # every criterion is reached already: the holes cannot change the answer
                    holes[cut] = 0
                elif cut > hole_cut:
                    hole_cut = cut
    return num_components, components_passing, any_passing


@njit(cache=True, nogil=True)
def pixel_histograms(maps: np.ndarray, foreground: np.ndarray, ignore: np.ndarray, edges: np.ndarray,
                     interval: float) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the scores of foreground and of background pixels, bins ``[edges[i], edges[i + 1])``
    exactly as numpy.histogram; ignored background pixels (``ignore``, may be empty) count nowhere.

    A multiplication guesses the bin of the uniform edges and one comparison each way with the actual edges
    corrects float rounding, so the result is exact for values in [0, 1] without a search. Also returns a
    code per map: 0 valid, 1 NaN, 2 a value outside [0, 1] (such maps are not counted).
    """
    num_maps = maps.shape[0]
    num_bins = edges.shape[0] - 1
    last = num_bins - 2  # the bin [1.0, 2.0)
    counts = np.zeros((2, num_bins), np.int64)
    local = np.zeros((2, num_bins), np.int64)  # one map's, added to counts if the map is valid
    problems = np.zeros(num_maps, np.int8)
    use_ignore = ignore.size > 0
    inverse = 1.0 / interval  # the guess may be one bin off either way; the edges correct it
    for b in range(num_maps):
        score_map = maps[b]
        local[:] = 0
        for y in range(score_map.shape[0]):
            for x in range(score_map.shape[1]):
                value = np.float64(score_map[y, x])
                if not 0.0 <= value <= 1.0:
                    if np.isnan(value):
                        problems[b] = 1
                    else:
                        problems[b] = max(problems[b], 2)
                    continue
                is_foreground = foreground[b, y, x]
                if not is_foreground and use_ignore and ignore[b, y, x]:
                    continue
                index = min(np.int64(value * inverse), last)
                if value < edges[index]:
                    index -= 1
                if value >= edges[index + 1]:
                    index += 1
                local[0 if is_foreground else 1, index] += 1
        if not problems[b]:
            counts += local
    return counts, problems
