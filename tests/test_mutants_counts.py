"""The torch-free metric arithmetic (wsol.metrics.counts) pinned on hand-checked values: the tests that kill
mutmut's surviving mutants of counts.py (issue 12)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from wsol.errors import WSOLError
from wsol.metrics import counts
from wsol.metrics.counts import (
    BoxCounts,
    PixelCounts,
    box_hits,
    box_increments,
    check_iou_thresholds,
    default_threads,
    empty_box_state,
    empty_pixel_state,
    grid_index,
    pixel_curves,
    pixel_edges,
    pixel_result,
    threshold_hits,
    threshold_list,
    topk_hits,
)


def test_threshold_list_rejects_an_interval_of_one_or_more() -> None:
    for bad in (1, 1.5):
        message = (f"cam_curve_interval must lie in [0.0001, 1) (the protocol uses 0.001 or 0.01), got {bad}")
        with pytest.raises(WSOLError, match=f"^{re.escape(message)}$"):
            threshold_list(bad)
    np.testing.assert_array_equal(threshold_list(0.5), [0.0, 0.5])


def test_grid_index_needs_a_difference_strictly_below_1e_9() -> None:
    assert grid_index(np.array([0.0, 0.5]), 0.5) == 1
    assert grid_index(np.array([0.0]), 1e-9) is None  # |0 - 1e-9| == 1e-9 exactly: not on the grid


def test_an_iou_threshold_of_one_percent_is_valid() -> None:
    assert check_iou_thresholds([1, 100]) == (1, 100)


def test_default_threads_is_the_cpu_count_capped_at_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counts.os, "cpu_count", lambda: 8)
    assert default_threads() == 4
    monkeypatch.setattr(counts.os, "cpu_count", lambda: 3)
    assert default_threads() == 3
    monkeypatch.setattr(counts.os, "cpu_count", lambda: None)
    assert default_threads() == 1


def test_empty_states_are_int64_zeros() -> None:
    box = empty_box_state(3, 2)
    assert set(box) == set(counts.BOX_STATES)
    for name, value in box.items():
        assert value.dtype == np.int64, name
        assert not value.any()
    assert box["correct_largest"].shape == (3,) and box["top5_all"].shape == (2, 3) and box["num_top1"].shape == ()
    pixel = empty_pixel_state(4)
    assert set(pixel) == set(counts.PIXEL_STATES)
    assert [(v.dtype, v.shape) for v in pixel.values()] == [(np.int64, (4,)), (np.int64, (4,)), (np.int64, ())]


def test_summed_counters_add_as_int64() -> None:
    metric = PixelCounts(0.5)
    metric.add({"fg_hist": np.array([True, False, True, False]), "num_images": 1.0})
    state = metric.state_arrays()
    assert state["fg_hist"].dtype == np.int64 and state["num_images"].dtype == np.int64
    np.testing.assert_array_equal(state["fg_hist"], [1, 0, 1, 0])


def test_box_hits_returns_bool_arrays() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0:2, 0:2] = 1.0
    largest, every = box_hits(maps, [np.array([[0, 0, 2, 2]])] * 2, np.array([0.0, 0.5]), (50,))
    assert largest.dtype == np.bool_ and every.dtype == np.bool_
    np.testing.assert_array_equal(largest, [[True, True], [False, False]])
    np.testing.assert_array_equal(every, [[[True, True]], [[False, False]]])


class _Pool:
    """A ThreadPoolExecutor stand-in that records its worker count and runs the map serially."""

    workers: list = []

    def __init__(self, max_workers: int | None) -> None:
        _Pool.workers.append(max_workers)

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def map(self, fn, items):  # noqa: ANN001, ANN201
        return map(fn, items)


@pytest.mark.parametrize(("num_threads", "num_maps", "pool"), [
    (None, 2, []), (1, 2, []), (2, 1, []), (2, 2, [2]), (8, 3, [3]),
])
def test_box_hits_uses_a_pool_only_for_several_threads_and_maps(monkeypatch: pytest.MonkeyPatch,
                                                              num_threads: int | None, num_maps: int,
                                                              pool: list) -> None:
    monkeypatch.setattr(counts, "ThreadPoolExecutor", _Pool)
    _Pool.workers = []
    maps = np.zeros((num_maps, 4, 4), np.float32)
    args = (maps, [np.array([[0, 0, 1, 1]])] * num_maps, np.array([0.0]), (50,))
    largest, _ = box_hits(*args) if num_threads is None else box_hits(*args, num_threads)
    assert _Pool.workers == pool
    assert largest.shape == (num_maps, 1)


def test_box_increments_need_both_top1_and_top5() -> None:
    largest = np.array([[True, False]])
    every = np.array([[[True, True]]])
    out = box_increments(largest, every, np.array([True]), None)
    assert sorted(out) == ["correct_all", "correct_largest", "num_images"]
    np.testing.assert_array_equal(out["correct_largest"], [1, 0])


def test_pixel_edges_close_with_1_2_3() -> None:
    np.testing.assert_array_equal(pixel_edges(np.array([0.0, 0.5])), [0.0, 0.5, 1.0, 2.0, 3.0])


def test_pixel_curves_are_silent_on_zero_over_zero() -> None:
    state = {"fg_hist": np.zeros(3, np.int64), "bg_hist": np.array([0, 0, 1])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves = pixel_curves(state, np.array([0.0, 0.5, 1.0, 2.0]))
    assert np.isnan(curves["recall"]).all()
    np.testing.assert_array_equal(curves["precision"], [0.0, 0.0, 0.0])


def test_pixel_result_without_a_positive_count_names_the_problem() -> None:
    # a corrupted (negative) count: a foreground sum of -1, and tp + fp = [0, -1] from the top: never > 0
    state = {"fg_hist": np.array([-1, 0]), "bg_hist": np.array([0, 0]), "num_images": np.int64(1)}
    message = "no scored pixel in the evaluated maps: PxAP is undefined"
    with pytest.raises(WSOLError, match=f"^{re.escape(message)}$"):
        pixel_result(state, np.array([0.0, 1.0, 2.0]), 0.5)


def test_pixel_counts_of_a_single_foreground_pixel() -> None:
    metric = PixelCounts(0.5)
    np.testing.assert_array_equal(metric.thresholds, [0.0, 0.5])
    np.testing.assert_array_equal(metric.edges, [0.0, 0.5, 1.0, 2.0, 3.0])
    metric.update(np.array([[[0.75]]]), np.array([[[1]]]))
    state = metric.state_arrays()
    np.testing.assert_array_equal(state["fg_hist"], [0, 1, 0, 0])
    np.testing.assert_array_equal(state["bg_hist"], [0, 0, 0, 0])
    assert state["num_images"] == 1
    curves = metric.curves()
    np.testing.assert_array_equal(curves["tp"], [0, 0, 1, 1])
    np.testing.assert_array_equal(curves["threshold"], [2.0, 1.0, 0.5, 0.0])
    assert metric.compute() == {"PxAP": 100.0, "peak_IoU": 100.0, "peak_IoU_threshold": 0.5, "num_images": 1,
                                "cam_curve_interval": 0.5}


def test_pixel_counts_end_to_end_with_ignore_masks_and_integer_masks() -> None:
    maps = np.array([[[0.9, 0.6, 0.2, 0.1]], [[0.8, 0.3, 0.7, 0.0]]], np.float32)
    masks = np.array([[[1, 0, 1, 0]], [[1, 1, 0, 0]]], np.uint8)
    ignore = np.array([[[False, False, False, True]], [[False, False, False, False]]])
    metric = PixelCounts(0.5)
    metric.update(maps, masks, ignore)
    state = metric.state_arrays()
    # fg: 0.9, 0.2, 0.8, 0.3 -> bins [0, 0.5): 2, [0.5, 1): 2; bg: 0.6, 0.7, 0.0 (0.1 ignored)
    np.testing.assert_array_equal(state["fg_hist"], [2, 2, 0, 0])
    np.testing.assert_array_equal(state["bg_hist"], [1, 2, 0, 0])
    assert state["num_images"] == 2
    # from the top: tau 0.5 -> tp 2, fp 2 (P 0.5, R 0.5); tau 0 -> tp 4, fp 3 (P 4/7, R 1)
    # PxAP = 0.5 * 0.5 + 4/7 * 0.5; IoU: 2/6 at 0.5, 4/7 at 0
    result = metric.compute()
    assert result == {"PxAP": pytest.approx((0.25 + 2 / 7) * 100), "peak_IoU": pytest.approx(400 / 7),
                      "peak_IoU_threshold": 0.0, "num_images": 2, "cam_curve_interval": 0.5}
    half = PixelCounts(0.5)
    half.update(maps.astype(np.float16), masks, ignore)
    np.testing.assert_array_equal(half.state["fg_hist"], state["fg_hist"])


def test_pixel_counts_names_the_bad_map() -> None:
    metric = PixelCounts(0.5)
    bad = np.array([[[np.nan, 0.5]]], np.float32)
    with pytest.raises(WSOLError, match=re.escape("img_7")):
        metric.update(bad, np.array([[[1, 0]]]), names=["img_7"])
    with pytest.raises(WSOLError, match=re.escape("score map 0 of the batch")):
        metric.update(bad, np.array([[[1, 0]]]))


def test_pixel_counts_default_interval() -> None:
    metric = PixelCounts()
    assert metric.cam_curve_interval == 0.001 and len(metric.thresholds) == 1000
    assert metric.state["fg_hist"].shape == (1002,)  # 1003 edges


def test_box_counts_defaults_and_names() -> None:
    metric = BoxCounts()
    assert metric.cam_curve_interval == 0.001 and len(metric.thresholds) == 1000
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0:2, 0:2] = 1.0
    metric.update(maps, [np.array([[0, 0, 2, 2]])])
    np.testing.assert_array_equal(metric.curves()["largest"][[0, 999]], [100.0, 100.0])
    result = metric.compute()
    assert result["cam_curve_interval"] == 0.001 and result["MaxBoxAcc"] == 100.0 and result["BoxAcc@0.2"] == 100.0
    with pytest.raises(WSOLError, match="^" + re.escape("img_3: no GT box")):
        metric.update(maps, [np.zeros((0, 4))], names=["img_3"])
    with pytest.raises(WSOLError, match="^" + re.escape("score map 0 of the batch: no GT box")):
        metric.update(maps, [np.zeros((0, 4))])


def test_topk_hits_of_arrays_and_of_tensors_that_need_grad() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    top1, top5 = topk_hits(logits, [1, 2], k=2)
    np.testing.assert_array_equal(top1, [True, False])
    np.testing.assert_array_equal(top5, [True, True])
    top1, top5 = topk_hits(torch.tensor(logits, requires_grad=True), torch.tensor([1, 1]), k=2)
    np.testing.assert_array_equal(top1, [True, False])
    np.testing.assert_array_equal(top5, [True, False])


def test_empty_map_hits_exactly_at_the_criterion() -> None:
    # no foreground: the box (0, 0, 0, 0) against GT (0, 0, 1, 0): IoU 1 / 2, exactly 0.5
    largest, every = threshold_hits(np.zeros((4, 4), np.float32), np.array([[0, 0, 1, 0]]), np.array([0.0, 0.5]),
                                    np.array([0.3, 0.9]))
    np.testing.assert_array_equal(largest, [True, True])
    np.testing.assert_array_equal(every, [[True, True], [False, False]])


def two_components() -> np.ndarray:
    """6 x 10: a pixel at (0, 0) (box (0, 0, 1, 1)) and a 2 x 3 block at rows 4-5, columns 6-8 (box
    (6, 4, 9, 6) with the reference's one-pixel quirk, clipped to H - 1 = 5: (6, 4, 9, 5)), the largest."""
    m = np.zeros((6, 10), np.float32)
    m[0, 0] = 1.0
    m[4:6, 6:9] = 1.0
    return m


def test_largest_contour_is_traced_in_place_when_the_components_disagree() -> None:
    largest, every = threshold_hits(two_components(), np.array([[6, 4, 9, 5]]), np.array([0.5]), np.array([0.5]),
                                    largest_criterion=0.9)
    assert largest.tolist() == [True] and every.tolist() == [[True]]
    # one column less (8 instead of 9) would be 6 / 8 = 0.75; rows to 6 (no clipping) would be 8 / 12
    largest, _ = threshold_hits(two_components(), np.array([[6.7, 4.2, 9.1, 5.4]]), np.array([0.5]), np.array([0.5]),
                                largest_criterion=0.9)
    assert largest.tolist() == [True]


def test_largest_contour_hits_at_exactly_the_criterion() -> None:
    # box (6, 4, 9, 5): 8 pixels; GT (6, 4, 7, 5): 4 pixels inside it -> IoU 0.5
    largest, every = threshold_hits(two_components(), np.array([[6, 4, 7, 5]]), np.array([0.5]), np.array([0.6]))
    assert largest.tolist() == [True] and every.tolist() == [[False]]
