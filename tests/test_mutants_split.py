"""`wsol.localize.split.localize_split` called as a library function, with its documented defaults: the score
maps are the reference's pipeline to the bit, the record and the metrics carry the protocol's settings, and the
folders are locked under the option names the user typed. Written against mutmut's surviving mutants of the
module (issue 12; see benchmarks/results/mutation.md): the CLI tests pass every argument explicitly, so they
never see the function's own defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.cams import compute_cams
from wsol.data.images import load_image
from wsol.data.transforms import eval_transform
from wsol.errors import WSOLError
from wsol.localize.pipeline import preprocessing
from wsol.localize.split import localize_split
from wsol.locks import FolderLock
from wsol.maps.normalize import to_score_maps

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny_model():
    from wsol.models import build_model

    torch.manual_seed(0)
    return build_model("resnet10t", num_classes=NUM_CLASSES, pretrained=False).eval()


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, Path, list[str], dict[str, int]]:
    """Three photos of a coloured block (sizes that are not 224) in a WSOL split with one box each."""
    root = tmp_path_factory.mktemp("images")
    meta = tmp_path_factory.mktemp("meta")
    rng = np.random.default_rng(5)
    ids, labels, sizes = [], {}, {}
    for i, (w, h) in enumerate([(160, 120), (97, 131), (240, 180)]):
        image = np.full((h, w, 3), 230, np.uint8)
        image[h // 4:h // 2, w // 3:w // 2 + 10] = rng.integers(0, 255, 3, dtype=np.uint8)
        name = f"c{i}/img{i}.png"
        (root / f"c{i}").mkdir()
        Image.fromarray(image).save(root / name)
        ids.append(name)
        labels[name] = i % NUM_CLASSES
        sizes[name] = (w, h)
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("".join(f"{i},{labels[i]}\n" for i in ids))
    (meta / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i, (w, h) in sizes.items()))
    (meta / "localization.txt").write_text("".join(f"{i},{w // 3},{h // 4},{w // 2 + 10},{h // 2}\n"
                                                   for i, (w, h) in sizes.items()))
    return meta, root, ids, labels


def _reference_maps(model, root: Path, ids: list[str], labels: dict[str, int]) -> np.ndarray:
    """The reference's eval pipeline, written out: PIL bilinear to 224 x 224, ToTensor, Normalize; the CAM of
    the GT class; bicubic to 224 x 224 and min-max."""
    prep = preprocessing(model)
    x = torch.stack([eval_transform(224, prep["mean"], prep["std"])(load_image(root / i)) for i in ids])
    targets = torch.tensor([labels[i] for i in ids])
    return to_score_maps(compute_cams(model, x, targets, method="cam").maps, (224, 224)).astype(np.float32)


def test_the_defaults_are_the_protocols(tiny_model, split, tmp_path):
    meta, root, ids, labels = split
    maps_dir = tmp_path / "maps"
    summary = localize_split(meta, root, tiny_model, scoremap_dir=maps_dir, evaluate=True, quiet=True)
    assert (summary.processed, summary.resumed, summary.skipped) == (3, 0, [])
    assert json.loads((maps_dir / "scoremaps.json").read_text()) == {
        "model": "resnet10t", "checkpoint": None, "method": "cam", "crf": False, "image_size": 224}
    saved = np.stack([np.load(maps_dir / f"{i}.npy") for i in ids])
    assert saved.dtype == np.float32 and saved.shape == (3, 224, 224)
    np.testing.assert_allclose(saved, _reference_maps(tiny_model, root, ids, labels), rtol=0, atol=1e-6)
    metrics = summary.metrics
    assert {k: metrics[k] for k in ("split", "method", "crf", "model", "num_images")} == {
        "split": str(meta), "method": "cam", "crf": False, "model": "resnet10t", "num_images": 3}
    assert metrics["boxes"]["cam_curve_interval"] == 0.001 and metrics["boxes"]["iou_thresholds"] == [30, 50, 70]
    assert metrics["boxes"]["num_images"] == 3


def test_a_shard_needs_its_folder(tiny_model, split):
    meta, root, _, _ = split
    with pytest.raises(WSOLError) as error:
        localize_split(meta, root, tiny_model, evaluate=True, shard=(0, 2))
    assert str(error.value) == "--shard with --metadata needs --out DIR (the shard's folder: maps, metric states)"


def test_a_shards_maps_go_under_its_folder_and_one_folder_is_locked_once(tiny_model, split, tmp_path):
    meta, root, ids, _ = split
    out = tmp_path / "s0"
    localize_split(meta, root, tiny_model, evaluate=True, shard=(0, 1), shard_dir=out, quiet=True)
    assert sorted(str(p.relative_to(out / "scoremaps")) for p in (out / "scoremaps").rglob("*.npy")) == [
        f"{i}.npy" for i in sorted(ids)]
    # --scoremaps the same folder as --out: one lock, not a clash with itself
    same = tmp_path / "same"
    localize_split(meta, root, tiny_model, scoremap_dir=same, shard=(0, 1), shard_dir=same, quiet=True)
    assert len(list(same.rglob("*.npy"))) == 3


@pytest.mark.parametrize("held", ["--out", "--scoremaps"])
def test_a_held_folder_is_named_by_its_option(tiny_model, split, tmp_path, held):
    meta, root, _, _ = split
    out, maps_dir = tmp_path / "out", tmp_path / "maps"
    with FolderLock(out if held == "--out" else maps_dir, held):
        with pytest.raises(WSOLError) as error:
            localize_split(meta, root, tiny_model, scoremap_dir=maps_dir, shard=(0, 1), shard_dir=out, quiet=True)
    folder = out if held == "--out" else maps_dir
    assert str(error.value) == f"{held} {folder}: in use by this process (pid {os.getpid()}) already"


def _write_split(meta: Path, labels: dict[str, int], sizes: dict[str, tuple[int, int]], boxes: bool = True) -> None:
    meta.mkdir()
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in labels))
    (meta / "class_labels.txt").write_text("".join(f"{i},{c}\n" for i, c in labels.items()))
    (meta / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i, (w, h) in sizes.items()))
    if boxes:
        (meta / "localization.txt").write_text("".join(f"{i},1,1,{w - 2},{h - 2}\n" for i, (w, h) in sizes.items()))


def _sizes(root: Path, ids: list[str]) -> dict[str, tuple[int, int]]:
    return {i: Image.open(root / i).size for i in ids}


def test_errors_name_the_culprit(tiny_model, split, tmp_path):
    meta, root, ids, _ = split
    sizes = _sizes(root, ids)

    def message(split_dir, **options) -> str:
        with pytest.raises(WSOLError) as error:
            localize_split(split_dir, root, tiny_model, quiet=True, **options)
        return str(error.value)

    assert message(meta) == "--metadata needs --scoremaps DIR and/or --evaluate"
    big = tmp_path / "big"
    _write_split(big, dict(zip(ids, [0, 3, 7])), sizes)  # 3 = the first label past the model's classes
    assert message(big, evaluate=True) == f"{big}: label 3 of 'c1/img1.png' >= the model's 3 classes"
    no_boxes = tmp_path / "nobox"
    _write_split(no_boxes, dict(zip(ids, [0, 1, 2])), sizes, boxes=False)
    assert message(no_boxes, evaluate=True) == f"{no_boxes}: has no boxes; give --mask-root to evaluate its masks"
    assert not (tmp_path / "maps").exists()


def _copy_images(root: Path, ids: list[str], dest: Path) -> Path:
    """The split's images copied under ``dest`` (to break some of them)."""
    for i in ids:
        (dest / i).parent.mkdir(parents=True, exist_ok=True)
        (dest / i).write_bytes((root / i).read_bytes())
    return dest


