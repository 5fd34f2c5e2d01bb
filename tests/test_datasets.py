"""Datasets and transforms: exact tensors, labels and indices; broken files skipped and reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wsol.data import (
    HALF_MEAN_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageList,
    LabeledImages,
    Metadata,
    SynthConfig,
    check_data_root,
    eval_transform,
    generate,
    load_image,
    train_transform,
)
from wsol.errors import WSOLError

TINY = SynthConfig(seed=1, num_classes=2, train_per_class=2, val_per_class=1, test_per_class=2, min_side=96,
                   max_side=144)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(TINY, tmp_path_factory.mktemp("ds") / "synth")


def test_eval_transform_values_and_square_resize():
    image = Image.new("RGB", (300, 100), (255, 0, 128))
    x = eval_transform()(image)
    assert x.shape == (3, 224, 224)  # squashed to a square, as the reference does
    expected = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 100, 100], expected.float())
    y = eval_transform(384, HALF_MEAN_STD, HALF_MEAN_STD)(image)
    assert y.shape == (3, 384, 384)
    torch.testing.assert_close(y[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))


def test_train_transform_crop_and_errors():
    torch.manual_seed(0)
    assert train_transform()(Image.new("RGB", (50, 80))).shape == (3, 224, 224)
    assert train_transform(438, 384)(Image.new("RGB", (50, 80))).shape == (3, 384, 384)
    with pytest.raises(WSOLError, match="crop size 300"):
        train_transform(256, 300)
    with pytest.raises(WSOLError, match="std"):
        eval_transform(std=(0.5, 0.0, 0.5))


def test_labeled_images_of_a_wsol_split(synth):
    meta = Metadata.load(synth / "metadata" / "test")
    dataset = LabeledImages(ImageList.from_metadata(meta, synth / "images"), eval_transform())
    assert len(dataset) == 4
    for index in range(len(dataset)):
        x, label, i = dataset[index]
        image_id = meta.image_ids[index]
        assert i == index and label == meta.labels[image_id]
        torch.testing.assert_close(x, eval_transform()(load_image(synth / "images" / image_id)))
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch[0].shape == (3, 3, 224, 224) and batch[2].tolist() == [0, 1, 2]


def test_check_data_root_names_the_first_missing_image(synth, tmp_path):
    meta = Metadata.load(synth / "metadata" / "val")
    check_data_root(meta, synth / "images")
    with pytest.raises(WSOLError, match="data root folder not found"):
        check_data_root(meta, tmp_path / "nowhere")
    (tmp_path / "val").mkdir()
    with pytest.raises(WSOLError, match=rf"{meta.image_ids[0]}: image file not found .*\(and 1 more of 2 checked\)"):
        check_data_root(meta, tmp_path)


def test_class_folders_sorted_classes(synth, tmp_path):
    images = ImageList.from_class_folders(synth / "images" / "train")
    meta = Metadata.load(synth / "metadata" / "train")
    # sorted folder names = the generator's label order
    assert [(f"train/{Path(i).as_posix()}", k) for i, k in zip(images.image_ids, images.labels)] == sorted(
        meta.labels.items()
    )
    assert sorted(set(images.labels)) == list(range(len(TINY.class_names())))
    images = ImageList.from_class_folders(synth / "images" / "train", classes=list(reversed(TINY.class_names())))
    assert images.labels[0] == len(TINY.class_names()) - 1  # the given order labels the folders
    x, label, index = LabeledImages(ImageList.from_class_folders(synth / "images" / "train"), eval_transform())[3]
    assert x.shape == (3, 224, 224) and (label, index) == (1, 3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(WSOLError, match="b: class folder has no image files"):
        ImageList.from_class_folders(tmp_path)


