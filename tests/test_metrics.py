"""The evaluation engine: golden values checkable by hand, and exact equality with the per-threshold oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol_oracle import oracle_box_accuracy, oracle_boxes, oracle_pxap
from scoremap_cases import benchmark_set, corner_case_maps, random_gt_boxes, smooth_map
from wsol.errors import WSOLError
from wsol.maps import (
    box_iou,
    boxes_from_map,
    boxes_from_maps,
    contour_boxes,
    mask_from_map,
    masks_from_maps,
    minmax_normalize,
    to_score_maps,
)
from wsol.metrics import BoxAccuracy, PixelAP, threshold_hits, threshold_list
from wsol.metrics._kernels import pixel_histograms


# ---------------------------------------------------------------- golden values
def test_box_iou_inclusive_ends():
    # 10 x 10 boxes overlapping on 5 x 5 pixels: 25 / (100 + 100 - 25)
    assert box_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 5, 14, 14]]))[0, 0] == pytest.approx(25 / 175)
    assert box_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))[0, 0] == 1.0  # one pixel each
    assert box_iou(np.array([[0, 0, 3, 3]]), np.array([[4, 4, 5, 5]]))[0, 0] == 0.0


def test_box_of_a_block_is_one_pixel_wider_like_the_reference():
    score_map = np.zeros((10, 10), np.float32)
    score_map[2:5, 3:7] = 1.0  # rows 2..4, columns 3..6
    np.testing.assert_array_equal(boxes_from_map(score_map, 0.5), [[3, 2, 7, 5]])
    score_map[:, 8:] = 0.4  # a block touching the right edge: x1 clipped to W - 1
    np.testing.assert_array_equal(boxes_from_map(score_map, 0.3, components="all")[:, 2].max(), 9)


def test_empty_map_gives_the_zero_box():
    np.testing.assert_array_equal(boxes_from_map(np.zeros((8, 8), np.float32), 0.2), [[0, 0, 0, 0]])


def test_hole_gives_an_inner_contour_box():
    foreground = np.zeros((10, 10), np.uint8)
    foreground[1:8, 1:8] = 1  # a 7 x 7 square, outer box (1, 1, 8, 8)
    foreground[2:4, 2:4] = 0  # a 2 x 2 hole: its contour runs through the pixels around it, (1..4, 1..4)
    boxes = sorted(map(tuple, contour_boxes(foreground, "all")))
    assert boxes == [(1, 1, 5, 5), (1, 1, 8, 8)]


def test_threshold_is_strict_and_relative_to_the_uint8_max():
    score_map = np.array([[0.5, 0.25, 0.1]], np.float32)  # uint8: 127, 63, 25; int(0.5 * 127) = 63
    # only 127 > 63: one pixel, whose box is one pixel wider (x1 = 0 + 1) and clipped in y (H - 1 = 0)
    np.testing.assert_array_equal(boxes_from_map(score_map, 0.5), [[0, 0, 1, 0]])
    np.testing.assert_array_equal(boxes_from_map(score_map, 0.19), [[0, 0, 2, 0]])  # 25 > int(0.19 * 127) = 24


def test_percentile_reference_pas():
    score_map = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    # the 90th percentile of the uint8 map is far below its max, so PaS keeps more pixels
    classic = boxes_from_map(score_map, 0.9, percentile=100)
    pas = boxes_from_map(score_map, 0.9, percentile=90)
    assert classic[0, 1] > pas[0, 1]


def test_box_accuracy_golden_two_images():
    first = np.zeros((10, 10), np.float32)
    first[2:5, 3:7] = 1.0  # its box is exactly the GT box below, at every threshold
    second = np.zeros((10, 10), np.float32)  # all-zero map: box (0, 0, 0, 0), misses its GT
    metric = BoxAccuracy(cam_curve_interval=0.01)
    metric.update(np.stack([first, second]), [np.array([[3, 2, 7, 5]]), np.array([[5, 5, 9, 9]])])
    result = metric.compute()
    assert result["MaxBoxAcc"] == 50.0 and result["MaxBoxAccV2"] == 50.0
    assert result["num_images"] == 2 and result["BoxAcc@0.2"] == 50.0
    np.testing.assert_array_equal(metric.curves()["largest"], 50.0)


def test_top1_top5_loc():
    first = np.zeros((10, 10), np.float32)
    first[2:5, 3:7] = 1.0
    maps = np.stack([first, first])
    boxes = [np.array([[3, 2, 7, 5]])] * 2
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
    labels = torch.tensor([1, 1])  # image 0: top-1 correct; image 1: class 1 ranks last, not even top-5
    metric = BoxAccuracy(cam_curve_interval=0.1)
    metric.update(maps, boxes, logits=logits, labels=labels)
    result = metric.compute()
    assert result["MaxBoxAcc"] == 100.0
    assert result["top1_cls"] == 50.0 and result["top5_cls"] == 50.0
    assert result["top1_loc"] == 50.0 and result["top5_loc"] == 50.0


def test_pixel_ap_golden():
    # foreground scores 0.95, 0.65; background 0.85, 0.35. Ranked: fg, bg, fg, bg.
    # PR points: (P=1, R=.5), (P=2/3, R=1) -> AP = 1 * .5 + 2/3 * .5 = 83.33 %; peak IoU = 2/3 at 0.6.
    score_maps = np.array([[[0.95, 0.85], [0.65, 0.35]]], np.float32)
    masks = np.array([[[True, False], [True, False]]])
    metric = PixelAP(cam_curve_interval=0.1)
    metric.update(score_maps, masks)
    result = metric.compute()
    assert result["PxAP"] == pytest.approx(100 * (0.5 + 1 / 3))
    assert result["peak_IoU"] == pytest.approx(100 * 2 / 3)
    assert result["peak_IoU_threshold"] == pytest.approx(0.6)
    ignored = PixelAP(cam_curve_interval=0.1)  # ignoring the 0.85 background pixel makes the ranking perfect
    ignored.update(score_maps, masks, ignore_masks=np.array([[[False, True], [False, False]]]))
    assert ignored.compute()["PxAP"] == pytest.approx(100.0)


def test_minmax_normalize_nan_and_constant_become_zero():
    maps = np.stack([np.array([[1.0, 3.0], [2.0, 5.0]]), np.full((2, 2), 7.0), np.array([[np.nan, 1], [2, 3]])])
    out = minmax_normalize(maps.astype(np.float32))
    np.testing.assert_allclose(out[0], [[0, 0.5], [0.25, 1]])
    assert not out[1].any() and not out[2].any()
    torch_out = minmax_normalize(torch.from_numpy(maps.astype(np.float32)))
    np.testing.assert_array_equal(torch_out.numpy(), out)


def test_to_score_maps_is_224_and_normalised():
    raw = torch.randn(3, 7, 7)
    out = to_score_maps(raw)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(3, -1).min(1), 0)
    np.testing.assert_allclose(out.reshape(3, -1).max(1), 1)


# ---------------------------------------------------------------- equality with the oracle
@pytest.mark.parametrize("interval", [0.01, pytest.param(0.001, marks=pytest.mark.slow)])
def test_box_accuracy_equals_the_oracle(interval):
    num = 40 if interval == 0.01 else 14
    maps, boxes = benchmark_set(num, seed=3)
    metric = BoxAccuracy(cam_curve_interval=interval)
    metric.update(np.stack(maps), boxes)
    curves = metric.curves()
    largest = oracle_box_accuracy(maps, boxes, interval, multi_contour=False)
    every = oracle_box_accuracy(maps, boxes, interval, multi_contour=True)
    np.testing.assert_array_equal(curves["largest"], largest[50])
    for row, iou in enumerate((30, 50, 70)):
        np.testing.assert_array_equal(curves["all"][row], every[iou])
    result = metric.compute()
    assert result["MaxBoxAcc"] == largest[50].max()
    assert result["MaxBoxAccV2"] == np.mean([every[i].max() for i in (30, 50, 70)])


def test_every_corner_case_map_matches_the_oracle_per_threshold():
    rng = np.random.default_rng(7)
    thresholds = threshold_list(0.01)
    criteria = np.array([10, 30, 50, 70, 90]) / 100
    for score_map in corner_case_maps(rng):
        gt = random_gt_boxes(rng, max_boxes=4)
        for largest_criterion in (0.3, 0.5):
            largest, every = threshold_hits(score_map, gt, thresholds, criteria, largest_criterion)
            best = np.array([box_iou(b, gt).max() for b in oracle_boxes(score_map, thresholds, False)])
            np.testing.assert_array_equal(largest, best >= largest_criterion)
        best = np.array([box_iou(b, gt).max() for b in oracle_boxes(score_map, thresholds, True)])
        np.testing.assert_array_equal(every, best[None, :] >= criteria[:, None])


def test_gt_box_hugging_the_map_makes_every_level_count():
    """GT boxes equal to each threshold's boxes: every level is decided, also those with several blobs."""
    rng = np.random.default_rng(2)
    thresholds = threshold_list(0.05)
    for score_map in [smooth_map(rng, grid=5) for _ in range(4)] + corner_case_maps(rng)[2:6]:
        per_threshold = oracle_boxes(score_map, thresholds, multi_contour=True)
        gt = per_threshold[len(thresholds) // 2]
        criteria = np.array([0.3, 0.5, 0.7, 0.99])
        for largest_criterion in criteria:
            largest, every = threshold_hits(score_map, gt, thresholds, criteria, largest_criterion)
            best = np.array([box_iou(b, gt).max() for b in oracle_boxes(score_map, thresholds, False)])
            np.testing.assert_array_equal(largest, best >= largest_criterion)
        best = np.array([box_iou(b, gt).max() for b in oracle_boxes(score_map, thresholds, True)])
        np.testing.assert_array_equal(every, best[None, :] >= criteria[:, None])


def test_pixel_ap_equals_the_oracle_with_ignore_regions():
    rng = np.random.default_rng(11)
    maps = np.stack([smooth_map(rng) for _ in range(6)] + [np.zeros((224, 224), np.float32)])
    masks = rng.random(maps.shape) < 0.02
    masks = np.stack([np.roll(m, 5, 0) | (s > 0.6) for m, s in zip(masks, maps)])
    ignore = np.zeros_like(masks)
    ignore[:, 50:120, 60:150] = True
    for interval in (0.01, 0.001):
        metric = PixelAP(cam_curve_interval=interval)
        metric.update(maps, masks, ignore)
        assert metric.compute()["PxAP"] == oracle_pxap(maps, masks, ignore, interval)


# ---------------------------------------------------------------- streaming and merging
def test_one_batch_many_batches_and_merged_instances_agree():
    maps, boxes = benchmark_set(12, seed=5)
    maps = np.stack(maps)
    logits = torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 10
    whole = BoxAccuracy(cam_curve_interval=0.01)
    whole.update(maps, boxes, logits, labels)
    pieces = BoxAccuracy(cam_curve_interval=0.01, num_threads=1)
    for start in range(0, 12, 5):
        pieces.update(maps[start:start + 5], boxes[start:start + 5], logits[start:start + 5], labels[start:start + 5])
    first, second = BoxAccuracy(cam_curve_interval=0.01), BoxAccuracy(cam_curve_interval=0.01)
    first.update(maps[:7], boxes[:7], logits[:7], labels[:7])
    second.update(maps[7:], boxes[7:], logits[7:], labels[7:])
    first.merge_state(second)
    assert whole.compute() == pieces.compute() == first.compute()

    masks = maps > 0.5
    one, other, both = PixelAP(0.01), PixelAP(0.01), PixelAP(0.01)
    both.update(maps, masks)
    one.update(maps[:4], masks[:4])
    other.update(maps[4:], masks[4:])
    one.merge_state(other)
    assert one.compute() == both.compute()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.full((1, 4, 4), np.nan, np.float32), "NaN"), (np.full((1, 4, 4), 2.0, np.float32), r"\[0, 1\]"),
     (np.zeros((1, 4, 4), np.int64), "float")],
)
def test_bad_score_maps_are_named(bad, message):
    with pytest.raises(WSOLError, match=message):
        BoxAccuracy().update(bad, [np.array([[0, 0, 1, 1]])], names=["cub/bird.jpg"])
    with pytest.raises(WSOLError, match="cub/bird.jpg"):
        BoxAccuracy().update(bad, [np.array([[0, 0, 1, 1]])], names=["cub/bird.jpg"])


