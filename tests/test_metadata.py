"""The WSOL metadata reader: exact parsing, box rescaling, and one-line errors naming file and line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wsol.data.metadata import Metadata
from wsol.errors import WSOLError


def write_split(root, ids=("a/1.jpg", "b/2.jpg"), labels=None, sizes=None, loc=None, trailing_newline=False):
    root.mkdir(parents=True, exist_ok=True)
    end = "\n" if trailing_newline else ""
    labels = labels if labels is not None else [f"{i},{n}" for n, i in enumerate(ids)]
    sizes = sizes if sizes is not None else [f"{i},500,400" for i in ids]
    loc = loc if loc is not None else ["a/1.jpg,10,20,100,200", "a/1.jpg,0,0,500,400", "b/2.jpg,5,5,50,60"]
    (root / "image_ids.txt").write_text("\n".join(ids) + end)
    (root / "class_labels.txt").write_text("\n".join(labels) + end)
    (root / "image_sizes.txt").write_text("\n".join(sizes) + end)
    (root / "localization.txt").write_text("\n".join(loc) + end)
    return root


@pytest.mark.parametrize("trailing_newline", [False, True])
def test_reads_boxes_and_rescales_like_the_reference(tmp_path, trailing_newline):
    meta = Metadata.load(write_split(tmp_path / "test", trailing_newline=trailing_newline))
    assert meta.image_ids == ["a/1.jpg", "b/2.jpg"] and meta.labels == {"a/1.jpg": 0, "b/2.jpg": 1}
    assert meta.has_boxes and not meta.has_masks and meta.num_classes == 2
    resized = meta.resized_boxes()
    # int(10 * 224 / 500) = int(4.48) = 4, int(20 * 224 / 400) = 11, int(44.8) = 44, int(112.0) = 112
    np.testing.assert_array_equal(resized["a/1.jpg"], [[4, 11, 44, 112], [0, 0, 224, 224]])
    np.testing.assert_array_equal(resized["b/2.jpg"], [[2, 2, 22, 33]])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loc": ["a/1.jpg,10,20,100", "b/2.jpg,5,5,50,60"]}, r"localization.txt:1: expected 3 or 5"),
        ({"loc": ["a/1.jpg,10,20,100,200", "b/2.jpg,5,5,50,x"]}, r"localization.txt:2: y1 is not an integer"),
        ({"loc": ["a/1.jpg,10,20,600,200", "b/2.jpg,5,5,50,60"]}, r"localization.txt:1: .*outside its 500 x 400"),
        ({"loc": ["a/1.jpg,10,20,5,200", "b/2.jpg,5,5,50,60"]}, r"localization.txt:1: .*x0 <= x1"),
        ({"loc": ["a/1.jpg,10,20,100,200"]}, r"localization.txt: no entry for image id 'b/2.jpg'"),
        ({"labels": ["a/1.jpg,0"]}, r"class_labels.txt: no entry for image id 'b/2.jpg'"),
        ({"labels": ["a/1.jpg,0", "c/3.jpg,1"]}, r"class_labels.txt:2: image id 'c/3.jpg' is not in image_ids"),
        ({"labels": ["a/1.jpg,0", "b/2.jpg,cat"]}, r"class_labels.txt:2: class label is not an integer"),
        ({"sizes": ["a/1.jpg,500,400", "b/2.jpg,0,400"]}, r"image_sizes.txt:2: image size must be positive"),
        ({"ids": ("a/1.jpg", "a/1.jpg")}, r"image_ids.txt:2: duplicate image id"),
        # a second line for an id used to override the first silently
        ({"labels": ["a/1.jpg,0", "b/2.jpg,1", "a/1.jpg,1"]},
         r"class_labels.txt:3: duplicate image id 'a/1.jpg' \(first on line 1\)"),
        ({"sizes": ["a/1.jpg,500,400", "b/2.jpg,500,400", "b/2.jpg,50,40"]},
         r"image_sizes.txt:3: duplicate image id 'b/2.jpg' \(first on line 2\)"),
        # score maps are written to <dir>/<image_id>.npy: an id must not lead out of <dir>
        ({"ids": ("a/1.jpg", "/tmp/2.jpg")}, r"image_ids.txt:2: image id '/tmp/2.jpg' must be a relative path"),
        ({"ids": ("a/../../2.jpg", "b/2.jpg")}, r"image_ids.txt:1: image id 'a/../../2.jpg' must be a relative"),
        ({"ids": ("a/1.jpg", "..\\2.jpg")}, r"image_ids.txt:2: image id .* must be a relative path"),
    ],
)
def test_malformed_metadata_names_file_and_line(tmp_path, change, message):
    with pytest.raises(WSOLError, match=message):
        Metadata.load(write_split(tmp_path / "test", **change))


def test_boxes_and_masks_may_take_several_lines_per_image(tmp_path):
    meta = Metadata.load(write_split(tmp_path / "test"))  # a/1.jpg has two boxes
    assert meta.boxes["a/1.jpg"].shape == (2, 4)
    (tmp_path / "m").mkdir()
    split, _ = write_mask_split(tmp_path / "m")  # x/1.jpg has two instance masks
    assert Metadata.load(split).mask_paths["x/1.jpg"] == ["x/1_a.png", "x/1_b.png"]


@pytest.mark.parametrize("name", ["image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"])
def test_byte_order_mark_is_ignored(tmp_path, name):
    split = write_split(tmp_path / "test")
    path = split / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows editors save UTF-8
    meta = Metadata.load(split)
    assert meta.image_ids == ["a/1.jpg", "b/2.jpg"] and meta.labels == {"a/1.jpg": 0, "b/2.jpg": 1}
    assert meta.sizes["a/1.jpg"] == (500, 400)
    np.testing.assert_array_equal(meta.boxes["a/1.jpg"], [[10, 20, 100, 200], [0, 0, 500, 400]])


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(WSOLError, match="metadata folder not found"):
        Metadata.load(tmp_path / "nope")
    split = write_split(tmp_path / "test")
    (split / "class_labels.txt").unlink()
    with pytest.raises(WSOLError, match="class_labels.txt: file not found"):
        Metadata.load(split)


def write_mask_split(tmp_path, make_files=True):
    split = tmp_path / "meta"
    split.mkdir()
    (split / "image_ids.txt").write_text("x/1.jpg\nx/2.jpg")
    (split / "class_labels.txt").write_text("x/1.jpg,0\nx/2.jpg,3")
    (split / "image_sizes.txt").write_text("")
    (split / "localization.txt").write_text(
        "x/1.jpg,x/1_a.png,x/1_ignore.png\nx/1.jpg,x/1_b.png,\nx/2.jpg,x/2_a.png,"
    )
    masks = tmp_path / "masks" / "x"
    masks.mkdir(parents=True)
    if make_files:
        a = np.zeros((40, 20), np.uint8)
        a[:10] = 255
        b = np.zeros((40, 20), np.uint8)
        b[30:, :5] = 255
        ignore = np.zeros((40, 20), np.uint8)
        ignore[:20] = 255  # overlaps mask a: the overlap stays foreground
        for name, image in {"1_a": a, "1_b": b, "1_ignore": ignore, "2_a": a}.items():
            cv2.imwrite(str(masks / f"{name}.png"), image)
    return split, tmp_path / "masks"


def test_masks_union_and_ignore_region(tmp_path):
    split, mask_root = write_mask_split(tmp_path)
    meta = Metadata.load(split, mask_root=mask_root)
    assert meta.has_masks and not meta.has_boxes and meta.mask_paths["x/1.jpg"] == ["x/1_a.png", "x/1_b.png"]
    fg, ignore = meta.load_mask("x/1.jpg", mask_root)
    assert fg.shape == (224, 224)
    # rows 0..9 of 40 -> 0..55 of 224 (nearest), rows 30..39 -> 168..223 and columns 0..4 of 20 -> 0..55
    assert fg[:56].all() and not fg[56:168, 56:].any() and fg[168:, :56].all()
    assert ignore[56:112].all() and not ignore[:56].any() and not ignore[112:].any()
    fg2, ignore2 = meta.load_mask("x/2.jpg", mask_root)
    assert not ignore2.any()


def test_missing_mask_file_is_named(tmp_path):
    split, mask_root = write_mask_split(tmp_path, make_files=False)
    with pytest.raises(WSOLError, match=r"x/1_a.png: mask file of image 'x/1.jpg' not found"):
        Metadata.load(split, mask_root=mask_root)


def test_second_ignore_path_is_an_error(tmp_path):
    split, _ = write_mask_split(tmp_path)
    (split / "localization.txt").write_text("x/1.jpg,x/1_a.png,i.png\nx/1.jpg,x/1_b.png,j.png\nx/2.jpg,x/2_a.png,")
    with pytest.raises(WSOLError, match=r"localization.txt:2: only the first line"):
        Metadata.load(split)


def test_class_names_file(tmp_path) -> None:
    from wsol.data.metadata import read_class_names

    path = tmp_path / "class_names.txt"
    assert read_class_names(path) is None  # optional
    path.write_text("\ufeffcat\ndog\n\n")  # a BOM and trailing blank lines are fine
    assert read_class_names(path) == ["cat", "dog"]
    path.write_text("cat\n\ndog\n")
    with pytest.raises(WSOLError, match="class_names.txt: expected one class name per line"):
        read_class_names(path)
