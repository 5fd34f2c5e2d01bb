"""BoxAccuracy / PixelAP / score-map loading pinned on hand-computed values: the tests that kill mutmut's
surviving mutants (issue 12; see benchmarks/results/mutation.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsol.errors import WSOLError
from wsol.metrics import BoxAccuracy, PixelAP
from wsol.metrics.scoremaps import load_score_map


def three_images() -> tuple[np.ndarray, list[np.ndarray]]:
    """Three 10 x 10 maps, each a 4 x 4 block at 1.0 (box (0, 0, 4, 4) with the reference's one-pixel
    quirk) plus a plateau at 0.3 (uint8 76: foreground for tau <= 0.2, not from tau = 0.3 on).

    A: plateau to the right -> box (0, 0, 9, 4) for tau <= 0.2; GT (0, 0, 9, 4): IoU 1, then 25 / 50 = 0.5.
    B, C: plateau below -> box (0, 0, 4, 9) for tau <= 0.2; GT (0, 0, 4, 4): IoU 0.5, then 1.
    """
    a = np.zeros((10, 10), np.float32)
    a[0:4, 0:4] = 1.0
    a[0:4, 4:9] = 0.3
    b = np.zeros((10, 10), np.float32)
    b[0:4, 0:4] = 1.0
    b[4:9, 0:4] = 0.3
    return np.stack([a, b, b]), [np.array([[0, 0, 9, 4]]), np.array([[0, 0, 4, 4]]), np.array([[0, 0, 4, 4]])]


def test_box_accuracy_every_number_by_hand():
    maps, boxes = three_images()
    # labels: A top-1, B at rank 3 (top-5), C ranks last of 6 (neither)
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5], [9.0, 8, 7, 6, 5, 4], [9.0, 8, 7, 6, 5, 4]])
    labels = torch.tensor([0, 2, 5])
    metric = BoxAccuracy(cam_curve_interval=0.1)
    metric.update(maps, boxes, logits, labels)
    r = metric.compute()
    third = 100.0 / 3
    # IoU 30 and 50: every image at every tau; IoU 70: A for tau <= 0.2, B and C from 0.3 on
    np.testing.assert_array_equal(metric.curves()["largest"], np.full(10, 100.0))
    np.testing.assert_allclose(metric.curves()["all"][2], [third] * 3 + [2 * third] * 7, rtol=1e-12)
    assert r["num_images"] == 3 and r["cam_curve_interval"] == 0.1 and r["iou_thresholds"] == [30, 50, 70]
    assert r["MaxBoxAcc"] == 100.0 and r["MaxBoxAcc_threshold"] == 0.0 and r["BoxAcc@0.2"] == 100.0
    assert r["per_iou"][30] == {"max_box_acc": 100.0, "best_threshold": 0.0}
    assert r["per_iou"][50] == {"max_box_acc": 100.0, "best_threshold": 0.0}
    assert r["per_iou"][70]["max_box_acc"] == pytest.approx(2 * third, rel=1e-12)
    assert r["per_iou"][70]["best_threshold"] == pytest.approx(0.3, abs=1e-12)
    assert r["MaxBoxAccV2"] == pytest.approx((100 + 100 + 2 * third) / 3, rel=1e-12)
    assert r["top1_cls"] == pytest.approx(third) and r["top5_cls"] == pytest.approx(2 * third)
    assert r["top1_loc"] == pytest.approx(third) and r["top5_loc"] == pytest.approx(2 * third)
    assert r["top1_loc_fixed"] == pytest.approx(third)
    # v2: top-1 = A only (every criterion once); top-5 = A and B (IoU 70: never both at one tau)
    assert r["top1_loc_v2"] == pytest.approx(third)
    assert r["top5_loc_v2"] == pytest.approx((2 * third + 2 * third + third) / 3)


def test_box_accuracy_threaded_and_serial_updates_agree_by_hand():
    maps, boxes = three_images()
    for threads in (1, 3):
        metric = BoxAccuracy(cam_curve_interval=0.1, num_threads=threads)
        metric.update(torch.from_numpy(maps), boxes)
        np.testing.assert_allclose(metric.curves()["all"][2], [100 / 3] * 3 + [200 / 3] * 7, rtol=1e-12)


def test_box_accuracy_takes_maps_that_require_grad():
    """A model's output (a tensor that requires grad) is detached, not refused by numpy; the counts are the
    same as from the array."""
    maps, boxes = three_images()
    metric, plain = BoxAccuracy(cam_curve_interval=0.1), BoxAccuracy(cam_curve_interval=0.1)
    metric.update(torch.from_numpy(maps).requires_grad_(), boxes)
    plain.update(maps, boxes)
    np.testing.assert_allclose(metric.curves()["all"][2], [100 / 3] * 3 + [200 / 3] * 7, rtol=1e-12)
    assert metric.compute() == plain.compute()


def test_box_accuracy_other_iou_criteria():
    """IoU criteria (40, 100): the 0.5 boxes miss both, the exact ones reach 100 %."""
    maps, boxes = three_images()
    metric = BoxAccuracy(cam_curve_interval=0.1, iou_thresholds=[40, 100])
    metric.update(maps, boxes)
    r = metric.compute()
    assert r["iou_thresholds"] == [40, 100] and sorted(r["per_iou"]) == [40, 100]
    assert r["per_iou"][40] == {"max_box_acc": 100.0, "best_threshold": 0.0}
    assert r["per_iou"][100]["max_box_acc"] == pytest.approx(200 / 3)
    assert r["MaxBoxAccV2"] == pytest.approx((100 + 200 / 3) / 2)
    assert "top1_loc" not in r and "top1_cls" not in r


@pytest.mark.parametrize("bad", [(), (0,), (101,), (50, -10)])
def test_iou_thresholds_must_be_percentages(bad):
    with pytest.raises(WSOLError, match=r"^IoU thresholds must be percentages in \(0, 100\], got \["):
        BoxAccuracy(iou_thresholds=bad)


def test_update_errors_are_one_line_and_exact():
    with pytest.raises(WSOLError, match="^no score maps were evaluated$"):
        BoxAccuracy().compute()
    maps, boxes = three_images()
    with pytest.raises(WSOLError, match=r"^score maps must be a batch \(B, H, W\), got shape \(10, 10\)$"):
        BoxAccuracy().update(maps[0], boxes[:1])
    with pytest.raises(WSOLError, match="^got 3 score maps but 2 sets of GT boxes$"):
        BoxAccuracy().update(maps, boxes[:2])
    with pytest.raises(WSOLError, match="^score map 1 of the batch: no GT box$"):
        BoxAccuracy().update(maps, [boxes[0], np.zeros((0, 4)), boxes[2]])
    with pytest.raises(WSOLError, match="^Top-1/Top-5 Loc need the GT labels along with the logits$"):
        BoxAccuracy().update(maps, boxes, logits=torch.zeros(3, 4))
    metric = BoxAccuracy(cam_curve_interval=0.1)
    metric.update(maps[:1], boxes[:1], logits=torch.zeros(1, 4), labels=[0])
    metric.update(maps[1:], boxes[1:])
    with pytest.raises(WSOLError, match="^logits were given for 1 of 3 images: give them for all or none$"):
        metric.compute()


# ---------------------------------------------------------------------------------------------- PixelAP


def test_pixel_ap_result_fields_by_hand():
    """Scores fg 0.75, 0.25; bg 0.5, 0.0 at interval 0.5 (edges 0, .5, 1, 2, 3): fg bins [1, 1, 0, 0],
    bg bins [1, 1, 0, 0]. From the top: (tp, fp) = (0, 0), (0, 0), (1, 1), (2, 2)."""
    metric = PixelAP(cam_curve_interval=0.5)
    metric.update(np.array([[[0.75, 0.5], [0.25, 0.0]]]), np.array([[[True, False], [True, False]]]))
    curves = metric.curves()
    np.testing.assert_array_equal(curves["threshold"], [2.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(curves["tp"], [0, 0, 1, 2])
    np.testing.assert_array_equal(curves["fp"], [0, 0, 1, 2])
    np.testing.assert_array_equal(curves["recall"], [0, 0, 0.5, 1])
    np.testing.assert_array_equal(curves["precision"][2:], [0.5, 0.5])
    np.testing.assert_array_equal(curves["iou"][2:], [1 / 3, 0.5])
    r = metric.compute()
    # PxAP = 0.5 * 0.5 + 0.5 * 0.5 (right Riemann sum over the counted points)
    assert r == {"PxAP": 50.0, "peak_IoU": 50.0, "peak_IoU_threshold": 0.0, "num_images": 1,
                 "cam_curve_interval": 0.5}


def test_pixel_ap_half_precision_maps_count_as_float32():
    maps = np.array([[[0.95, 0.85], [0.65, 0.35]]], np.float16)
    masks = np.array([[[True, False], [True, False]]])
    half, single = PixelAP(0.1), PixelAP(0.1)
    half.update(torch.from_numpy(maps), torch.from_numpy(masks))
    single.update(maps.astype(np.float32), masks)
    np.testing.assert_array_equal(half.fg_hist.numpy(), single.fg_hist.numpy())
    np.testing.assert_array_equal(half.bg_hist.numpy(), [0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    assert half.compute()["PxAP"] == pytest.approx(100 * (0.5 + 1 / 3))


def test_pixel_ap_errors_are_one_line_and_exact():
    maps = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(WSOLError, match=r"^score maps \(1, 2, 2\), GT masks \(1, 2, 3\) and ignore masks \(0, 0, 0\) "
                                        r"must all be \(B, H, W\)$"):
        PixelAP().update(maps, np.zeros((1, 2, 3), bool))
    with pytest.raises(WSOLError, match=r"ignore masks \(1, 2, 1\) must all be"):
        PixelAP().update(maps, np.zeros((1, 2, 2), bool), np.zeros((1, 2, 1), bool))
    with pytest.raises(WSOLError, match=r"^score maps \(2, 2\), GT masks \(2, 2\)"):
        PixelAP().update(maps[0], np.zeros((2, 2), bool))
    with pytest.raises(WSOLError, match="^score maps must be float, got int64$"):
        PixelAP().update(np.zeros((1, 2, 2), np.int64), np.zeros((1, 2, 2), bool))
    with pytest.raises(WSOLError, match=r"^img/a.png: values must lie in \[0, 1\]"):
        PixelAP().update(np.full((1, 2, 2), 1.5), np.ones((1, 2, 2), bool), names=["img/a.png"])
    with pytest.raises(WSOLError, match=r"^score map 1 of the batch: contains NaN$"):
        PixelAP().update(np.stack([np.zeros((2, 2)), np.full((2, 2), np.nan)]), np.ones((2, 2, 2), bool))
    empty = PixelAP()
    empty.update(maps, np.zeros((1, 2, 2), bool))
    with pytest.raises(WSOLError, match="^no GT foreground pixel in the evaluated masks: PxAP is undefined$"):
        empty.compute()


def test_pixel_ap_takes_tensors_for_every_input():
    """Maps that require grad (a model's output), masks and ignore masks as tensors: the ignored 0.85
    background pixel makes the ranking perfect (PxAP 100), as with arrays."""
    maps = torch.tensor([[[0.95, 0.85], [0.65, 0.35]]], requires_grad=True)
    masks = torch.tensor([[[True, False], [True, False]]])
    ignore = torch.tensor([[[False, True], [False, False]]])
    metric = PixelAP(cam_curve_interval=0.1)
    metric.update(maps, masks, ignore)
    assert metric.compute()["PxAP"] == pytest.approx(100.0)
    assert int(metric.bg_hist.sum()) == 1 and int(metric.fg_hist.sum()) == 2


# ---------------------------------------------------------------------------------------------- scoremaps.py


def _write_npy(path, array, version):
    with open(path, "wb") as file:
        np.lib.format.write_array(file, array, version=version)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_load_score_map_reads_npy_format_1_and_2(tmp_path, version):
    score_map = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    _write_npy(tmp_path / "m.npy", score_map, version)
    out = load_score_map(tmp_path / "m.npy", size=4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, score_map)


def test_load_score_map_refuses_npy_format_3(tmp_path):
    _write_npy(tmp_path / "m.npy", np.zeros((4, 4), np.float32), (3, 0))
    with pytest.raises(WSOLError, match=r"m.npy: not a readable .npy score map \(unsupported .npy format version "
                                        r"3.0\)$"):
        load_score_map(tmp_path / "m.npy", size=4)


@pytest.mark.parametrize(("dtype", "expected"), [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32), (np.int16, np.float32),
    (np.uint8, np.float32), (np.bool_, np.float32), (np.longdouble, np.float64),
])
def test_load_score_map_dtypes(tmp_path, dtype, expected):
    score_map = (np.arange(16).reshape(4, 4) % 2).astype(dtype)
    np.save(tmp_path / "m.npy", score_map)
    out = load_score_map(tmp_path / "m.npy", size=4)
    assert out.dtype == expected
    np.testing.assert_array_equal(out, np.arange(16).reshape(4, 4) % 2)


def test_load_score_map_errors_name_the_file(tmp_path):
    with pytest.raises(WSOLError, match=r"^.*nothere.npy: score map not found$"):
        load_score_map(tmp_path / "nothere.npy")
    np.save(tmp_path / "m.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(WSOLError, match=r"m.npy: score map has shape \(4, 5\), expected \(4, 4\)$"):
        load_score_map(tmp_path / "m.npy", size=4)
    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(WSOLError, match=r"t.npy: not a readable .npy score map \("):
        load_score_map(tmp_path / "t.npy", size=4)