def test_compute_without_data_and_bad_interval_are_errors():
    with pytest.raises(WSOLError, match="no score maps"):
        BoxAccuracy().compute()
    with pytest.raises(WSOLError, match="cam_curve_interval"):
        BoxAccuracy(cam_curve_interval=0)


def test_threshold_interval_has_a_lower_bound():
    assert len(threshold_list(1e-4)) == 10_000
    # 5e-5 is cheap to build without the bound; 1e-9 (10^9 thresholds) ran out of memory
    with pytest.raises(WSOLError, match=r"^cam_curve_interval must lie in \[0.0001, 1\) .*got 5e-05$"):
        threshold_list(5e-5)
    with pytest.raises(WSOLError, match="got 1e-09"):
        BoxAccuracy(cam_curve_interval=1e-9)
    with pytest.raises(WSOLError, match="got 1e-09"):
        PixelAP(cam_curve_interval=1e-9)


def fixed_threshold_case() -> tuple[np.ndarray, list[np.ndarray]]:
    """A map whose box hits its GT at tau = 0.21 but not at 0.2 or 0.0."""
    score_map = np.zeros((20, 20), np.float32)
    score_map[:, :10] = 0.205  # uint8 52: above int(0.2 * 255) = 51, not above int(0.21 * 255) = 53
    score_map[2:5, 3:7] = 1.0  # its box is the GT box
    return score_map[None], [np.array([[3, 2, 7, 5]])]


