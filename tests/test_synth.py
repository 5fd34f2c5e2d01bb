"""The synthetic WSOL dataset: standard metadata, exact boxes from masks, determinism, clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict

import cv2
import numpy as np
import pytest

from wsol.data.metadata import Metadata
from wsol.data.synth import SynthConfig, generate, render
from wsol.errors import WSOLError

TINY = SynthConfig(seed=3, num_classes=3, train_per_class=2, val_per_class=1, test_per_class=2,
                   min_side=96, max_side=160, max_objects=3)


def digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(TINY, tmp_path_factory.mktemp("synth") / "data")


def test_splits_load_as_standard_metadata_with_boxes_and_masks(dataset):
    for split, per_class in (("train", 2), ("val", 1), ("test", 2)):
        meta = Metadata.load(dataset / "metadata" / split, mask_root=dataset / "masks")
        assert meta.has_boxes and meta.has_masks
        assert len(meta) == 3 * per_class
        assert sorted(np.bincount(list(meta.labels.values()))) == [per_class] * 3
        for image_id in meta.image_ids:
            image = cv2.imread(str(dataset / "images" / image_id))
            assert image.shape[:2][::-1] == meta.sizes[image_id]
            assert len(meta.boxes[image_id]) == len(meta.mask_paths[image_id]) >= 1


def test_each_box_is_the_tight_box_of_its_instance_mask(dataset):
    meta = Metadata.load(dataset / "metadata" / "test")
    for image_id in meta.image_ids:
        for box, mask_name in zip(meta.boxes[image_id], meta.mask_paths[image_id]):
            ys, xs = np.nonzero(cv2.imread(str(dataset / "masks" / mask_name), cv2.IMREAD_GRAYSCALE))
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max(), ys.max()])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = digest(generate(TINY, tmp_path / "a"))
    second = digest(generate(TINY, tmp_path / "b"))
    assert first == second
    other = digest(generate(SynthConfig(**{**TINY.__dict__, "seed": 4}), tmp_path / "c"))
    assert other["metadata/test/image_ids.txt"] == first["metadata/test/image_ids.txt"]
    assert other["images/" + next(iter(Metadata.load(tmp_path / "a" / "metadata" / "test").image_ids))] != \
        first["images/" + next(iter(Metadata.load(tmp_path / "a" / "metadata" / "test").image_ids))]


def test_existing_folder_bad_knob_and_no_leftovers(tmp_path):
    generate(TINY, tmp_path / "d")
    with pytest.raises(WSOLError, match="already exists"):
        generate(TINY, tmp_path / "d")
    with pytest.raises(WSOLError, match="part_size"):
        SynthConfig(part_size=0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp folder left behind


def test_cli(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "data", "synth", "--out",
                          str(tmp_path / "s"), "--classes", "2", "--per-class-train", "1", "--per-class-val", "1",
                          "--per-class-test", "1", "--set", "max_side=128", "--set", "min_side=96", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(Metadata.load(tmp_path / "s" / "metadata" / "test")) == 2
    # every knob not given on the command line is the generator's own default
    written = json.loads((tmp_path / "s" / "synth.json").read_text())["config"]
    assert written == asdict(SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, test_per_class=1,
                                         max_side=128, min_side=96))
    bad = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "data", "synth", "--out",
                          str(tmp_path / "t"), "--set", "colour=red"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--set 'colour=red'" in bad.stderr


@pytest.mark.parametrize("body_colour", ["independent", "head"])
def test_body_colour_head_gives_the_body_the_heads_hue(body_colour):
    """With no texture, noise or blur a body is one hue (shaded) and a head two tones of one hue: with
    body_colour='head' the whole object is one hue; otherwise body and head hues are drawn apart."""
    config = SynthConfig(body_colour=body_colour, head_cue="pattern", texture=0.0, noise=0.0, blur=0.0,
                         distractors=0, headless_bodies=0, loose_head_prob=0.0, occlusion_prob=0.0)
    spreads = []
    for seed in range(6):
        rgb, masks, _ = render(config, np.random.default_rng(seed), label=seed % config.num_classes)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[masks[0]]
        hue = hsv[hsv[:, 2] > 80, 0].astype(np.float64) * 2  # degrees; hue is noise on near-black pixels
        hue = np.where(hue - np.median(hue) > 180, hue - 360, np.where(np.median(hue) - hue > 180, hue + 360, hue))
        spreads.append(np.percentile(hue, 97) - np.percentile(hue, 3))
    if body_colour == "head":
        assert max(spreads) <= 6
    else:
        assert sum(s > 20 for s in spreads) >= 5
    with pytest.raises(WSOLError, match="body_colour"):
        SynthConfig(body_colour="plumage")


def test_is_current_checks_generator_version_and_config(dataset):
    from wsol.data.synth import is_current

    assert is_current(dataset, TINY)
    assert not is_current(dataset, SynthConfig(**{**asdict(TINY), "seed": 4}))
    assert not is_current(dataset.parent / "nothing-here", TINY)
    info = json.loads((dataset / "synth.json").read_text())
    assert info["format"] == "wsol-synth/2"