def test_unreadable_images_stop_an_evaluation_naming_the_first_and_the_count(tiny_model, split, tmp_path):
    meta, root, ids, _ = split
    broken = _copy_images(root, ids, tmp_path / "images")
    (broken / ids[1]).write_text("not a picture\n")
    reason = "not an image (unknown format)"
    with pytest.raises(WSOLError) as error:
        localize_split(meta, broken, tiny_model, evaluate=True, quiet=True)
    assert str(error.value) == f"{ids[1]}: unreadable ({reason}); the protocol needs every image of the split"
    (broken / ids[2]).write_text("not a picture either\n")
    with pytest.raises(WSOLError) as error:
        localize_split(meta, broken, tiny_model, evaluate=True, quiet=True)
    assert str(error.value) == (f"{ids[1]}: unreadable ({reason}); the protocol needs every image of the split "
                                "(2 unreadable)")
    # score maps alone: the readable image is written, the others are reported
    summary = localize_split(meta, broken, tiny_model, scoremap_dir=tmp_path / "maps", quiet=True)
    assert summary.processed == 1 and [s[0] for s in summary.skipped] == ids[1:]


def test_score_maps_resume_and_other_settings_are_refused(tiny_model, split, tmp_path):
    meta, root, ids, _ = split
    maps_dir = tmp_path / "maps"
    first = localize_split(meta, root, tiny_model, scoremap_dir=maps_dir, batch_size=1, quiet=True)
    assert (first.processed, first.resumed) == (3, 0)  # one at a time: the count adds up over batches
    again = localize_split(meta, root, tiny_model, scoremap_dir=maps_dir, quiet=True)
    assert (again.processed, again.resumed) == (0, 3)
    with pytest.raises(WSOLError) as error:
        localize_split(meta, root, tiny_model, scoremap_dir=maps_dir, method="gradcam", quiet=True)
    assert str(error.value) == (f"--scoremaps {maps_dir}: holds results made with method='cam', not 'gradcam'; use "
                                "another folder or delete it to start over")


