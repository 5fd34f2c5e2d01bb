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
