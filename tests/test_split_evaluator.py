"""The split evaluator (one WSOL split's metrics from ids, maps, logits, labels) and classification accuracy:
hand-checkable values, and equality of its torch-free and torchmetrics forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.data.metadata import Metadata
from wsol.errors import WSOLError
from wsol.metrics import BoxCounts, PixelCounts
from wsol.metrics.classification import ClassAccuracy
from wsol.metrics.counts import topk_hits
from wsol.metrics.split import SplitEvaluator

SIZE = 224


def write_split(root: Path, masks: bool) -> Metadata:
    """Three 448 x 224 images of classes 0, 1, 2; GT box (0, 0, 223, 111) in original pixels = (0, 0, 111, 111)
    at 224 (x halves, y stays); with ``masks``, a mask PNG whose left half is foreground and, for image 0, an
    ignore mask over its bottom rows."""
    split = root / "split"
    split.mkdir(parents=True)
    ids = [f"c{k}/img{k}.png" for k in range(3)]
    (split / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (split / "class_labels.txt").write_text("".join(f"{i},{k}\n" for k, i in enumerate(ids)))
    (split / "image_sizes.txt").write_text("".join(f"{i},448,224\n" for i in ids))
    if masks:
        mask_dir = root / "masks"
        mask_dir.mkdir()
        half = np.zeros((224, 448), np.uint8)
        half[:, :224] = 255
        Image.fromarray(half).save(mask_dir / "half.png")
        bottom = np.zeros((224, 448), np.uint8)
        bottom[200:, :] = 255
        Image.fromarray(bottom).save(mask_dir / "bottom.png")
        lines = [f"{ids[0]},half.png,bottom.png\n"] + [f"{i},half.png,\n" for i in ids[1:]]
        (split / "localization.txt").write_text("".join(lines))
        return Metadata.load(split, mask_dir)
    (split / "localization.txt").write_text("".join(f"{i},0,0,223,111\n" for i in ids))
    return Metadata.load(split)


def square_maps(n: int = 3) -> np.ndarray:
    maps = np.zeros((n, SIZE, SIZE), np.float32)
    maps[:, :112, :112] = 1.0  # exactly the GT box at 224: IoU 1 at every threshold below 1
    maps[1, 150:, 150:] = 0.5  # image 1: a second blob, which only the "all contours" boxes see
    return maps


LOGITS = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0.0, 1, 2, 3, 4, 5], [0.0, 0, 0, 0, 0, 9]])  # ranks 1, 5, 6


def test_boxes_every_number_and_the_same_as_box_counts(tmp_path):
    meta = write_split(tmp_path, masks=False)
    evaluator = SplitEvaluator(meta, cam_curve_interval=0.1)
    assert set(evaluator.metrics) == {"boxes"} and evaluator.masks is None
    np.testing.assert_array_equal(evaluator.gt_boxes[meta.image_ids[0]], [[0, 0, 111, 111]])
    evaluator.update(meta.image_ids[:2], square_maps()[:2], LOGITS[:2], torch.tensor([0, 1]))
    evaluator.update(meta.image_ids[2:], square_maps()[2:], LOGITS[2:], torch.tensor([2]))
    result = evaluator.compute()
    assert list(result) == ["boxes"]
    boxes = result["boxes"]
    assert boxes["MaxBoxAcc"] == 100.0 and boxes["num_images"] == 3
    third = 100.0 / 3
    # top-1: image 0 only; top-5: label 1 ranks 5th in image 1; label 2 of image 2 is tied last: topk's choice
    top1, top5 = topk_hits(LOGITS, torch.tensor([0, 1, 2]))
    assert top1.tolist() == [True, False, False] and top5[:2].tolist() == [True, True]
    assert boxes["top1_cls"] == pytest.approx(third) and boxes["top1_loc"] == pytest.approx(third)
    assert boxes["top5_cls"] == pytest.approx(100.0 * top5.sum() / 3)
    direct = BoxCounts(0.1)
    direct.update(square_maps(), [evaluator.gt_boxes[i] for i in meta.image_ids], LOGITS, [0, 1, 2])
    assert direct.compute() == boxes


def test_synced_and_torch_free_forms_give_the_same_numbers(tmp_path):
    meta = write_split(tmp_path, masks=False)
    results = []
    for synced in (False, True):
        evaluator = SplitEvaluator(meta, cam_curve_interval=0.05, iou_thresholds=(30, 50), synced=synced)
        assert type(evaluator.boxes).__name__ == ("BoxAccuracy" if synced else "BoxCounts")
        assert evaluator.boxes.iou_thresholds == (30, 50) and len(evaluator.boxes.thresholds) == 20
        evaluator.update(meta.image_ids, square_maps(), LOGITS, torch.tensor([0, 1, 2]))
        results.append(evaluator.compute())
        states = {k: m.state_arrays() for k, m in evaluator.metrics.items()}
        results.append({k: {n: v.tolist() for n, v in s.items()} for k, s in states.items()})
    assert results[0] == results[2] and results[1] == results[3]


def test_given_gt_boxes_are_used_as_they_are(tmp_path):
    meta = write_split(tmp_path, masks=False)
    far = {i: np.array([[200, 200, 223, 223]]) for i in meta.image_ids}  # misses the maps' square
    evaluator = SplitEvaluator(meta, cam_curve_interval=0.1, gt_boxes=far)
    assert evaluator.gt_boxes is far
    evaluator.update(meta.image_ids, square_maps())
    assert evaluator.compute()["boxes"]["MaxBoxAcc"] == 0.0


def test_masks_by_hand_and_left_out_when_asked(tmp_path):
    meta = write_split(tmp_path, masks=True)
    mask_root = tmp_path / "masks"
    assert SplitEvaluator(meta).metrics == {}  # no mask_root: nothing to evaluate
    assert SplitEvaluator(meta, mask_root, masks=False).metrics == {}
    evaluator = SplitEvaluator(meta, mask_root, cam_curve_interval=0.1)
    assert set(evaluator.metrics) == {"masks"} and evaluator.gt_boxes == {}
    foreground, ignore = evaluator.load_masks(meta.image_ids)
    assert foreground.shape == ignore.shape == (3, SIZE, SIZE)
    assert foreground[:, :, :112].all() and not foreground[:, :, 112:].any()  # the left half at 224
    assert ignore[0, 200:, 112:].all() and not ignore[0, :200].any() and not ignore[1:].any()
    maps = foreground.astype(np.float32)  # perfect maps: PxAP 100
    evaluator.update(meta.image_ids, maps)
    direct = PixelCounts(0.1)
    direct.update(maps, foreground, ignore)
    assert evaluator.compute() == {"masks": direct.compute()}
    assert evaluator.compute()["masks"]["PxAP"] == pytest.approx(100.0)
    # the ignore region counts neither way: high scores there (image 0's bottom right) cost nothing
    noisy = maps.copy()
    noisy[0, 200:, 112:] = 1.0
    with_ignore = SplitEvaluator(meta, mask_root, cam_curve_interval=0.1)
    with_ignore.update(meta.image_ids, noisy)
    assert with_ignore.compute()["masks"]["PxAP"] == pytest.approx(100.0)
    unignored = PixelCounts(0.1)
    unignored.update(noisy, foreground, None)
    assert unignored.compute()["PxAP"] < 99
    bad = maps.copy()
    bad[2, 5, 5] = np.nan
    with pytest.raises(WSOLError, match="img2.png"):
        SplitEvaluator(meta, mask_root).update(meta.image_ids, bad)
    # masks passed in are used instead of loading them: the inverted foreground makes the maps all wrong
    inverted = SplitEvaluator(meta, mask_root, cam_curve_interval=0.1)
    inverted.update(meta.image_ids, maps, masks=(~foreground, np.zeros_like(ignore)))
    assert inverted.compute()["masks"]["PxAP"] < 60


def test_names_default_to_the_ids_in_errors(tmp_path):
    meta = write_split(tmp_path, masks=False)
    bad = square_maps()
    bad[1, 0, 0] = np.nan
    with pytest.raises(WSOLError, match="img1.png"):
        SplitEvaluator(meta).update(meta.image_ids, bad)
    with pytest.raises(WSOLError, match="maps/x.npy"):
        SplitEvaluator(meta).update(meta.image_ids, bad, names=["maps/w.npy", "maps/x.npy", "maps/y.npy"])


def test_class_accuracy_by_hand_and_as_the_loc_metrics_rank():
    metric = ClassAccuracy()
    metric.update(LOGITS[:2], torch.tensor([0, 1]))  # rank 1 and rank 5
    metric.update(LOGITS[2:], torch.tensor([1]))  # label 1 tied with four others below the top: topk decides
    top1, top5 = topk_hits(LOGITS[2:], torch.tensor([1]))
    result = metric.compute()
    assert result["num_images"] == 3
    assert result["top1_cls"] == pytest.approx(100.0 / 3)
    assert result["top5_cls"] == pytest.approx(100.0 * (2 + int(top5[0])) / 3)
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' note on an empty metric
        assert ClassAccuracy().compute() == {"top1_cls": 0.0, "top5_cls": 0.0, "num_images": 0}
    two = ClassAccuracy()
    two.update(torch.tensor([[1.0, 2.0], [3.0, 1.0]]), torch.tensor([0, 0]))  # K = 2: top-5 is top-2
    assert two.compute() == {"top1_cls": 50.0, "top5_cls": 100.0, "num_images": 2}


def test_evaluate_scoremaps_defaults_are_the_protocols(tmp_path):
    """``evaluate_scoremaps`` without options: threshold step 0.001 and IoU 30/50/70, batches that do not
    change the numbers, progress per batch."""
    from wsol.metrics.scoremaps import evaluate_scoremaps

    meta = write_split(tmp_path, masks=False)
    maps_dir = tmp_path / "maps"
    for image_id, score_map in zip(meta.image_ids, square_maps()):
        (maps_dir / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps_dir / f"{image_id}.npy", score_map)
    seen = []
    result, boxes, masks = evaluate_scoremaps(meta, maps_dir, batch_size=2, on_batch=seen.append)
    assert seen == [2, 1] and masks is None and isinstance(boxes, BoxCounts)
    assert result["cam_curve_interval"] == 0.001 and result["iou_thresholds"] == [30, 50, 70]
    assert len(boxes.thresholds) == 1000
    explicit = SplitEvaluator(meta, cam_curve_interval=0.001)
    explicit.update(meta.image_ids, square_maps())
    assert result == explicit.compute()["boxes"]


def test_class_accuracy_states_are_integer_sums_across_processes():
    """Two processes' (or ranks') metrics merge by summing their integer counters; one image is 0 or 100 %."""
    one = ClassAccuracy()
    one.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert one.compute() == {"top1_cls": 100.0, "top5_cls": 100.0, "num_images": 1}
    first, second = ClassAccuracy(), ClassAccuracy()
    first.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    second.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))
    first.merge_state(second)
    assert {name: (getattr(first, name).dtype, int(getattr(first, name))) for name in ("top1", "top5", "total")} == {
        "top1": (torch.long, 2), "top5": (torch.long, 3), "total": (torch.long, 3)}
    assert first.compute() == {"top1_cls": 200.0 / 3, "top5_cls": 100.0, "num_images": 3}


def test_evaluate_scoremaps_options_errors_and_names(tmp_path):
    import re

    from wsol.metrics.scoremaps import evaluate_scoremaps

    meta = write_split(tmp_path / "boxes", masks=False)
    maps_dir = tmp_path / "maps"
    with pytest.raises(WSOLError, match=f"^{re.escape(str(maps_dir))}: score map folder not found$"):
        evaluate_scoremaps(meta, maps_dir)
    for image_id, score_map in zip(meta.image_ids, square_maps()):
        (maps_dir / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps_dir / f"{image_id}.npy", score_map)
    result, boxes, _ = evaluate_scoremaps(meta, maps_dir, cam_curve_interval=0.1, iou_thresholds=(30, 50))
    assert result["cam_curve_interval"] == 0.1 and result["iou_thresholds"] == [30, 50]
    assert len(boxes.thresholds) == 10
    bad = square_maps()[1]
    bad[3, 3] = np.nan
    np.save(maps_dir / f"{meta.image_ids[1]}.npy", bad)
    with pytest.raises(WSOLError, match=re.escape(str(maps_dir / f"{meta.image_ids[1]}.npy"))):
        evaluate_scoremaps(meta, maps_dir)
    # a split with masks but no --mask-root, and one without any annotation
    masked = write_split(tmp_path / "masks", masks=True)
    message = f"{masked.split_dir}: no localization.txt with boxes or masks to evaluate against"
    with pytest.raises(WSOLError, match=f"^{re.escape(message + ' (pass --mask-root for its masks)')}$"):
        evaluate_scoremaps(masked, maps_dir)
    masked.mask_paths = None
    with pytest.raises(WSOLError, match=f"^{re.escape(message)}$"):
        evaluate_scoremaps(masked, maps_dir)
    masked = write_split(tmp_path / "masks2", masks=True)
    (tmp_path / "masks2" / "masks" / "bottom.png").unlink()  # the mask files are checked before any map is read
    with pytest.raises(WSOLError, match=r"bottom\.png: mask file of image 'c0/img0\.png' not found"):
        evaluate_scoremaps(masked, maps_dir, mask_root=tmp_path / "masks2" / "masks")


def test_evaluate_scoremaps_reads_64_maps_a_batch_by_default(tmp_path):
    from wsol.metrics.scoremaps import evaluate_scoremaps

    split = tmp_path / "split"
    split.mkdir()
    ids = [f"c0/img{k}.png" for k in range(65)]
    (split / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (split / "class_labels.txt").write_text("".join(f"{i},0\n" for i in ids))
    (split / "image_sizes.txt").write_text("".join(f"{i},224,224\n" for i in ids))
    (split / "localization.txt").write_text("".join(f"{i},0,0,111,111\n" for i in ids))
    maps_dir = tmp_path / "maps" / "c0"
    maps_dir.mkdir(parents=True)
    for i in ids:
        np.save(tmp_path / "maps" / f"{i}.npy", square_maps()[0])
    seen = []
    evaluate_scoremaps(Metadata.load(split), tmp_path / "maps", cam_curve_interval=0.5, on_batch=seen.append)
    assert seen == [64, 1]


def test_pixel_ap_takes_maps_that_require_grad():
    from wsol.metrics import PixelAP

    maps = torch.rand(2, 8, 8, requires_grad=True)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :4] = True
    metric, plain = PixelAP(0.1), PixelAP(0.1)
    metric.update(maps, masks)
    plain.update(maps.detach().numpy(), masks.numpy())
    assert metric.compute() == plain.compute()
