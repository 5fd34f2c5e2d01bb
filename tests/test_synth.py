"""The synthetic WSOL dataset: standard metadata, exact boxes from masks, determinism, clear errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from wsol.data.metadata import Metadata
from wsol.data.synth import SynthConfig, generate
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
    bad = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "data", "synth", "--out",
                          str(tmp_path / "t"), "--set", "colour=red"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--set 'colour=red'" in bad.stderr
