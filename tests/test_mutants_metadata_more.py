"""Mutation-testing follow-up for wsol.data.metadata (issue 12): exact one-line errors (file, line, culprit),
the metadata-root hint, exact bytes written by write_split / write_class_names, exact mask arrays read from tiny
PNGs, and the once-per-split warning about a mask whose size differs from its image's."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from wsol.data import metadata as metadata_module
from wsol.data.metadata import Metadata, Record, read_class_names, read_mask_png, write_class_names, write_split
from wsol.errors import WSOLError, WSOLWarning


def exactly(message: str):
    """pytest.raises for a WSOLError whose whole message is ``message``."""
    return pytest.raises(WSOLError, match=f"^{re.escape(message)}$")


def make_split(split: Path, ids=("a", "b"), labels=None, sizes=None, loc=None, mask_loc=None) -> Path:
    """A split folder from lists of lines; ``labels`` defaults to label n for the n-th id; None skips a file."""
    split.mkdir(parents=True, exist_ok=True)
    labels = labels if labels is not None else [f"{i},{n}" for n, i in enumerate(ids)]
    files = {"image_ids.txt": ids, "class_labels.txt": labels, "image_sizes.txt": sizes,
             "localization.txt": loc, "mask_localization.txt": mask_loc}
    for name, lines in files.items():
        if lines is not None:
            (split / name).write_text("".join(line + "\n" for line in lines))
    return split


def png(path: Path, array) -> Path:
    assert cv2.imwrite(str(path), np.asarray(array, dtype=np.uint8))
    return path


# ---------------------------------------------------------------------------------------------------- _records


def test_a_blank_line_in_the_middle_is_skipped_not_the_end(tmp_path):
    split = tmp_path / "s"
    split.mkdir()
    (split / "image_ids.txt").write_text("a\n\n  \nb\n")
    (split / "class_labels.txt").write_text("a,0\n\nb,1\n")
    meta = Metadata.load(split)
    assert meta.image_ids == ["a", "b"] and meta.labels == {"a": 0, "b": 1}


def test_non_utf8_file_names_the_file_and_the_reason(tmp_path):
    split = tmp_path / "s"
    split.mkdir()
    (split / "image_ids.txt").write_bytes(b"a\xff\n")
    with exactly(f"{split / 'image_ids.txt'}: not a UTF-8 text file (invalid start byte)"):
        Metadata.load(split)


def test_relative_id_message_is_exact(tmp_path):
    split = make_split(tmp_path / "s", ids=("a", "/abs.png"))
    with exactly(f"{split / 'image_ids.txt'}:2: image id '/abs.png' must be a relative path inside the data root "
                 "(no leading '/', no '..')"):
        Metadata.load(split)


# ---------------------------------------------------------------------------------------------- Metadata.load


def test_split_dir_is_kept(tmp_path):
    split = make_split(tmp_path / "s")
    meta = Metadata.load(split)
    assert meta.split_dir == split and isinstance(meta.split_dir, Path)
    with exactly(f"{split}: this split has no boxes"):
        meta.resized_boxes()
    with exactly(f"{split}: this split has no masks"):
        meta.load_mask("a", tmp_path)


def test_metadata_root_hint_prefers_test(tmp_path):
    root = tmp_path / "meta"
    for name in ("train", "dev", "test"):
        make_split(root / name)
    (root / "notes").mkdir()  # a folder without image_ids.txt is not a split
    (root / "readme.txt").write_text("x")
    with exactly(f"{root}: looks like a metadata root: give one split folder, e.g. {root / 'test'} "
                 "(it has dev, test, train)"):
        Metadata.load(root)


def test_metadata_root_hint_without_test_names_the_first_split(tmp_path):
    root = tmp_path / "meta"
    for name in ("val", "train"):
        make_split(root / name)
    with exactly(f"{root}: looks like a metadata root: give one split folder, e.g. {root / 'train'} "
                 "(it has train, val)"):
        Metadata.load(root)


def test_folder_without_ids_or_splits_says_file_not_found(tmp_path):
    (tmp_path / "sub").mkdir()
    with exactly(f"{tmp_path / 'image_ids.txt'}: file not found"):
        Metadata.load(tmp_path)


def test_empty_image_ids(tmp_path):
    split = make_split(tmp_path / "s", ids=(), labels=[])
    with exactly(f"{split / 'image_ids.txt'}: no image ids"):
        Metadata.load(split)


def test_negative_label(tmp_path):
    split = make_split(tmp_path / "s", labels=["a,0", "b,-1"])
    with exactly(f"{split / 'class_labels.txt'}:2: negative class label -1"):
        Metadata.load(split)


@pytest.mark.parametrize(("labels", "tail"), [
    (["a,0", "b,0", "c,0"], "'d'"),
    (["a,0", "b,0"], "'c' (and 1 more)"),
    (["a,0"], "'b' (and 2 more)"),
])
def test_missing_entries_count_the_rest(tmp_path, labels, tail):
    split = make_split(tmp_path / "s", ids=("a", "b", "c", "d"), labels=labels)
    with exactly(f"{split / 'class_labels.txt'}: no entry for image id {tail}"):
        Metadata.load(split)


@pytest.mark.parametrize(("sizes", "message"), [
    (["a,3,2", "z,3,2"], "2: image id 'z' is not in image_ids.txt"),
    (["a,w,2"], "1: width is not an integer: 'w'"),
    (["a,3,2", "b,4,h"], "2: height is not an integer: 'h'"),
    (["a,3,0"], "1: image size must be positive, got 3 x 0"),
    (["a,0,2"], "1: image size must be positive, got 0 x 2"),
])
def test_image_sizes_errors(tmp_path, sizes, message):
    split = make_split(tmp_path / "s", sizes=sizes)
    with exactly(f"{split / 'image_sizes.txt'}:{message}"):
        Metadata.load(split)


def test_one_pixel_images_are_valid(tmp_path):
    split = make_split(tmp_path / "s", sizes=["a,1,1", "b,1,2"], loc=["a,0,0,1,1", "b,1,2,1,2"])
    meta = Metadata.load(split)
    assert meta.sizes == {"a": (1, 1), "b": (1, 2)}


def test_missing_size_line_with_boxes_names_image_sizes(tmp_path):
    split = make_split(tmp_path / "s", sizes=["a,10,8"], loc=["a,0,0,5,5"])
    with exactly(f"{split / 'image_sizes.txt'}: no entry for image id 'b'"):
        Metadata.load(split)


# ------------------------------------------------------------------------------------------- localization.txt


def test_empty_localization_file_means_no_localization(tmp_path):
    split = make_split(tmp_path / "s", loc=[])
    meta = Metadata.load(split)
    assert not meta.has_boxes and not meta.has_masks and meta.boxes is None and meta.mask_paths is None


def test_degenerate_boxes_are_allowed(tmp_path):
    split = make_split(tmp_path / "s", sizes=["a,10,8", "b,10,8"], loc=["a,3,2,3,7", "b,1,4,9,4"])
    meta = Metadata.load(split)
    np.testing.assert_array_equal(meta.boxes["a"], [[3, 2, 3, 7]])
    np.testing.assert_array_equal(meta.boxes["b"], [[1, 4, 9, 4]])
    assert meta.boxes["a"].dtype == np.int64


@pytest.mark.parametrize(("loc", "message"), [
    (["a,0,0,5,5", "z,0,0,5,5"], "2: image id 'z' is not in image_ids.txt"),
    (["a,p,0,5,5"], "1: x0 is not an integer: 'p'"),
    (["a,0,q,5,5"], "1: y0 is not an integer: 'q'"),
    (["a,0,0,r,5"], "1: x1 is not an integer: 'r'"),
    (["a,0,0,5,5", "b,-1,0,5,5"], "2: box (-1, 0, 5, 5) lies outside its 10 x 8 image"),
    (["a,0,-1,5,5"], "1: box (0, -1, 5, 5) lies outside its 10 x 8 image"),
])
def test_box_errors(tmp_path, loc, message):
    split = make_split(tmp_path / "s", sizes=["a,10,8", "b,10,8"], loc=loc)
    with exactly(f"{split / 'localization.txt'}:{message}"):
        Metadata.load(split)


def test_box_without_size_line(tmp_path):
    split = make_split(tmp_path / "s", sizes=["a,10,8"], loc=["a,0,0,5,5", "b,0,0,5,5"])
    with exactly(f"{split / 'localization.txt'}:2: image 'b' has a box but no line in image_sizes.txt"):
        Metadata.load(split)


@pytest.mark.parametrize(("loc", "message"), [
    (["a,,"], "1: empty mask path"),
    (["a,m.png,", "z,m.png,"], "2: image id 'z' is not in image_ids.txt"),
])
def test_mask_line_errors(tmp_path, loc, message):
    split = make_split(tmp_path / "s", loc=loc)
    with exactly(f"{split / 'localization.txt'}:{message}"):
        Metadata.load(split)


def test_missing_mask_entry_names_mask_localization_when_there_are_boxes(tmp_path):
    split = make_split(tmp_path / "s", sizes=["a,10,8", "b,10,8"], loc=["a,0,0,5,5", "b,0,0,5,5"],
                       mask_loc=["a,m.png,"])
    with exactly(f"{split / 'mask_localization.txt'}: no entry for image id 'b'"):
        Metadata.load(split)


def test_missing_mask_entry_names_localization_for_a_mask_dataset(tmp_path):
    split = make_split(tmp_path / "s", loc=["a,m.png,"])
    with exactly(f"{split / 'localization.txt'}: no entry for image id 'b'"):
        Metadata.load(split)


def test_missing_ignore_file_is_named(tmp_path):
    split = make_split(tmp_path / "s", loc=["a,ma.png,ia.png", "b,mb.png,"])
    for name in ("ma.png", "mb.png"):
        png(tmp_path / name, [[0, 255]])
    with exactly(f"{tmp_path / 'ia.png'}: mask file of image 'a' not found"):
        Metadata.load(split, mask_root=tmp_path)


# ----------------------------------------------------------------------------------------------- mask PNGs


def test_read_mask_png_exact_array_and_size_check_arguments(tmp_path):
    path = png(tmp_path / "m.png", [[0, 1, 255], [0, 0, 2]])  # 3 wide, 2 high; 1 is foreground (> 0.5)
    calls = []
    mask = read_mask_png(path, 4, lambda *args: calls.append(args))
    assert calls == [(path, 3, 2)]
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])


def test_read_mask_png_missing_file(tmp_path):
    with exactly(f"{tmp_path / 'none.png'}: mask file missing or not a readable image"):
        read_mask_png(tmp_path / "none.png")


def _check_call_line() -> int:
    """The line of read_mask_png that calls the size check: the warning's stacklevel=2 points there."""
    lines, start = inspect.getsourcelines(read_mask_png)
    return start + next(n for n, line in enumerate(lines) if "check(path, image.shape" in line)


