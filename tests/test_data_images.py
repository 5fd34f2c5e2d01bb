"""Image decoding: odd modes become exact 8-bit RGB, broken files raise a WSOLError naming the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from wsol.data import images as images_module
from wsol.data.images import find_images, load_image
from wsol.errors import WSOLError


def rgb(path):
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale_and_palette(tmp_path):
    gray = np.array([[0, 10], [200, 255]], dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(rgb(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb(tmp_path / "p.png"), [[[255, 0, 0], [0, 0, 255]]])


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])  # opaque: unchanged
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])  # transparent: white, not the hidden red
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)  # half black over white


def test_16_bit_png_and_tiff_scale_to_8_bit(tmp_path):
    deep = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    Image.fromarray(deep).save(tmp_path / "d.tif")
    for name in ("d.png", "d.tif"):
        np.testing.assert_array_equal(rgb(tmp_path / name)[..., 0], [[0, 100], [200, 255]])


def test_cmyk_and_exif_orientation(tmp_path):
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    red = rgb(tmp_path / "c.jpg")
    assert red.shape == (2, 3, 3) and red[..., 0].min() > 240 and red[..., 1:].max() < 15
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[:, 0] = 255  # left column white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif)
    out = rgb(tmp_path / "r.png")
    assert out.shape == (4, 2, 3)
    assert out[0].min() == 255 and out[1:].max() == 0  # the left column became the top row


def test_broken_files_name_the_file(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # header cut: fails when opened
    (tmp_path / "tail.jpg").write_bytes(data[:-40])  # scan data cut: fails when decoded
    (tmp_path / "text.jpg").write_text("not an image")
    cases = (("cut.jpg", "truncated"), ("tail.jpg", "truncated"), ("text.jpg", "not an image"), ("none.png", ""))
    for name, why in cases:
        with pytest.raises(WSOLError, match=str(tmp_path / name)) as info:
            load_image(tmp_path / name)
        assert why in str(info.value).lower() and "\n" not in str(info.value)


def test_size_cap_and_jpeg_draft(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((400, 600, 3), np.uint8)).save(tmp_path / "big.jpg")
    assert load_image(tmp_path / "big.jpg", draft_size=100).size == (150, 100)  # decoded at 1/4 scale
    monkeypatch.setattr(images_module, "MAX_PIXELS", 1000)
    with pytest.raises(WSOLError, match="big.jpg: too large"):
        load_image(tmp_path / "big.jpg")
    monkeypatch.setattr(images_module, "MAX_PIXELS", 200_000)  # 240,000 pixels: PIL alone refuses only at 2x
    with pytest.raises(WSOLError, match="big.jpg: too large .600 x 400"):
        load_image(tmp_path / "big.jpg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX links and pipes")
def test_find_image_files_survives_link_loops_and_pipes(tmp_path):
    from wsol.data.images import find_image_files

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    os.symlink("..", tmp_path / "d" / "up1")  # two links back up: an unguarded walk grows exponentially
    os.symlink("..", tmp_path / "d" / "up2")
    os.mkfifo(tmp_path / "d" / "pipe.jpg")  # reading it would block forever
    found = find_image_files(str(tmp_path))  # a single path as a string, too
    assert found.keys == ["d/a.png"]
    assert sorted(p.name for p in found.ignored) == ["notes.txt", "pipe.jpg"]
    with pytest.raises(WSOLError, match="pipe.jpg: not a regular file"):
        find_image_files([tmp_path / "d" / "pipe.jpg"])


def test_find_images_sorted_recursive_and_explicit_files(tmp_path):
    for rel in ("b/2.png", "b/sub/1.JPG", "a.jpeg", ".hidden/x.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpeg", "b/2.png", "b/sub/1.JPG"]
    assert find_images([tmp_path / "notes.txt", tmp_path / "a.jpeg", tmp_path]) == sorted(
        [*found, tmp_path / "notes.txt"], key=lambda p: p.as_posix()
    )
    with pytest.raises(WSOLError, match="missing"):
        find_images(tmp_path / "missing")


def _photo(tmp_path, name: str, size=(333, 250)):
    from wsol.samples import SAMPLES

    image = Image.fromarray(SAMPLES["chelsea_cat.png"]()).convert("RGB").resize(size)
    image.save(tmp_path / name, quality=92) if name.endswith(".jpg") else image.save(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("name", ["cat.jpg", "cat.png"])
def test_exact_source_and_batch_normalisation_equal_the_eval_transform(tmp_path, name):
    """The split path of `wsol localize` feeds the model bit for bit what `wsol train` evaluates on."""
    import torch

    from wsol.data.datasets import ImageSource, collate_images
    from wsol.data.transforms import eval_transform, normalize_batch

    path = _photo(tmp_path, name)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = collate_images([ImageSource([path], 224, "bilinear", display_size=0, exact=True)[0]])
    got = normalize_batch(batch["images"], mean, std)
    want = eval_transform(224, mean, std)(load_image(path))[None]
    assert got.shape == want.shape == (1, 3, 224, 224)
    assert torch.equal(got, want)


@pytest.mark.parametrize(("size", "mean_diff"), [((1200, 800), 0.05), ((2400, 1600), 0.3)],
                         ids=["full-decode", "half-scale-draft"])
def test_fast_source_is_pil_up_to_rounding_and_keeps_the_aspect_for_display(tmp_path, size, mean_diff):
    from wsol.data.datasets import ImageSource

    path = _photo(tmp_path, "wide.jpg", size=size)
    item = ImageSource([path], 224, "bicubic", display_size=512)[0]
    assert (item["width"], item["height"]) == size
    assert item["display"].shape == (341, 512, 3) and item["display"].dtype == np.uint8  # 800 * 512 / 1200
    assert item["image"].shape == (224, 224, 3)
    # PIL's bicubic on the full decode (what timm's pipeline does) vs torchvision's uint8 kernels on the
    # decode at the largest DCT scale that keeps 512 px (the 2400 x 1600 JPEG decodes at 1200 x 800)
    pil = np.asarray(load_image(path).resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64)
    diff = np.abs(item["image"].numpy().astype(np.float64) - pil)
    assert diff.mean() < mean_diff and diff.max() <= 2


def test_default_workers_leave_the_cpu_to_the_model():
    import torch

    from wsol.data.datasets import default_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [default_workers(cpu, n) for n in (1, 2, 3, 4, 8, 16, 64)] == [0, 0, 0, 1, 2, 4, 4]
    assert [default_workers(gpu, n) for n in (1, 2, 3, 8)] == [1, 1, 2, 4]