@pytest.mark.parametrize("method, options", [("gradcam", {}), ("cam+nwc", {"nwc": True})])
def test_the_method_and_its_options_reach_the_maps(tiny_model, split, tmp_path, method, options):
    meta, root, ids, labels = split
    prep = preprocessing(tiny_model)
    x = torch.stack([eval_transform(224, prep["mean"], prep["std"])(load_image(root / i)) for i in ids])
    base = method.split("+")[0]
    raw = compute_cams(tiny_model, x, torch.tensor([labels[i] for i in ids]), method=base, **options).maps
    want = to_score_maps(raw, (224, 224)).astype(np.float32)
    localize_split(meta, root, tiny_model, scoremap_dir=tmp_path / "maps", method=method, quiet=True)
    saved = np.stack([np.load(tmp_path / "maps" / f"{i}.npy") for i in ids])
    np.testing.assert_allclose(saved, want, rtol=0, atol=1e-6)
    assert np.abs(want - _reference_maps(tiny_model, root, ids, labels)).max() > 1e-3  # not plain CAM


def test_pas_maps_are_the_reference_maps_over_their_90th_percentile(tiny_model, split, tmp_path):
    from wsol.maps.normalize import pas_normalize

    meta, root, ids, labels = split
    localize_split(meta, root, tiny_model, scoremap_dir=tmp_path / "maps", method="cam+pas", quiet=True)
    saved = np.stack([np.load(tmp_path / "maps" / f"{i}.npy") for i in ids])
    want = pas_normalize(_reference_maps(tiny_model, root, ids, labels))
    np.testing.assert_allclose(saved, want, rtol=0, atol=1e-6)
    assert not np.allclose(want, _reference_maps(tiny_model, root, ids, labels), atol=1e-3)


def test_iou_criteria_workers_progress_and_time(tiny_model, split, tmp_path, monkeypatch, capsys):
    import time

    import wsol.localize.split as split_module
    from wsol.data.datasets import default_workers

    meta, root, _, _ = split
    seen = []
    real = split_module.image_loader

    def recording(dataset, batch_size, workers, device):
        seen.append(workers)
        return real(dataset, batch_size, 0, device)

    monkeypatch.setattr(split_module, "image_loader", recording)
    start = time.perf_counter()
    summary = localize_split(meta, root, tiny_model, evaluate=True, iou_thresholds=(50,), workers=2)
    assert 0 < summary.seconds <= time.perf_counter() - start
    assert summary.metrics["boxes"]["iou_thresholds"] == [50]
    err = capsys.readouterr().err
    assert "score maps" in err and "3/3" in err, err
    localize_split(meta, root, tiny_model, evaluate=True, quiet=True)
    assert seen == [2, default_workers(torch.device("cpu"))]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wsol.data.synth import SynthConfig, generate

    config = SynthConfig(seed=3, num_classes=NUM_CLASSES, train_per_class=1, val_per_class=1, test_per_class=1,
                         min_side=96, max_side=128, max_objects=2)
    return generate(config, tmp_path_factory.mktemp("synth") / "data")


