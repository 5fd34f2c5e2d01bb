"""BoxAccuracy and PixelAP equal the per-threshold oracle (tests/protocol_oracle.py) on score maps drawn at
random by Hypothesis from families that stress the protocol: plateaus, values exactly on uint8 steps and on
the threshold grid (and one ulp off), nested rings, blobs touching the frame, sparse pixels, CAM-like smooth
maps, constant and empty maps, non-normalised maps (max below 1), float32 and float64; GT boxes partly derived
from the map (the boxes of one of its thresholds, jittered) so that hits occur, GT masks partly derived from its
level sets, ignore regions. At cam_curve_interval 0.01 and 0.001.

The profile (tests/conftest.py) is ``ci`` by default (25 examples per test, deadline, the same examples every
run); ``HYPOTHESIS_PROFILE=long pytest tests/test_exactness_hypothesis.py`` runs thousands.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol_oracle import oracle_box_accuracy, oracle_boxes, oracle_pxap
from wsol.metrics import BoxAccuracy, PixelAP, threshold_list

INTERVALS = [0.01, 0.001]
MAX_SIDE = 40


def _rect(draw, h: int, w: int, touch: bool = False) -> tuple[int, int, int, int]:
    """Rows y0..y1 and columns x0..x1 (inclusive); with ``touch`` one side lies on the frame."""
    y0 = draw(st.integers(0, h - 1))
    x0 = draw(st.integers(0, w - 1))
    y1 = draw(st.integers(y0, min(h - 1, y0 + h // 2 + 1)))
    x1 = draw(st.integers(x0, min(w - 1, x0 + w // 2 + 1)))
    if touch:
        side = draw(st.sampled_from(["top", "bottom", "left", "right"]))
        if side == "top":
            y0 = 0
        elif side == "bottom":
            y1 = h - 1
        elif side == "left":
            x0 = 0
        else:
            x1 = w - 1
    return y0, y1, x0, x1


def _paint(draw, h: int, w: int, levels: list[float], touch: bool = False, max_rects: int = 6) -> np.ndarray:
    m = np.full((h, w), draw(st.sampled_from(levels)), np.float64)
    for _ in range(draw(st.integers(1, max_rects))):
        y0, y1, x0, x1 = _rect(draw, h, w, touch and draw(st.booleans()))
        m[y0:y1 + 1, x0:x1 + 1] = draw(st.sampled_from(levels))
    return m


def plateaus(draw, h, w):
    return _paint(draw, h, w, [0.0, 0.1, 0.35, 0.5, 0.5, 0.75, 1.0])


def uint8_ties(draw, h, w):
    """Levels u / 255 with u on the cuts int(tau * M) of grid thresholds tau for the uint8 max M, their
    neighbours, and M itself: pixels exactly at, just above and just below the strict ``u8 > cut``."""
    peak = draw(st.integers(1, 255))
    grid = threshold_list(draw(st.sampled_from(INTERVALS)))
    cuts = {int(t * peak) for t in draw(st.lists(st.sampled_from(list(grid)), min_size=1, max_size=4))}
    levels = sorted({min(max(c + d, 0), peak) for c in cuts for d in (-1, 0, 1)} | {peak})
    return _paint(draw, h, w, [u / 255 for u in levels])


def grid_ties(draw, h, w):
    """Values on the threshold grid (PxAP's bin edges) and one ulp either side."""
    grid = threshold_list(draw(st.sampled_from(INTERVALS)))
    picks = draw(st.lists(st.sampled_from(list(grid[1:])), min_size=1, max_size=4))
    levels = [v for t in picks for v in (t, np.nextafter(t, 0), np.nextafter(t, 1))]
    return _paint(draw, h, w, [0.0, 1.0, *levels])


def rings(draw, h, w):
    cy, cx = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    r = np.hypot(*np.mgrid[:h, :w] - np.array([cy, cx])[:, None, None])
    width = draw(st.integers(1, 3))
    levels = draw(st.lists(st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), min_size=2, max_size=5))
    return np.array(levels)[(r // width).astype(int) % len(levels)]


def frame_blobs(draw, h, w):
    return _paint(draw, h, w, [0.0, 0.0, 0.3, 0.6, 0.9, 1.0], touch=True)


def sparse(draw, h, w):
    m = np.zeros((h, w))
    for _ in range(draw(st.integers(1, 8))):
        m[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(st.sampled_from([0.2, 0.5, 1.0]))
    return m


def smooth(draw, h, w):
    g = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    small = np.random.default_rng(seed).random((g, g)) ** draw(st.sampled_from([1.0, 3.0]))
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    up -= up.min()
    return up / up.max() if up.max() > 0 else up


def constant(draw, h, w):
    return np.full((h, w), draw(st.sampled_from([0.0, 0.0, 0.003, 0.5, 1.0])))


FAMILIES = [plateaus, uint8_ties, grid_ties, rings, frame_blobs, sparse, smooth, constant]


@st.composite
def score_maps(draw) -> np.ndarray:
    h, w = draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE))
    m = draw(st.sampled_from(FAMILIES))(draw, h, w)
    if draw(st.integers(0, 3)) == 0:  # not normalised: the max below 1 (the protocol cuts relative to it)
        m = m * draw(st.sampled_from([0.9, 0.5, 0.31, 0.02]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return np.clip(m, 0, 1).astype(dtype)


@st.composite
def gt_boxes(draw, score_map: np.ndarray) -> np.ndarray:
    h, w = score_map.shape
    boxes = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):  # from the map: a box of one of its thresholds, maybe a pixel off
            tau = draw(st.sampled_from(list(threshold_list(0.01))))
            candidates = oracle_boxes(score_map, [tau], multi_contour=True)[0]
            x0, y0, x1, y1 = candidates[draw(st.integers(0, len(candidates) - 1))]
            if draw(st.booleans()):
                x0, y0, x1, y1 = (v + draw(st.integers(-1, 1)) for v in (x0, y0, x1, y1))
            x0, x1 = sorted((min(max(x0, 0), w - 1), min(max(x1, 0), w - 1)))
            y0, y1 = sorted((min(max(y0, 0), h - 1), min(max(y1, 0), h - 1)))
        else:
            y0, y1, x0, x1 = _rect(draw, h, w)
        boxes.append([x0, y0, x1, y1])
    return np.array(boxes, dtype=np.int64)


@st.composite
def masks(draw, score_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A GT mask (a level set of the map, or rectangles) and an ignore mask (none or rectangles), with at least
    one foreground pixel outside the ignore region."""
    h, w = score_map.shape
    if draw(st.booleans()):
        level = draw(st.sampled_from(sorted(set(score_map.ravel().tolist()))))
        fg = score_map >= level if draw(st.booleans()) else score_map > level
    else:
        fg = _paint(draw, h, w, [0.0, 1.0]) > 0
    ignore = np.zeros((h, w), bool)
    if draw(st.booleans()):
        y0, y1, x0, x1 = _rect(draw, h, w)
        ignore[y0:y1 + 1, x0:x1 + 1] = True
    if not (fg & ~ignore).any():
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        fg[y, x], ignore[y, x] = True, False
    return fg, ignore


@pytest.mark.parametrize("interval", INTERVALS)
@given(data=st.data())
def test_box_accuracy_equals_the_oracle(interval: float, data: st.DataObject) -> None:
    maps = [data.draw(score_maps(), label=f"map {i}") for i in range(data.draw(st.integers(1, 3)))]
    boxes = [data.draw(gt_boxes(m), label=f"GT boxes {i}") for i, m in enumerate(maps)]
    metric = BoxAccuracy(cam_curve_interval=interval, num_threads=1)
    for m, b in zip(maps, boxes):  # one update per map: the maps' sizes differ
        metric.update(m[None], [b])
    curves = metric.curves()
    largest = oracle_box_accuracy(maps, boxes, interval, multi_contour=False)
    every = oracle_box_accuracy(maps, boxes, interval, multi_contour=True)
    np.testing.assert_array_equal(curves["largest"], largest[50])
    for row, iou in enumerate((30, 50, 70)):
        np.testing.assert_array_equal(curves["all"][row], every[iou])
    result = metric.compute()
    assert result["MaxBoxAcc"] == largest[50].max()
    assert result["MaxBoxAccV2"] == np.mean([every[i].max() for i in (30, 50, 70)])


@pytest.mark.parametrize("interval", INTERVALS)
@given(data=st.data())
def test_pixel_ap_equals_the_oracle(interval: float, data: st.DataObject) -> None:
    h, w = data.draw(st.integers(1, MAX_SIDE)), data.draw(st.integers(1, MAX_SIDE))
    maps, fgs, ignores = [], [], []
    for i in range(data.draw(st.integers(1, 3))):
        m = data.draw(score_maps().filter(lambda a: a.shape[0] >= h and a.shape[1] >= w), label=f"map {i}")
        m = np.ascontiguousarray(m[:h, :w])  # one batch: one size
        fg, ignore = data.draw(masks(m), label=f"masks {i}")
        maps.append(m)
        fgs.append(fg)
        ignores.append(ignore)
    dtype = np.result_type(*maps)
    batch = np.stack(maps).astype(dtype)
    metric = PixelAP(cam_curve_interval=interval)
    metric.update(batch, np.stack(fgs), np.stack(ignores))
    assert metric.compute()["PxAP"] == oracle_pxap(list(batch), fgs, ignores, interval)