def _mask_split(tmp_path, shapes):
    """Images a and b of 3 x 2 pixels; mask files shaped (height, width) as ``shapes`` says."""
    split = make_split(tmp_path / "s", sizes=["a,3,2", "b,3,2"], loc=["a,ma.png,ia.png", "b,mb.png,"])
    root = tmp_path / "masks"
    root.mkdir()
    for name, (h, w) in shapes.items():
        png(root / name, np.full((h, w), 255))
    return Metadata.load(split, mask_root=root), split, root


def _warning_text(path, mask_w, mask_h, image_id, split):
    return (f"{path}: mask is {mask_w} x {mask_h} but its image {image_id} is 3 x 2 ({split / 'image_sizes.txt'}); "
            "the protocol resizes masks to 224 x 224 anyway: check the mask root (further mismatches in this split "
            "are not reported)")


def test_masks_of_their_images_size_do_not_warn(tmp_path):
    meta, _, root = _mask_split(tmp_path, {"ma.png": (2, 3), "ia.png": (2, 3), "mb.png": (2, 3)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        foreground, ignore = meta.load_mask("a", root, size=4)
        meta.load_mask("b", root, size=4)
    assert caught == []
    assert foreground.all() and not ignore.any()


def test_instance_mask_size_mismatch_warns_once_per_split(tmp_path):
    meta, split, root = _mask_split(tmp_path, {"ma.png": (4, 5), "ia.png": (2, 3), "mb.png": (6, 6)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta.load_mask("a", root, size=4)
        meta.load_mask("a", root, size=4)
        meta.load_mask("b", root, size=4)
    assert len(caught) == 1
    warning = caught[0]
    assert warning.category is WSOLWarning
    assert str(warning.message) == _warning_text(root / "ma.png", 5, 4, "a", split)
    assert Path(warning.filename) == Path(metadata_module.__file__) and warning.lineno == _check_call_line()


def test_ignore_mask_size_mismatch_warns(tmp_path):
    meta, split, root = _mask_split(tmp_path, {"ma.png": (2, 3), "ia.png": (7, 2), "mb.png": (2, 3)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta.load_mask("a", root, size=4)
    assert [(w.category, str(w.message)) for w in caught] == [
        (WSOLWarning, _warning_text(root / "ia.png", 2, 7, "a", split))]


# ----------------------------------------------------------------------------------------------- class names


def test_class_names_not_utf8(tmp_path):
    path = tmp_path / "class_names.txt"
    path.write_bytes(b"cat\n\xffdog\n")
    with exactly(f"{path}: cannot be read as UTF-8 text ('utf-8' codec can't decode byte 0xff in position 4: "
                 "invalid start byte)"):
        read_class_names(path)


@pytest.mark.parametrize(("names", "culprit"), [
    (["a", "", "b\nc"], "''"),
    (["a", " ", "b\nc"], "' '"),
    (["a", "b\nc"], "'b\\nc'"),
    (["a\rb", "c"], "'a\\rb'"),
])
def test_write_class_names_refuses_empty_or_multiline_names(tmp_path, names, culprit):
    with exactly(f"{tmp_path}: class name {culprit} is empty or spans lines"):
        write_class_names(tmp_path, names)
    assert not (tmp_path / "class_names.txt").exists()


def test_write_class_names_bytes(tmp_path):
    path = write_class_names(tmp_path, ["X_one", "two words"])
    assert path == tmp_path / "class_names.txt"
    assert path.read_bytes() == b"X_one\ntwo words\n"


# ----------------------------------------------------------------------------------------------- write_split


@pytest.mark.parametrize("image_id", ["..\\a.png", "\\abs.png", "/abs.png", " a.png", "a.png ", "a,b.png",
                                      "a\nb.png", "a\rb.png", "x/../../a.png"])
def test_write_split_refuses_ids_the_format_cannot_hold(tmp_path, image_id):
    split = tmp_path / "s"
    with exactly(f"{split}: image id {image_id!r} cannot be written (it must be a relative path inside the data "
                 "root, without commas, line breaks or surrounding spaces)"):
        write_split(split, [Record("ok.png", 0), Record(image_id, 0)])
    assert not split.exists()


@pytest.mark.parametrize(("masks", "ignore"), [(("m,1.png",), ""), (("m.png",), "i\n.png"), (("m\r.png",), "")])
def test_write_split_refuses_mask_paths_with_commas_or_line_breaks(tmp_path, masks, ignore):
    split = tmp_path / "s"
    with exactly(f"{split}: a mask path of image 'a/X.png' contains a comma or a line break"):
        write_split(split, [Record("a/X.png", 0, masks=masks, ignore=ignore)])
    assert not split.exists()


def test_write_split_exact_bytes_with_capital_x_and_backslash_free_ids(tmp_path):
    split = write_split(tmp_path / "s", [
        Record("X/Xa.png", 2, (4, 3), masks=("X/m1.png", "X/m2.png"), ignore="X/ig.png"),
        Record("b.png", 0, (5, 6), masks=("XX.png",)),
    ])
    assert split == tmp_path / "s"
    assert sorted(p.name for p in split.iterdir()) == ["class_labels.txt", "image_ids.txt", "image_sizes.txt",
                                                       "localization.txt"]
    assert (split / "image_ids.txt").read_bytes() == b"X/Xa.png\nb.png\n"
    assert (split / "class_labels.txt").read_bytes() == b"X/Xa.png,2\nb.png,0\n"
    assert (split / "image_sizes.txt").read_bytes() == b"X/Xa.png,4,3\nb.png,5,6\n"
    assert (split / "localization.txt").read_bytes() == (b"X/Xa.png,X/m1.png,X/ig.png\nX/Xa.png,X/m2.png,\n"
                                                         b"b.png,XX.png,\n")
    meta = Metadata.load(split)
    assert meta.mask_paths == {"X/Xa.png": ["X/m1.png", "X/m2.png"], "b.png": ["XX.png"]}
    assert meta.ignore_paths == {"X/Xa.png": "X/ig.png", "b.png": ""}
