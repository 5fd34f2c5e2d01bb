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


SMALL = SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, test_per_class=1, min_side=64, max_side=80)


def test_overwrite_replaces_only_a_previous_synthetic_dataset(tmp_path):
    old = generate(SMALL, tmp_path / "data")
    new = SynthConfig(**{**asdict(SMALL), "seed": 5})
    generate(new, old, overwrite=True)
    assert json.loads((old / "synth.json").read_text())["config"]["seed"] == 5
    # an empty folder may be filled, with or without overwrite
    (tmp_path / "empty").mkdir()
    assert (generate(SMALL, tmp_path / "empty") / "synth.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty"]  # no temp folders left behind


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_anything_else_is_never_replaced(tmp_path, overwrite):
    thesis = tmp_path / "work"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    with pytest.raises(WSOLError) as info:
        generate(SMALL, thesis, overwrite=overwrite)
    assert str(info.value) == (f"{thesis}: not a synthetic dataset folder (it holds thesis.tex); will not replace it, "
                               "choose a new or empty --out folder")
    # a dataset folder someone put their own files into is not replaced either
    dataset = generate(SMALL, tmp_path / "data")
    (dataset / "notes.md").write_text("mine")
    with pytest.raises(WSOLError, match=r"data: not a synthetic dataset folder \(it holds notes\.md\)"):
        generate(SMALL, dataset, overwrite=overwrite)
    # a folder with a synth.json that the generator did not write
    other = tmp_path / "other"
    other.mkdir()
    (other / "synth.json").write_text('{"format": "someone-else"}')
    with pytest.raises(WSOLError, match="it has no synth.json written by wsol data synth"):
        generate(SMALL, other, overwrite=overwrite)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    with pytest.raises(WSOLError, match="file.txt: exists and is not a folder"):
        generate(SMALL, a_file, overwrite=overwrite)
    assert (thesis / "thesis.tex").read_text() == "years of work"
    assert (dataset / "notes.md").read_text() == "mine" and (dataset / "synth.json").is_file()
    assert a_file.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file.txt", "other", "work"]


def test_cli_out_dot_overwrite_keeps_the_users_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    out = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "data", "synth", "--out", ".",
                          "--overwrite", "--classes", "2", "--per-class-train", "1", "--per-class-val", "1",
                          "--per-class-test", "1", "-q"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path}: not a synthetic dataset folder (it holds "
                                               "thesis.tex); will not replace it, choose a new or empty --out folder"]
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize(("knobs", "message"), [
    ({"seed": -1}, "synth config: seed=-1 must be >= 0"),
    ({"max_objects": 1000}, "synth config: max_objects=1000 must be in 1..32"),
    ({"max_objects": 0}, "synth config: max_objects=0 must be in 1..32"),
    ({"max_objects": 20, "part_size": 0.1}, "synth config: max_objects=20 makes heads too small: part_size * "
     "scale_min * min_side / sqrt(max_objects) = 1.1 px, must be >= 4 px (lower max_objects or raise part_size, "
     "scale_min or min_side)"),
    ({"min_side": 64, "scale_min": 0.05, "part_size": 0.1}, "synth config: scale_min=0.05 makes heads too small: "
     "part_size * scale_min * min_side / sqrt(max_objects) = 0.32 px"),
    ({"noise": float("nan")}, "synth config: noise=nan must be a finite number >= 0"),
    ({"blur": float("inf")}, "synth config: blur=inf must be a finite number >= 0"),
])
def test_knobs_out_of_range_are_one_line_naming_the_knob(knobs, message):
    with pytest.raises(WSOLError) as info:
        SynthConfig(**knobs)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_smallest_allowed_objects_always_have_pixels():
    """At the smallest head the knobs allow, every object still has a non-empty mask (hence a box)."""
    config = SynthConfig(min_side=64, max_side=64, scale_min=0.21, scale_max=0.21, aspect_min=0.1, aspect_max=0.1,
                         part_size=0.3, max_objects=1)  # head 0.3 * 0.21 * 64 = 4.03 px
    for seed in range(40):
        _, masks, _ = render(config, np.random.default_rng(seed), label=0)
        assert masks and all(mask.sum() >= 9 for mask in masks)
