"""wsol.maps.boxes pinned on hand-computed values: the tests that kill mutmut's surviving mutants of
box_iou, scale_boxes, trace_boxes, contour_boxes and boxes_with_scores (issue 12)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from wsol.maps.boxes import box_iou, boxes_with_scores, contour_boxes, scale_boxes, trace_boxes

# ---------------------------------------------------------------------------------------------- box_iou


def test_box_iou_casts_both_inputs_to_int64():
    # 2.9 truncates to 2: (0, 0, 2, 2) against itself, in either argument
    assert box_iou(np.array([[0.0, 0.0, 2.9, 2.9]]), np.array([[0, 0, 2, 2]]))[0, 0] == 1.0
    assert box_iou(np.array([[0, 0, 2, 2]]), np.array([[0.0, 0.0, 2.9, 2.9]]))[0, 0] == 1.0
    # uint8 boxes: x1 - x0 + 1 = 256 must not wrap to 0
    full = np.array([[0, 0, 255, 255]], dtype=np.uint8)
    half = np.array([[0, 0, 127, 255]], dtype=np.uint8)
    assert box_iou(full, full)[0, 0] == 1.0
    assert box_iou(full, half)[0, 0] == 0.5  # 128 * 256 / (256 * 256)
    assert box_iou(half, full)[0, 0] == 0.5


def test_box_iou_of_boxes_that_touch_is_zero():
    a = np.array([[0, 0, 1, 1]])
    # side by side (same rows, next columns): no common column
    assert box_iou(a, np.array([[2, 0, 3, 1]]))[0, 0] == 0.0
    # one above the other (same columns, next rows): no common row
    assert box_iou(a, np.array([[0, 2, 1, 3]]))[0, 0] == 0.0
    # overlapping by one column: 2 / (4 + 6 - 2)
    assert box_iou(a, np.array([[1, 0, 3, 1]]))[0, 0] == pytest.approx(2 / 8)


def test_box_iou_of_an_empty_union_is_zero_without_a_warning():
    empty = np.array([[0, 0, -1, -1]])  # width 0, height 0: area 0, union 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iou = box_iou(empty, empty)
    assert iou.tolist() == [[0.0]]


# ---------------------------------------------------------------------------------------------- scale_boxes


def test_scale_boxes_inclusive_ends_on_several_grids():
    # 4 -> 10 (x2.5): pixel [1, 2] covers [2.5, 7.5) -> 2 .. 7
    assert scale_boxes(np.array([[1, 1, 2, 2]]), (4, 4), (10, 10)).tolist() == [[2, 2, 7, 7]]
    # (3, 2) -> (8, 5): sx = 8/3, sy = 2.5; pixel (1, 1) covers x [2.67, 5.33) -> 2 .. 5, y [2.5, 5) -> 2 .. 4
    assert scale_boxes(np.array([[1, 1, 1, 1]]), (3, 2), (8, 5)).tolist() == [[2, 2, 5, 4]]
    assert scale_boxes(np.array([[0, 0, 2, 1]]), (3, 2), (8, 5)).tolist() == [[0, 0, 7, 4]]
    # 8 -> 4 (x0.5): the last pixel 7 covers [3.5, 4) -> 3 .. 3, the last destination pixel
    assert scale_boxes(np.array([[7, 7, 7, 7]]), (8, 8), (4, 4)).tolist() == [[3, 3, 3, 3]]
    assert scale_boxes(np.array([[7, 5, 7, 5]]), (8, 6), (4, 3)).tolist() == [[3, 2, 3, 2]]


def test_scale_boxes_result_is_int64():
    out = scale_boxes(np.array([[1, 1, 2, 2]]), (4, 4), (10, 10))
    assert out.dtype == np.int64 and out.shape == (1, 4)


def test_scale_boxes_clips_a_floating_point_overshoot():
    # 7 * (29 / 7) = 29.000000000000004: ceil gives 30, minus 1 is 29 = W, clipped to W - 1 = 28
    assert 7 * (29 / 7) > 29
    assert scale_boxes(np.array([[0, 0, 6, 6]]), (7, 7), (29, 29)).tolist() == [[0, 0, 28, 28]]
    assert scale_boxes(np.array([[0, 0, 6, 1]]), (7, 2), (29, 4)).tolist() == [[0, 0, 28, 3]]
    assert scale_boxes(np.array([[0, 0, 1, 6]]), (2, 7), (4, 29)).tolist() == [[0, 0, 3, 28]]


def test_scale_boxes_clips_at_the_frame():
    # partly outside the 8 x 8 grid on every side: x [-4, 22), y [-2, 20) on 16 x 16 -> the whole frame
    assert scale_boxes(np.array([[-2, -1, 10, 9]]), (8, 8), (16, 16)).tolist() == [[0, 0, 15, 15]]
    # entirely past the bottom-right corner: every coordinate clipped to the last pixel
    assert scale_boxes(np.array([[9, 9, 12, 12]]), (8, 8), (16, 16)).tolist() == [[15, 15, 15, 15]]
    # non-square frame: x clipped to W - 1 = 11, y to H - 1 = 5
    assert scale_boxes(np.array([[9, 9, 12, 12]]), (8, 4), (12, 6)).tolist() == [[11, 5, 11, 5]]


def test_scale_boxes_of_uint8_boxes_does_not_wrap():
    # x1 + 1 = 256 (not 0 in uint8): 256 -> 512 maps pixel 255 to 510 .. 511
    boxes = np.array([[0, 0, 255, 255]], dtype=np.uint8)
    assert scale_boxes(boxes, (256, 256), (512, 512)).tolist() == [[0, 0, 511, 511]]


# ---------------------------------------------------------------------------------------------- trace / contour


def test_trace_boxes_clips_x_at_the_frame_width_and_y_at_its_height():
    fg = np.ones((3, 3), np.uint8)  # boundingRect (0, 0, 3, 3)
    # a 5 wide, 8 tall image: x1 = min(2 + 3, 5 - 1) = 4, y1 = min(1 + 3, 8 - 1) = 4
    boxes, largest = trace_boxes(fg, offset=(2, 1), frame=(5, 8))
    assert largest == 0 and boxes.tolist() == [[2, 1, 4, 4]]
    # an 8 wide, 3 tall image: x1 = min(5, 7) = 5, y1 = min(4, 2) = 2
    boxes, _ = trace_boxes(fg, offset=(2, 1), frame=(8, 3))
    assert boxes.tolist() == [[2, 1, 5, 2]]


@pytest.mark.parametrize("big_at_bottom", [True, False])
def test_contour_boxes_largest_is_one_row(big_at_bottom):
    fg = np.zeros((10, 10), np.uint8)
    if big_at_bottom:
        fg[1:3, 1:3] = 1  # 2 x 2
        fg[5:9, 4:9] = 1  # 4 x 5, the largest
        expected = [[4, 5, 9, 9]]
    else:
        fg[1:5, 1:6] = 1  # 4 x 5, the largest
        fg[7:9, 6:8] = 1  # 2 x 2
        expected = [[1, 1, 6, 5]]
    out = contour_boxes(fg, "largest")
    assert out.shape == (1, 4) and out.tolist() == expected
    assert len(contour_boxes(fg, "all")) == 2


# ---------------------------------------------------------------------------------------------- boxes_with_scores


def test_boxes_with_scores_sorts_by_inclusive_area_tall_and_square():
    m = np.zeros((12, 16))
    m[1:10, 1] = 1.0  # 1 x 9 column -> box (1, 1, 2, 10): 2 x 10 = 20, 9 ones in 20 pixels
    m[1:3, 5:10] = 1.0  # 5 x 2 -> box (5, 1, 10, 3): 6 x 3 = 18, 10 ones in 18 pixels
    m[6:9, 12:15] = 1.0  # 3 x 3 -> box (12, 6, 15, 9): 4 x 4 = 16, 9 ones in 16 pixels
    out = boxes_with_scores(m, 0.5, 100.0, "all", (16, 12))
    assert out == [
        {"box": [1, 1, 2, 10], "score": 0.45},
        {"box": [5, 1, 10, 3], "score": 0.5556},  # 10 / 18 = 0.5555... rounded to 4 places
        {"box": [12, 6, 15, 9], "score": 0.5625},
    ]


def test_boxes_with_scores_sorts_by_inclusive_area_wide_and_tall():
    m = np.zeros((12, 16))
    m[1, 5:14] = 1.0  # 9 x 1 row -> box (5, 1, 14, 2): 10 x 2 = 20, 9 ones in 20 pixels
    m[5:10, 1:3] = 1.0  # 2 x 5 -> box (1, 5, 3, 10): 3 x 6 = 18, 10 ones in 18 pixels
    out = boxes_with_scores(m, 0.5, 100.0, "all", (16, 12))
    assert out == [{"box": [5, 1, 14, 2], "score": 0.45}, {"box": [1, 5, 3, 10], "score": 0.5556}]


def test_boxes_with_scores_uses_the_percentile():
    m = np.zeros((6, 6))
    m[1:4, 1:4] = 0.5  # uint8 127
    m[2, 2] = 1.0  # uint8 255
    # percentile 100: cut int(0.5 * 255) = 127, only the 255 pixel -> box (2, 2, 3, 3), (1 + 3 * 0.5) / 4
    assert boxes_with_scores(m, 0.5, 100.0, "largest", (6, 6)) == [{"box": [2, 2, 3, 3], "score": 0.625}]
    # percentile 50 of the 36 values is 0: cut 0, the whole block -> box (1, 1, 4, 4), (8 * 0.5 + 1) / 16
    assert boxes_with_scores(m, 0.5, 50.0, "largest", (6, 6)) == [{"box": [1, 1, 4, 4], "score": 0.3125}]
    # the same in a 12 x 18 image (x2, x3): [2, 10) x [3, 15) -> (2, 3, 9, 14)
    assert boxes_with_scores(m, 0.5, 50.0, "largest", (12, 18)) == [{"box": [2, 3, 9, 14], "score": 0.3125}]


def test_boxes_with_scores_empty_foreground_gives_no_box():
    assert boxes_with_scores(np.zeros((4, 5)), 0.5, 100.0, "all", (10, 8)) == []
