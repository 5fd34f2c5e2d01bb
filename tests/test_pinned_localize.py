"""`wsol localize` on folders, pinned to hand-computed numbers: boxes in original pixels (several sizes and EXIF
orientations), ``--boxes all`` vs ``largest``, the box score (the MEAN map value inside the box), and
``--save-maps`` with ``--crf`` (the saved map is the one the boxes were drawn from).

The CAM is a stand-in (``compute_cams`` monkeypatched): each test image carries a code in its blue channel,
and the stand-in returns, for that code, a map planned in the image's display frame (longest side <= 512), so
that the resize to the display size is the identity and every box is known exactly; or a map read from the
image's red channel (an honest "model" that sees the object) for the EXIF orientation checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import wsol.localize.pipeline as pipeline_module
from stand_ins import input_rgb
from wsol.cams import CAMOutput
from wsol.cli import app
from wsol.maps import box_iou
from wsol.maps.boxes import boxes_with_scores

runner = CliRunner()
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny_model():
    from wsol.models import build_model

    torch.manual_seed(0)
    return build_model("resnet10t", num_classes=NUM_CLASSES, pretrained=False).eval()


class StandIn:
    """``compute_cams`` replaced: the map for an image is ``plans[code]`` (display frame) when its blue
    channel carries a planned code, else the model input's red channel (B, S, S) in [0, 1]."""

    def __init__(self, plans: dict[int, np.ndarray]) -> None:
        self.plans = plans
        self.calls = 0

    def __call__(self, model, images, targets=None, method="cam", **_options) -> CAMOutput:
        self.calls += 1
        maps = []
        for row in input_rgb(model, images):
            code = int(row[2].median())
            near = [c for c in self.plans if abs(c - code) <= 6]
            maps.append(torch.from_numpy(self.plans[near[0]]) if near else row[0] / 255)
        b = len(maps)
        assert b == 1 or len({tuple(m.shape) for m in maps}) == 1, "planned maps of one batch share a shape"
        logits = torch.zeros(b, NUM_CLASSES)
        logits[:, 1] = 5.0
        return CAMOutput(torch.stack(maps).float(), logits, torch.ones(b, dtype=torch.long))


@pytest.fixture
def stand_in(monkeypatch, tiny_model):
    def install(plans: dict[int, np.ndarray]) -> StandIn:
        fake = StandIn(plans)
        monkeypatch.setattr(pipeline_module, "compute_cams", fake)
        monkeypatch.setattr(pipeline_module, "load_model", lambda name=None, checkpoint=None, **_: tiny_model)
        return fake

    return install


def _image(path: Path, stored_wh: tuple[int, int], code: int, orientation: int = 1,
           red: np.ndarray | None = None) -> None:
    """An image file of stored size ``(w, h)``: blue = ``code`` everywhere, red = ``red`` (stored frame) or 0,
    with the EXIF orientation tag when not 1 (JPEG, quality 95) or a PNG."""
    w, h = stored_wh
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., 2] = code
    pixels[..., 1] = 40
    if red is not None:
        pixels[..., 0] = red
    image = Image.fromarray(pixels)
    if orientation == 1:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, quality=95, exif=exif)


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {json.loads(x)["id"]: json.loads(x) for x in lines}


def _localize(paths: list[Path], out: Path, *extra: str) -> dict[str, dict]:
    result = runner.invoke(app, ["localize", *map(str, paths), "--out", str(out), "--batch-size", "1",
                                 "--workers", "0", "-q", *extra])
    assert result.exit_code == 0, result.output
    return _records(out)


