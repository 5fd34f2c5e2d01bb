"""`wsol localize PATH...` (wsol.localize.folder) pinned on exact outputs: run.json, the results records
(probabilities rounded to 5 digits), skipped.jsonl, the page, overlays in the display frame, saved maps,
resume, shards and the errors that name the culprit. They kill mutmut's surviving mutants of the module
(issue 12; see benchmarks/results/mutation.md).

The CAM is a stand-in (``compute_cams`` monkeypatched, as in test_pinned_localize.py): each test image is
uniform with a code in its blue channel, and the stand-in returns the map planned for that code (in the
image's display frame, so that the resize to the display size is the identity) with fixed logits, so every
box, probability and overlay pixel is known.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import wsol.localize.pipeline as pipeline_module
from stand_ins import input_rgb
from wsol.cams import CAMOutput
from wsol.errors import WSOLError
from wsol.localize.folder import LocalizeOptions, localize_images, run_config
from wsol.localize.shards import shard_of
from wsol.maps.crf import crf_on_images
from wsol.report.overlay import render_overlay

NUM_CLASSES = 3
LOGITS = (0.2, 1.6, -0.9)  # softmax 0.185595..., 0.752626..., 0.061779...: class 1 first
PROBS = torch.tensor([LOGITS]).float().softmax(1)[0].tolist()


@pytest.fixture(scope="module")
def tiny_model():
    from wsol.models import build_model

    torch.manual_seed(0)
    return build_model("resnet10t", num_classes=NUM_CLASSES, pretrained=False).eval()  # input size 176


class StandIn:
    """``compute_cams`` replaced: the map of an image is ``plans[code]`` (its blue channel's code), else zeros;
    the logits are :data:`LOGITS` for every image. Records the method and options it was asked for."""

    def __init__(self, plans: dict[int, np.ndarray]) -> None:
        self.plans = plans
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, model, images, targets=None, method="cam", **options) -> CAMOutput:
        self.calls.append((method, options))
        maps = []
        for row in input_rgb(model, images):
            code = int(row[2].median())
            near = [c for c in self.plans if abs(c - code) <= 4]
            maps.append(torch.from_numpy(self.plans[near[0]]) if near else torch.zeros(8, 8))
        b = len(maps)
        logits = torch.tensor([LOGITS] * b)
        return CAMOutput(torch.stack(maps).float(), logits, logits.argmax(1))


@pytest.fixture
def stand_in(monkeypatch):
    def install(plans: dict[int, np.ndarray]) -> StandIn:
        fake = StandIn(plans)
        monkeypatch.setattr(pipeline_module, "compute_cams", fake)
        return fake

    return install


def _pixels(wh: tuple[int, int], code: int) -> np.ndarray:
    w, h = wh
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., 1] = 40
    pixels[..., 2] = code
    return pixels


def _image(path: Path, wh: tuple[int, int], code: int, rgba: bool = False) -> None:
    pixels = _pixels(wh, code)
    if rgba:
        Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]), "RGBA").save(path)
    else:
        Image.fromarray(pixels).save(path)


def _block(shape_hw: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int], value: float = 1.0):
    m = np.zeros(shape_hw, np.float32)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = value
    return m


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _page_ids(out: Path) -> list[str]:
    page = (out / "index.html").read_text(encoding="utf-8")
    data = page.split('<script type="application/json" id="wsol-data">')[1].split("</script>")[0]
    return [r["id"] for r in json.loads(data)["records"]]


def _run(paths, out: Path, model, **options):
    return localize_images(paths, out, model, LocalizeOptions(**{"batch_size": 1, "workers": 0, **options}),
                           quiet=True)


# ---------------------------------------------------------------------------------------------- run_config


def test_run_config_records_the_model_checkpoint_and_every_setting(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = LocalizeOptions(method="gradcam", target=2, threshold=0.3, percentile=90.0, boxes="all",
                              image_size=64, save_maps=True, crf=True)
    assert run_config(options, tiny_model, "ck/m.pt") == {
        "model": "resnet10t", "checkpoint": str(tmp_path / "ck" / "m.pt"), "method": "gradcam", "target": "2",
        "threshold": 0.3, "crf": True, "save_maps": True, "percentile": 90.0, "boxes": "all", "image_size": 64}
    # a model without a name is recorded by its class
    assert run_config(LocalizeOptions(), nn.Linear(2, 3), None) == {
        "model": "Linear", "checkpoint": None, "method": "cam", "target": "top1", "threshold": 0.2, "crf": False,
        "save_maps": False, "percentile": 100.0, "boxes": "largest", "image_size": None}


# ---------------------------------------------------------------------------------------------- one run


def test_a_run_writes_exact_records_run_json_skipped_list_and_page(tiny_model, stand_in, tmp_path, monkeypatch):
    """Default workers (None), --method gradcam, a checkpoint named relatively, an RGBA image, a file that is
    not an image, and a file that is not an image by its extension."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", (300, 200), 60)
    _image(folder / "b.png", (300, 200), 120, rgba=True)
    (folder / "fake.png").write_text("not a picture\n")
    (folder / "notes.txt").write_text("hello\n")
    fake = stand_in({60: _block((200, 300), (50, 69), (100, 139)), 120: _block((200, 300), (0, 9), (0, 9), 0.5)})
    out = tmp_path / "out"
    start = time.perf_counter()
    summary = localize_images([folder], out, tiny_model,
                              LocalizeOptions(method="gradcam", threshold=0.3, batch_size=1),
                              quiet=True, checkpoint="ck/tiny.pt")
    wall = time.perf_counter() - start
    assert summary.out_dir == out
    assert (summary.processed, summary.resumed) == (2, 0)
    assert 0 < summary.seconds <= wall
    assert summary.skipped == [(str(folder / "fake.png"), "not an image (unknown format)")]
    assert summary.ignored == [str(folder / "notes.txt")]
    assert summary.notes == []
    assert [c[0] for c in fake.calls] == ["gradcam", "gradcam"]  # the method asked for, image by image

    assert json.loads((out / "run.json").read_text()) == {
        "model": "resnet10t", "checkpoint": str(tmp_path / "ck" / "tiny.pt"), "method": "gradcam",
        "target": "top1", "threshold": 0.3, "crf": False, "save_maps": False, "percentile": 100.0,
        "boxes": "largest", "image_size": 176}  # the model's own input size

    # probabilities rounded to 5 digits (all three differ at 6)
    top5 = [{"class": 1, "name": "class 1", "prob": 0.75263}, {"class": 0, "name": "class 0", "prob": 0.1856},
            {"class": 2, "name": "class 2", "prob": 0.06178}]
    assert [round(p, 5) for p in PROBS] == [0.1856, 0.75263, 0.06178]
    common = {"width": 300, "height": 200, "display_width": 300, "display_height": 200, "top5": top5,
              "target": {"class": 1, "name": "class 1", "prob": 0.75263}, "box_score": "mean", "threshold": 0.3,
              "percentile": 100.0, "method": "gradcam"}
    a, b = _lines(out / "results.jsonl")
    # the block (rows 50..69, columns 100..139): its contour box is one pixel wider; 800 / (21 * 41) inside
    assert a == {"id": "a.png", "path": str(folder / "a.png"), **common,
                 "boxes": [{"box": [100, 50, 140, 70], "score": 0.9292}], "overlay": "overlays/a.png.jpg"}
    assert b == {"id": "b.png", "path": str(folder / "b.png"), **common,
                 "boxes": [{"box": [0, 0, 10, 10], "score": round(100 / 121, 4)}],
                 "converted_from": "RGBA (alpha on white)", "overlay": "overlays/b.png.jpg"}

    assert _lines(out / "skipped.jsonl") == [
        {"path": str(folder / "fake.png"), "reason": "not an image (unknown format)"},
        {"path": str(folder / "notes.txt"), "reason": "not an image file (by extension); ignored"}]
    page = (out / "index.html").read_text()
    assert "<title>wsol localize: resnet10t / gradcam</title>" in page
    assert "<span>2 images, threshold 0.3 x p100</span>" in page
    assert _page_ids(out) == ["a.png", "b.png"]