def test_masks_are_evaluated_with_the_mask_root_and_a_note_says_so_without(tiny_model, synth, tmp_path):
    from wsol.data.metadata import Metadata
    from wsol.metrics.scoremaps import evaluate_scoremaps

    split_dir = synth / "metadata" / "test"
    maps_dir = tmp_path / "maps"
    with_masks = localize_split(split_dir, synth / "images", tiny_model, scoremap_dir=maps_dir, evaluate=True,
                                mask_root=synth / "masks", cam_curve_interval=0.01, quiet=True)
    want, _, _ = evaluate_scoremaps(Metadata.load(split_dir, mask_root=synth / "masks"), maps_dir,
                                    mask_root=synth / "masks", cam_curve_interval=0.01)
    assert with_masks.notes == []
    got = {**with_masks.metrics["boxes"], **with_masks.metrics["masks"]}
    assert want["PxAP"] == with_masks.metrics["masks"]["PxAP"]  # the same numbers as `wsol evaluate` on the maps
    assert {k: got[k] for k in want if k not in ("per_iou",)} == {k: v for k, v in want.items() if k != "per_iou"}
    without = localize_split(split_dir, synth / "images", tiny_model, evaluate=True, cam_curve_interval=0.01,
                             quiet=True)
    assert without.notes == [f"{split_dir} has masks: give --mask-root to evaluate PxAP too"]
    assert "PxAP" not in json.dumps(without.metrics)


def test_bad_workers_are_refused_and_quiet_prints_nothing(tiny_model, split, tmp_path, capsys):
    meta, root, _, _ = split
    with pytest.raises(WSOLError) as error:
        localize_split(meta, root, tiny_model, evaluate=True, workers=-1, quiet=True)
    assert str(error.value) == "--workers must be >= 0, got -1"
    localize_split(meta, root, tiny_model, evaluate=True, quiet=True)
    assert capsys.readouterr().err == ""


def test_the_progress_bar_is_labelled_and_counts_broken_images(tiny_model, split, tmp_path, capsys):
    meta, root, ids, _ = split
    broken = _copy_images(root, ids, tmp_path / "images")
    (broken / ids[0]).write_text("not a picture\n")
    localize_split(meta, broken, tiny_model, scoremap_dir=tmp_path / "maps")
    err = capsys.readouterr().err
    assert err.lstrip().startswith("score maps ") and "3/3" in err, err


def test_a_shards_record_lists_its_images_positions_and_no_shard_no_record(tiny_model, split, tmp_path):
    meta, root, ids, _ = split
    out = tmp_path / "s1"
    localize_split(meta, root, tiny_model, evaluate=True, shard=(1, 2), shard_dir=out, quiet=True,
                   cam_curve_interval=0.01)
    record = json.loads((out / "shard.json").read_text())
    from wsol.localize.shards import in_shard

    mine = [ids[i] for i in in_shard(ids, (1, 2))]
    assert record["order"] == {i: ids.index(i) for i in mine} and record["num_images"] == len(mine)
    assert (record["shard"], record["of"], record["mode"], record["model"]) == (1, 2, "split", "resnet10t")
    plain = tmp_path / "plain"
    localize_split(meta, root, tiny_model, evaluate=True, shard_dir=plain, quiet=True)
    assert not (plain / "shard.json").exists()


def test_a_lowered_batch_is_noted(tiny_model, split, monkeypatch):
    from wsol.memory import BUDGET, activation_bytes

    meta, root, _, _ = split
    monkeypatch.setenv("WSOL_MEMORY_LIMIT", str(int(2.5 * activation_bytes(tiny_model, 224) / BUDGET)))
    summary = localize_split(meta, root, tiny_model, evaluate=True, batch_size=8, quiet=True)
    (note,) = summary.notes
    assert note.startswith("--batch-size 8 lowered to 2: at --image-size 224 a batch needs about ")


def test_a_folder_with_a_record_but_no_maps_is_taken_over(tiny_model, split, tmp_path):
    meta, root, _, _ = split
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    (maps_dir / "scoremaps.json").write_text(json.dumps({"method": "gradcam"}))  # a run that failed early
    assert localize_split(meta, root, tiny_model, scoremap_dir=maps_dir, quiet=True).processed == 3
    assert json.loads((maps_dir / "scoremaps.json").read_text())["method"] == "cam"