@pytest.mark.parametrize(("interval", "expected"), [(0.01, 0.0), (0.1, 0.0), (0.001, 0.0), (0.03, None), (0.7, None)])
def test_box_acc_at_0_2_only_when_0_2_is_a_threshold(interval, expected):
    maps, boxes = fixed_threshold_case()
    metric = BoxAccuracy(cam_curve_interval=interval)
    metric.update(maps, boxes, logits=torch.tensor([[0.0, 1.0]]), labels=torch.tensor([1]))
    result = metric.compute()
    assert result.get("BoxAcc@0.2") == expected and result.get("top1_loc_fixed") == expected
    if interval == 0.03:  # the map does hit at 0.21, the grid point nearest 0.2 (once reported as BoxAcc@0.2)
        assert metric.curves()["largest"][7] == 100.0 and result["MaxBoxAcc"] == 100.0


@pytest.mark.parametrize(("bad", "shape"),
                         [(np.array([3, 2, 7]), r"\(3,\)"), (np.array([[3, 2], [7, 5]]), r"\(2, 2\)")])
def test_gt_boxes_of_the_wrong_shape_name_the_image(bad, shape):
    maps, boxes = fixed_threshold_case()
    with pytest.raises(WSOLError, match=rf"^cub/bird.jpg: GT boxes must be an \(n, 4\) array .*got shape {shape}$"):
        BoxAccuracy(cam_curve_interval=0.1).update(np.concatenate([maps, maps]), [boxes[0], bad],
                                                   names=["cub/ok.jpg", "cub/bird.jpg"])