def _block(shape_hw: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """A display-frame map: rows r0..r1 and columns c0..c1 (inclusive) are 1 on their left half of columns
    and 0.5 on the right half, the rest 0."""
    m = np.zeros(shape_hw, np.float32)
    (r0, r1), (c0, c1) = rows, cols
    mid = (c0 + c1 + 1) // 2
    m[r0:r1 + 1, c0:mid] = 1.0
    m[r0:r1 + 1, mid:c1 + 1] = 0.5
    return m


# (file, stored (w, h), EXIF orientation, upright (w, h), display (w, h), block rows, block cols, expected box)
# The block's contour box is one pixel wider than the block (x1 = c1 + 1, y1 = r1 + 1, the reference's
# boundingRect quirk), and display pixel [x0, x1] covers original [floor(x0 s), ceil((x1 + 1) s) - 1].
CASES = [
    # small: display = original
    ("a_small.png", (300, 200), 1, (300, 200), (300, 200), (50, 69), (100, 139), [100, 50, 140, 70]),
    # 1024 x 768 -> 512 x 384, s = 2: x0 = 2 * 20 = 40, x1 = 2 * (59 + 1 + 1) - 1 = 121
    ("b_large.png", (1024, 768), 1, (1024, 768), (512, 384), (30, 49), (20, 59), [40, 60, 121, 101]),
    # 600 x 1200 -> 256 x 512, s = 600 / 256 = 2.34375: x0 = floor(10 s) = 23, x1 = ceil(32 s) - 1 = 74,
    # y0 = floor(100 s) = 234, y1 = ceil(151 s) - 1 = 353
    ("c_tall.png", (600, 1200), 1, (600, 1200), (256, 512), (100, 149), (10, 30), [23, 234, 74, 353]),
    # stored 1024 x 512, EXIF 8 (rotate 90 CCW to view): upright 512 x 1024 -> display 256 x 512, s = 2
    ("d_exif8.jpg", (1024, 512), 8, (512, 1024), (256, 512), (300, 339), (5, 44), [10, 600, 91, 681]),
    # stored 768 x 1024, EXIF 6 (rotate 90 CW): upright 1024 x 768 -> display 512 x 384, s = 2
    ("e_exif6.jpg", (768, 1024), 6, (1024, 768), (512, 384), (0, 9), (400, 499), [800, 0, 1001, 21]),
    # 700 x 350, EXIF 3 (180 degrees): the same frame -> display 512 x 256, s = 700 / 512 = 1.3671875:
    # x0 = floor(500 s) = 683, x1 = min(ceil(512 s) - 1, 699) = 699 (the block touches the right edge: its
    # contour box is clipped to W - 1 = 511 in the display frame); y0 = floor(200 s) = 273, y1 = ceil(256 s)-1
    ("f_exif3.jpg", (700, 350), 3, (700, 350), (512, 256), (200, 255), (500, 511), [683, 273, 699, 349]),
]


def test_boxes_are_in_original_pixels_for_every_size_and_orientation(stand_in, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    plans = {}
    for i, (name, stored, orientation, _upright, display, rows, cols, _box) in enumerate(CASES):
        code = 40 + 30 * i
        _image(folder / name, stored, code, orientation)
        plans[code] = _block((display[1], display[0]), rows, cols)
    fake = stand_in(plans)
    records = _localize([folder], tmp_path / "out")
    assert fake.calls == len(CASES)
    for name, _stored, _o, upright, display, _rows, _cols, box in CASES:
        rec = records[name]
        assert (rec["width"], rec["height"]) == upright, name
        assert (rec["display_width"], rec["display_height"]) == display, name
        assert [b["box"] for b in rec["boxes"]] == [box], name


def test_box_score_is_the_mean_of_the_map_inside_the_box(stand_in, tmp_path: Path) -> None:
    # display 300 x 200 = original. Block rows 50..59 (10), columns 100..119 (20): 1.0 on columns 100..109,
    # 0.5 on 110..119. Its box (100, 50, 120, 60) holds 11 x 21 = 231 pixels summing to 100 + 50 = 150:
    # mean 150 / 231 = 0.64935 (the max would be 1, the mean over the block alone 0.75).
    _image(tmp_path / "s.png", (300, 200), 90)
    stand_in({90: _block((200, 300), (50, 59), (100, 119))})
    (rec,) = _localize([tmp_path / "s.png"], tmp_path / "out").values()
    assert rec["boxes"] == [{"box": [100, 50, 120, 60], "score": 0.6494}]
    assert rec["box_score"] == "mean"


def _two_regions() -> np.ndarray:
    """Display 512 x 384: a big block (rows 20..59, columns 30..109) and a small one (rows 120..139, columns
    200..219, all 0.8), apart."""
    m = _block((384, 512), (20, 59), (30, 109))
    m[120:140, 200:220] = 0.8
    return m


def test_boxes_all_keeps_every_region_largest_only_the_largest(stand_in, tmp_path: Path) -> None:
    _image(tmp_path / "two.png", (1024, 768), 120)  # display 512 x 384, s = 2
    stand_in({120: _two_regions()})
    big = {"box": [60, 40, 221, 121], "score": round((40 * 40 + 40 * 40 * 0.5) / (41 * 81), 4)}  # 0.7227
    small = {"box": [400, 240, 441, 281], "score": round(20 * 20 * 0.8 / (21 * 21), 4)}  # 0.7256
    (largest,) = _localize([tmp_path / "two.png"], tmp_path / "largest").values()
    assert largest["boxes"] == [big]
    (every,) = _localize([tmp_path / "two.png"], tmp_path / "all", "--boxes", "all").values()
    assert every["boxes"] == [big, small]  # largest first


def _crf_scene(h: int = 200, w: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A bright object (rows 60..139, columns 100..219) on a dark ground, and a map that spills 12 pixels
    past its left edge and stops 30 pixels short of its right edge (a CAM blurred across a colour edge)."""
    red = np.zeros((h, w), np.uint8)
    red[60:140, 100:220] = 255
    xs = np.arange(w, dtype=np.float32)
    profile = 1 / (1 + np.exp(-(xs - 88) / 4)) * 1 / (1 + np.exp((xs - 190) / 4))
    rows = np.zeros(h, np.float32)
    rows[50:150] = 1.0
    score = rows[:, None] * profile[None, :]
    return red, (score / score.max()).astype(np.float32)


@pytest.mark.parametrize("stored", [(300, 200), (1024, 768)])
def test_save_maps_with_crf_saves_the_map_the_boxes_come_from(stand_in, tmp_path: Path,
                                                             stored: tuple[int, int]) -> None:
    scale = 1 if stored[0] <= 512 else 2  # display 300 x 200 = original, or 512 x 384 (s = 2)
    red, plan = _crf_scene(stored[1] // scale, stored[0] // scale)
    _image(tmp_path / "obj.png", stored, 150, red=np.kron(red, np.ones((scale, scale), np.uint8)))
    stand_in({150: plan})
    plain = _localize([tmp_path / "obj.png"], tmp_path / "plain", "--save-maps")["obj.png"]
    refined = _localize([tmp_path / "obj.png"], tmp_path / "crf", "--save-maps", "--crf")["obj.png"]
    assert plain["boxes"] != refined["boxes"]  # the CRF moved the box (to the object's edges)
    for out, rec in ((tmp_path / "plain", plain), (tmp_path / "crf", refined)):
        saved = np.load(out / rec["map"])
        assert saved.shape == (stored[1], stored[0])
        # the boxes the saved map gives, in the same units, are the record's boxes
        again = boxes_with_scores(saved, rec["threshold"], rec["percentile"], "largest", stored)
        if scale == 1:  # display = original: the very same map
            assert again == rec["boxes"], out.name
        else:  # traced at another resolution: the same box up to a pixel of resampling
            got, want = np.array(again[0]["box"]), np.array(rec["boxes"][0]["box"])
            assert np.abs(got - want).max() <= 2 * scale, (out.name, got, want)
    # the refined box is closer to the object's (columns 100..219, rows 60..139 of the display) than the map's
    obj = np.array([[100 * scale, 60 * scale, 220 * scale - 1, 140 * scale - 1]])
    iou = {name: box_iou(np.array([rec["boxes"][0]["box"]]), obj)[0, 0] for name, rec in
           (("plain", plain), ("crf", refined))}
    assert iou["crf"] > iou["plain"] + 0.05, iou


# EXIF orientations as the camera writes them: the object sits in the top-left quadrant of the upright photo.
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_boxes_follow_the_upright_image(stand_in, tmp_path: Path, orientation: int) -> None:
    upright_w, upright_h = 640, 480
    red = np.zeros((upright_h, upright_w), np.uint8)
    red[40:200, 60:300] = 255  # the object: x 60..299, y 40..199 in the upright frame
    # the stored pixels are the upright ones turned back (exif_transpose undoes it)
    back = {1: red, 3: np.rot90(red, 2), 6: np.rot90(red, 1), 8: np.rot90(red, -1)}[orientation]
    stored = (back.shape[1], back.shape[0])
    _image(tmp_path / "photo.jpg", stored, 200, orientation, red=np.ascontiguousarray(back))
    stand_in({})  # the map is the model input's red channel: where the object is
    (rec,) = _localize([tmp_path / "photo.jpg"], tmp_path / "out", "--threshold", "0.5",
                       "--image-size", "64").values()
    assert (rec["width"], rec["height"]) == (upright_w, upright_h)
    (box,) = [b["box"] for b in rec["boxes"]]
    # through a 64 x 64 model input and a bicubic resize: the object's box within 2 input pixels (20 px)
    assert np.abs(np.array(box) - [60, 40, 300, 200]).max() <= 20, box