def test_the_batch_is_lowered_to_what_memory_allows_with_a_note(tiny_model, stand_in, tmp_path, monkeypatch):
    from wsol.memory import BUDGET, activation_bytes

    per_image = activation_bytes(tiny_model, 176)
    monkeypatch.setenv("WSOL_MEMORY_LIMIT", str(int(2.5 * per_image / BUDGET)))  # room for 2 images
    _image(tmp_path / "a.png", (40, 30), 60)
    stand_in({})
    options = LocalizeOptions(batch_size=8, workers=0)
    summary = localize_images([tmp_path / "a.png"], tmp_path / "out", tiny_model, options, quiet=True)
    (note,) = summary.notes
    assert note.startswith("--batch-size 8 lowered to 2: at --image-size 176 a batch needs about ")
    assert note.endswith(" memory is free")
    assert options.batch_size == 2 and summary.processed == 1


# ---------------------------------------------------------------------------------------------- overlays, maps


def test_overlay_boxes_are_drawn_in_the_display_frame_with_the_label(tiny_model, stand_in, tmp_path):
    """1024 x 768 -> display 512 x 384 (s = 2): the record's box is in original pixels, the overlay's in the
    display's, and the overlay carries the target's label."""
    _image(tmp_path / "big.png", (1024, 768), 90)
    plan = _block((384, 512), (30, 49), (20, 59))
    stand_in({90: plan})
    out = tmp_path / "out"
    localize_images([tmp_path / "big.png"], out, tiny_model, LocalizeOptions(batch_size=1, workers=0), quiet=True)
    (rec,) = _lines(out / "results.jsonl")
    assert (rec["display_width"], rec["display_height"]) == (512, 384)
    assert rec["boxes"] == [{"box": [40, 60, 121, 101], "score": round(800 / (21 * 41), 4)}]
    display = _pixels((512, 384), 90)
    want = render_overlay(display, plan, np.array([[20, 30, 60, 50]]), f"class 1 {PROBS[1]:.0%}")
    assert f"{PROBS[1]:.0%}" == "75%"
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(want, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and (out / rec["overlay"]).read_bytes() == jpeg.tobytes()


def test_saved_maps_are_float32_in_original_pixels_and_the_crf_map_upsampled_bilinearly(tiny_model, stand_in,
                                                                                      tmp_path):
    _image(tmp_path / "wide.png", (600, 300), 150)  # display 512 x 256
    plan = _block((256, 512), (60, 139), (100, 219))
    plan[60:140, 100:160] = 0.5
    stand_in({150: plan})
    plain_out, crf_out = tmp_path / "plain", tmp_path / "crf"
    localize_images([tmp_path / "wide.png"], plain_out, tiny_model,
                    LocalizeOptions(batch_size=1, workers=0, save_maps=True), quiet=True)
    (rec,) = _lines(plain_out / "results.jsonl")
    assert rec["map"] == "maps/wide.png.npy"
    saved = np.load(plain_out / rec["map"])
    assert saved.dtype == np.float32 and saved.shape == (300, 600)

    localize_images([tmp_path / "wide.png"], crf_out, tiny_model,
                    LocalizeOptions(batch_size=1, workers=0, save_maps=True, crf=True), quiet=True)
    (rec,) = _lines(crf_out / "results.jsonl")
    saved = np.load(crf_out / rec["map"])
    assert saved.dtype == np.float32 and saved.shape == (300, 600)
    refined = crf_on_images(torch.from_numpy(_pixels((512, 256), 150))[None], plan[None])[0].astype(np.float32)
    want = F.interpolate(torch.from_numpy(refined)[None, None], size=(300, 600), mode="bilinear",
                         align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(saved, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------- resume


def test_resume_keeps_the_page_in_input_order_and_refuses_other_settings(tiny_model, stand_in, tmp_path):
    """A first run on b.png alone, an interrupted write (a torn, non-UTF-8 last line), then the whole folder:
    only a.png is done; results.jsonl keeps its order, the page follows the files' order; other settings are
    refused naming the setting."""
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", (40, 30), 60)
    _image(folder / "b.png", (40, 30), 90)
    stand_in({})
    out = tmp_path / "out"
    first = _run([folder / "b.png"], out, tiny_model)
    assert (first.processed, first.resumed) == (1, 0)
    with open(out / "results.jsonl", "ab") as log:
        log.write(b'{"id": "c\xff\xfe')
    again = _run([folder], out, tiny_model)
    assert (again.processed, again.resumed) == (1, 1)
    assert [r["id"] for r in _lines(out / "results.jsonl")] == ["b.png", "a.png"]
    assert _page_ids(out) == ["a.png", "b.png"]
    assert "<span>2 images, threshold 0.2 x p100</span>" in (out / "index.html").read_text()
    with pytest.raises(WSOLError) as error:
        _run([folder], out, tiny_model, threshold=0.5)
    assert str(error.value) == (f"--out {out}: holds results made with threshold=0.2, not 0.5; use another folder "
                                "or delete it to start over")


def test_a_folder_with_settings_but_no_results_is_taken_over(tiny_model, stand_in, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"method": "gradcam", "threshold": 0.9}))  # a run that failed early
    _image(tmp_path / "a.png", (40, 30), 60)
    stand_in({})
    assert _run([tmp_path / "a.png"], out, tiny_model).processed == 1
    assert json.loads((out / "run.json").read_text())["method"] == "cam"


def test_images_already_in_the_out_folder_are_not_input(tiny_model, stand_in, tmp_path):
    folder = tmp_path / "in"
    (folder / "out").mkdir(parents=True)
    _image(folder / "a.png", (40, 30), 60)
    _image(folder / "out" / "stray.png", (40, 30), 60)
    stand_in({})
    summary = _run([folder], folder / "out", tiny_model)
    assert summary.processed == 1
    assert [r["id"] for r in _lines(folder / "out" / "results.jsonl")] == ["a.png"]


# ---------------------------------------------------------------------------------------------- shards


def test_a_shard_takes_its_images_and_records_their_order(tiny_model, stand_in, tmp_path):
    """a.png hashes to shard 0 of 2, b.png to shard 1; two text files (as many as the images)."""
    assert (shard_of("a.png", 2), shard_of("b.png", 2)) == (0, 1)
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", (40, 30), 60)
    _image(folder / "b.png", (40, 30), 90)
    for name in ("notes.txt", "x.txt"):
        (folder / name).write_text("x\n")
    stand_in({})
    for k, image in ((0, "a.png"), (1, "b.png")):
        out = tmp_path / f"out{k}"
        summary = localize_images([folder], out, tiny_model, LocalizeOptions(batch_size=1, workers=0), quiet=True,
                                  shard=(k, 2))
        assert summary.processed == 1
        assert [r["id"] for r in _lines(out / "results.jsonl")] == [image]
        assert json.loads((out / "shard.json").read_text()) == {"shard": k, "of": 2, "mode": "images",
                                                                "order": {image: k}}
        ignored = [str(folder / n) for n in ("notes.txt", "x.txt") if shard_of(str(folder / n), 2) == k]
        assert _lines(out / "skipped.jsonl") == [
            {"path": p, "reason": "not an image file (by extension); ignored"} for p in ignored]


def test_a_shard_of_nothing_names_the_paths(tiny_model, stand_in, tmp_path):
    empty, other = tmp_path / "e1", tmp_path / "e2"
    empty.mkdir()
    other.mkdir()
    stand_in({})
    with pytest.raises(WSOLError) as error:
        localize_images([empty, other], tmp_path / "out", tiny_model, LocalizeOptions(workers=0), quiet=True,
                        shard=(0, 2))
    assert str(error.value) == f"no image found under {empty}, {other}"
    assert not (tmp_path / "out" / "shard.json").exists()


# ---------------------------------------------------------------------------------------------- loader, progress


def test_the_workers_asked_for_reach_the_loader_and_none_means_the_default(tiny_model, stand_in, tmp_path,
                                                                           monkeypatch):
    import wsol.localize.folder as folder_module
    from wsol.data.datasets import default_workers

    seen = []
    real = folder_module.image_loader

    def recording(dataset, batch_size, workers, device):
        seen.append(workers)
        return real(dataset, batch_size, 0, device)  # no worker process in the test

    monkeypatch.setattr(folder_module, "image_loader", recording)
    _image(tmp_path / "a.png", (40, 30), 60)
    stand_in({})
    _run([tmp_path / "a.png"], tmp_path / "o1", tiny_model, workers=3)
    _run([tmp_path / "a.png"], tmp_path / "o2", tiny_model, workers=None)
    assert seen == [3, default_workers(torch.device("cpu"))]


def test_the_progress_bar_counts_every_file_read_or_broken(tiny_model, stand_in, tmp_path, capsys):
    """Two images and a broken one: the bar ends at 3/3 (a broken file is a step too)."""
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", (40, 30), 60)
    _image(folder / "b.png", (40, 30), 90)
    (folder / "c.png").write_text("not a picture\n")
    stand_in({})
    summary = localize_images([folder], tmp_path / "out", tiny_model, LocalizeOptions(batch_size=1, workers=0))
    assert (summary.processed, len(summary.skipped)) == (2, 1)
    err = capsys.readouterr().err
    assert "3/3" in err and "100%" in err, err


def test_saved_crf_map_on_a_textured_image_is_upsampled_without_aligned_corners(tiny_model, stand_in, tmp_path):
    """A bright square on a dark 640 x 480 image (display 512 x 384) and a map that covers it loosely: the
    refined map follows the square's edges, so how the display grid is brought to the original size shows
    (align_corners=True would move every edge)."""
    from wsol.data.datasets import DISPLAY_SIZE, ImageSource
    from wsol.maps.normalize import minmax_normalize

    pixels = _pixels((640, 480), 200)
    pixels[100:300, 160:440, 0] = 250  # red square; blue keeps the code
    Image.fromarray(pixels).save(tmp_path / "sq.png")
    plan = np.full((384, 512), 0.2, np.float32)
    plan[60:260, 100:380] = 0.8
    stand_in({200: plan})
    out = tmp_path / "out"
    localize_images([tmp_path / "sq.png"], out, tiny_model,
                    LocalizeOptions(batch_size=1, workers=0, save_maps=True, crf=True), quiet=True)
    (rec,) = _lines(out / "results.jsonl")
    saved = np.load(out / rec["map"])
    display = ImageSource([tmp_path / "sq.png"], 176, "bicubic", DISPLAY_SIZE)[0]["display"]
    refined = crf_on_images(torch.from_numpy(display)[None], minmax_normalize(plan)[None])[0].astype(np.float32)

    def upsampled(align_corners: bool) -> np.ndarray:
        return F.interpolate(torch.from_numpy(refined)[None, None], size=(480, 640), mode="bilinear",
                             align_corners=align_corners)[0, 0].numpy()

    np.testing.assert_allclose(saved, upsampled(False), atol=1e-6)
    assert np.abs(upsampled(True) - upsampled(False)).max() > 1e-3  # far above the tolerance: it tells them apart