@pytest.mark.parametrize("interval", [0.001, 0.01, 0.003, 0.1])
def test_pixel_bins_equal_numpy_histogram_at_and_around_every_edge(interval):
    metric = PixelAP(interval)
    inner = metric.edges[:-2]
    values = np.concatenate([np.random.default_rng(0).random(10000), inner, np.nextafter(inner, -1).clip(0),
                             np.nextafter(inner, 2).clip(0, 1), [0.0, 1.0]])
    counts, problems = pixel_histograms(values.reshape(1, 1, -1), np.ones((1, 1, len(values)), bool),
                                        np.zeros((0, 0, 0), bool), metric.edges, interval)
    np.testing.assert_array_equal(counts[0], np.histogram(values, bins=metric.edges)[0])
    assert not counts[1].any() and not problems.any()


@pytest.mark.parametrize(("threshold", "reference"), [(0.2, 100), (0.5, 100), (0.35, 90), (0.9, 50)])
def test_batched_masks_and_boxes_equal_the_per_map_ones(threshold, reference):
    maps, _ = benchmark_set(12, seed=9, size=64)
    maps = np.stack(maps)
    masks = masks_from_maps(maps, threshold, reference)
    boxes = boxes_from_maps(maps, threshold, reference, "all")
    for i, score_map in enumerate(maps):
        np.testing.assert_array_equal(masks[i], mask_from_map(score_map, threshold, reference))
        np.testing.assert_array_equal(boxes[i], boxes_from_map(score_map, threshold, reference, "all"))
