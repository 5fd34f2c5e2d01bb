"""`wsol localize` and `wsol samples` end to end on the embedded model (offline, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import wsol.localize.pipeline as pipeline_module
from wsol.cli import app
from wsol.data.images import find_image_files, read_image
from wsol.errors import WSOLError
from wsol.localize.folder import ResultsLog
from wsol.localize.pipeline import resolve_target
from wsol.maps.boxes import scale_boxes
from wsol.samples import SAMPLES, write_samples

runner = CliRunner()


@pytest.fixture(scope="module")
def embedded():
    from wsol.models import EMBEDDED_MODEL, build_model

    return build_model(EMBEDDED_MODEL, pretrained=True).eval()


@pytest.fixture(autouse=True)
def cached_model(monkeypatch, embedded):
    """Build the embedded model once per module; the CLI's load_model returns it."""
    monkeypatch.setattr(pipeline_module, "load_model", lambda name=None, checkpoint=None, **_: embedded)


GOOD = ("chelsea_cat.png", "coffee_cup.png", "gray.png", "rgba.png", "depth16.png", "sub/rocket.jpg")
BAD = ("broken.jpg", "fake.png")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Good photos (RGB, grayscale, RGBA, 16-bit, in a sub-folder) mixed with a truncated JPEG, a text file
    named .png, and a plain text file."""
    root = tmp_path_factory.mktemp("mixed")
    write_samples(root, ["chelsea_cat.png", "coffee_cup.png"])
    cat = np.asarray(Image.open(root / "chelsea_cat.png"))
    Image.fromarray(cat).convert("L").save(root / "gray.png")
    rgba = np.dstack([cat, np.full(cat.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    gray16 = cv2.cvtColor(cat, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    cv2.imwrite(str(root / "depth16.png"), gray16)
    (root / "sub").mkdir()
    Image.fromarray(SAMPLES["rocket.jpg"]()).save(root / "sub" / "rocket.jpg", quality=90)
    data = (root / "sub" / "rocket.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 3])
    (root / "fake.png").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("hello\n")
    return root


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_mixed_folder_good_processed_bad_listed_and_resume(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["localize", str(mixed), "--out", str(out), "--batch-size", "4", "--workers", "1",
                                 "--save-maps"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert sorted(r["id"] for r in records) == sorted(GOOD)
    for r in records:
        assert set(r) >= {"path", "width", "height", "top5", "target", "boxes", "threshold", "overlay", "map"}
        assert len(r["top5"]) == 5 and all(isinstance(c["name"], str) for c in r["top5"])
        assert abs(sum(c["prob"] for c in r["top5"])) <= 1.0 + 1e-3
        assert r["threshold"] == 0.2 and r["target"]["class"] == r["top5"][0]["class"]
        assert len(r["boxes"]) == 1  # --boxes largest
        x0, y0, x1, y1 = r["boxes"][0]["box"]
        assert 0 <= x0 <= x1 < r["width"] and 0 <= y0 <= y1 < r["height"]
        assert 0 < r["boxes"][0]["score"] <= 1
        overlay = cv2.imread(str(out / r["overlay"]))
        assert overlay is not None and max(overlay.shape[:2]) <= 512
        score_map = np.load(out / r["map"])
        assert score_map.shape == (r["height"], r["width"]) and 0 <= score_map.min() and score_map.max() <= 1
    by_id = {r["id"]: r for r in records}
    assert by_id["chelsea_cat.png"]["top5"][0]["name"].endswith("cat")
    assert by_id["gray.png"]["width"] == by_id["chelsea_cat.png"]["width"] == 451
    assert "converted_from" in by_id["rgba.png"] and "converted_from" in by_id["depth16.png"]
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(Path(s["path"]).name for s in skipped) == sorted(["broken.jpg", "fake.png", "notes.txt"])
    for name in (*BAD, "notes.txt"):
        assert name in result.output
    html = (out / "index.html").read_text()
    assert all(json.dumps(i)[1:-1] in html for i in GOOD)

    again = runner.invoke(app, ["localize", str(mixed), "--out", str(out), "--workers", "0", "--save-maps", "-q"])
    assert again.exit_code == 0, again.output
    assert again.output.strip() == f"report: {out / 'index.html'}"  # --quiet: where the results are
    assert sorted(r["id"] for r in _records(out)) == sorted(GOOD)  # nothing redone, nothing duplicated

    other = runner.invoke(app, ["localize", str(mixed), "--out", str(out), "--method", "gradcam", "--save-maps",
                                "-q"])
    assert isinstance(other.exception, WSOLError) and "method" in str(other.exception)
    no_maps = runner.invoke(app, ["localize", str(mixed), "--out", str(out), "-q"])  # would leave records without
    assert isinstance(no_maps.exception, WSOLError) and "save_maps=True" in str(no_maps.exception)
    # another PATH list: the images already done (now under other keys) are not done twice
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "cup.png").write_bytes((mixed / "coffee_cup.png").read_bytes())
    more = runner.invoke(app, ["localize", str(mixed), str(extra), "--out", str(out), "--workers", "0", "--save-maps",
                               "-q"])
    assert more.exit_code == 0, more.output
    assert sorted(r["id"] for r in _records(out)) == sorted([*GOOD, "extra/cup.png"])


def test_a_run_that_failed_before_any_result_does_not_block_the_folder(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"method": "fcam"}))  # what a failed first attempt leaves
    (out / "results.jsonl").write_text("")
    result = runner.invoke(app, ["localize", str(mixed / "coffee_cup.png"), "--out", str(out), "--workers", "0",
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["method"] == "cam"
    assert [r["id"] for r in _records(out)] == ["coffee_cup.png"]


def test_a_file_name_that_is_not_utf8_is_processed_and_resumed(mixed: Path, tmp_path: Path) -> None:
    import os
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9 \xff.png")  # Latin-1 bytes: not UTF-8, kept by Python as surrogates
    shutil.copy(mixed / "coffee_cup.png", folder / odd)
    shutil.copy(mixed / "coffee_cup.png", folder / "tasse à café.png")
    out = tmp_path / "out"
    for _ in range(2):
        result = runner.invoke(app, ["localize", str(folder), "--out", str(out), "--workers", "0", "-q"])
        assert result.exit_code == 0, result.output
    assert sorted(r["id"] for r in _records(out)) == sorted([odd, "tasse à café.png"])  # once each
    assert "tasse à café" in (out / "results.jsonl").read_text(encoding="utf-8")  # readable where it can be
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "\\udcff" in page and "tasse" in page


def test_all_boxes_percentile_target_name(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    cat = mixed / "chelsea_cat.png"
    result = runner.invoke(app, ["localize", str(cat), "--out", str(out), "--boxes", "all", "--target", "tabby",
                                 "--threshold", "0.35", "--percentile", "90", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    (record,) = _records(out)
    assert record["target"]["class"] == 281 and record["percentile"] == 90
    assert len(record["boxes"]) >= 1
    nwc = runner.invoke(app, ["localize", str(cat), "--out", str(tmp_path / "nwc"), "--method", "cam+nwc",
                              "--save-maps", "--workers", "0", "-q"])
    assert nwc.exit_code == 0, nwc.output
    plain = runner.invoke(app, ["localize", str(cat), "--out", str(tmp_path / "plain"), "--save-maps", "--workers",
                                "0", "-q"])
    assert plain.exit_code == 0, plain.output
    nwc_map = np.load(tmp_path / "nwc" / _records(tmp_path / "nwc")[0]["map"])
    plain_map = np.load(tmp_path / "plain" / _records(tmp_path / "plain")[0]["map"])
    assert np.abs(nwc_map - plain_map).max() > 0.01  # negative weights clamped: another map


def test_nothing_processable_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_text("no")
    result = runner.invoke(app, ["localize", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert result.exit_code == 1
    assert "a.jpg" in result.output
    quiet = runner.invoke(app, ["localize", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--workers", "0",
                                "-q"])
    assert quiet.exit_code == 1 and "no image could be processed (1 unreadable" in quiet.output  # errors stay


@pytest.mark.parametrize("args, culprit", [
    (["--threshold", "1.5"], "--threshold"),
    (["--boxes", "some"], "--boxes"),
    (["--method", "nope"], "nope"),
    (["--method", "cam+pas"], "--percentile 90"),  # PaS in folder mode is the threshold rule
    (["--method", "cam+bogus"], "bogus"),
    (["--target", "9999"], "--target"),
    (["--target", "no such class"], "--target"),
    (["--workers", "-1"], "--workers"),
    (["--device", "meta"], "--device meta"),
    (["--device", "mps"], "--device mps"),
    (["--evaluate"], "--evaluate"),  # a --metadata option without --metadata
    (["--scoremaps", "maps"], "--scoremaps"),
])
def test_wrong_options_name_the_culprit(mixed: Path, tmp_path: Path, args: list[str], culprit: str) -> None:
    result = runner.invoke(app, ["localize", str(mixed / "gray.png"), "--out", str(tmp_path / "o"), *args])
    assert isinstance(result.exception, WSOLError) and culprit in str(result.exception)


@pytest.mark.parametrize("args", [["--target", "3"], ["--threshold", "0.5"], ["--boxes", "all"], ["--save-maps"],
                                  ["--mask-root", "m", "--scoremaps", "s"]])
def test_folder_options_with_metadata_name_the_culprit(tmp_path: Path, args: list[str]) -> None:
    evaluate = [] if "--mask-root" in args else ["--evaluate"]
    result = runner.invoke(app, ["localize", "--metadata", str(tmp_path), "--data-root", str(tmp_path),
                                 *evaluate, *args])
    assert isinstance(result.exception, WSOLError) and args[0] in str(result.exception)
    if args == ["--save-maps"]:
        assert "--scoremaps DIR" in str(result.exception)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["localize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, WSOLError) and "nope" in str(result.exception)


def test_metadata_split_scoremaps_and_evaluate(mixed: Path, tmp_path: Path) -> None:
    split = tmp_path / "meta" / "test"
    split.mkdir(parents=True)
    ids = ["chelsea_cat.png", "coffee_cup.png"]
    (split / "image_ids.txt").write_text("\n".join(ids))
    (split / "class_labels.txt").write_text("chelsea_cat.png,285\ncoffee_cup.png,967")
    (split / "image_sizes.txt").write_text("chelsea_cat.png,451,300\ncoffee_cup.png,600,400")
    (split / "localization.txt").write_text("chelsea_cat.png,40,0,420,299\ncoffee_cup.png,60,10,560,390")
    maps = tmp_path / "maps"
    result = runner.invoke(app, ["localize", "--metadata", str(split), "--data-root", str(mixed),
                                 "--scoremaps", str(maps), "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    for image_id in ids:
        m = np.load(maps / f"{image_id}.npy")
        assert m.shape == (224, 224) and m.dtype == np.float32 and m.min() == 0 and m.max() == 1
    stamps = [(maps / f"{i}.npy").stat().st_mtime_ns for i in ids]
    again = runner.invoke(app, ["localize", "--metadata", str(split), "--data-root", str(mixed),
                                "--scoremaps", str(maps), "--workers", "0"])
    assert again.exit_code == 0 and "2 already there" in again.output  # resumed: nothing recomputed
    assert "no --checkpoint" in again.output
    assert stamps == [(maps / f"{i}.npy").stat().st_mtime_ns for i in ids]
    # maps of other settings are not mixed in (nor passed off as this method's)
    other = runner.invoke(app, ["localize", "--metadata", str(split), "--data-root", str(mixed), "--scoremaps",
                                str(maps), "--method", "gradcam", "--workers", "0", "-q"])
    assert isinstance(other.exception, WSOLError) and "method='cam'" in str(other.exception)
    assert json.loads((maps / "scoremaps.json").read_text())["method"] == "cam"
    result = runner.invoke(app, ["localize", "--metadata", str(split), "--data-root", str(mixed), "--evaluate",
                                 "--cam-curve-interval", "0.01", "--out", str(tmp_path / "ev"), "--workers", "0",
                                 "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["boxes"]["num_images"] == 2
    assert metrics["boxes"]["MaxBoxAcc"] == 100.0  # both photos are mostly object
    assert metrics["boxes"]["top1_cls"] == 100.0


@pytest.mark.slow
def test_metadata_split_with_crf_refines_the_protocol_maps(mixed: Path, tmp_path: Path) -> None:
    """--crf on a split: each saved map is the CRF of the plain 224 x 224 map against the 224 x 224 image."""
    from wsol.data.datasets import ImageSource
    from wsol.maps.crf import crf_on_images

    split = tmp_path / "meta"
    split.mkdir()
    (split / "image_ids.txt").write_text("chelsea_cat.png\n")
    (split / "class_labels.txt").write_text("chelsea_cat.png,285\n")
    (split / "image_sizes.txt").write_text("chelsea_cat.png,451,300\n")
    (split / "localization.txt").write_text("chelsea_cat.png,40,0,420,299\n")
    maps = {}
    for name, extra in (("plain", []), ("crf", ["--crf"])):
        result = runner.invoke(app, ["localize", "--metadata", str(split), "--data-root", str(mixed), "--scoremaps",
                                     str(tmp_path / name), "--workers", "0", "-q", *extra])
        assert result.exit_code == 0, result.output
        maps[name] = np.load(tmp_path / name / "chelsea_cat.png.npy")
    image = ImageSource([mixed / "chelsea_cat.png"], 224, "bilinear", display_size=0, exact=True)[0]["image"]
    want = crf_on_images(image[None], maps["plain"][None])[0]
    np.testing.assert_allclose(maps["crf"], want, atol=1e-6)
    assert np.abs(maps["crf"] - maps["plain"]).mean() > 0.01  # the CRF did change the map
    result = runner.invoke(app, ["localize", "--metadata", str(split), "--data-root", str(mixed), "--evaluate",
                                 "--crf", "--out", str(tmp_path / "ev"), "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["crf"] is True


def test_samples_command(tmp_path: Path) -> None:
    result = runner.invoke(app, ["samples", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(SAMPLES)


def test_helpers(tmp_path: Path) -> None:
    assert scale_boxes(np.array([[0, 0, 1, 1]]), (2, 2), (4, 6)).tolist() == [[0, 0, 3, 5]]
    assert scale_boxes(np.array([[1, 0, 1, 0]]), (4, 4), (2, 2)).tolist() == [[0, 0, 0, 0]]
    names = ["tabby, tabby cat", "tiger cat", "Egyptian cat"]
    assert resolve_target("top1", names) is None
    assert resolve_target("2", names) == 2
    assert resolve_target("TABBY CAT", names) == 0
    with pytest.raises(WSOLError, match="ambiguous"):
        resolve_target("cat", names)
    log = tmp_path / "results.jsonl"
    log.write_text('{"id": "a"}\n{"id": "b"')  # a torn last line from an interrupted run
    results = ResultsLog(log)
    assert results.done == {"a"}
    results.append([{"id": "c"}])
    results.close()
    assert [json.loads(x)["id"] for x in log.read_text().splitlines()] == ["a", "c"]
    big = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(big, quality=80)
    image, w, h, _ = read_image(big, draft_size=512)
    assert (w, h) == (6000, 4000) and max(image.size) < 6000  # draft decoding of a large JPEG
    found = find_image_files([tmp_path])
    # the folder holds a results.jsonl: a wsol output folder, whose own files are skipped without a word
    assert [p.name for p in found.files] == ["big.jpg"] and found.ignored == []
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_image_files([tmp_path]).ignored] == ["notes.txt"]
    from types import SimpleNamespace

    from wsol.localize.pipeline import preprocessing

    broken = SimpleNamespace(name="m", data_config={"input_size": (3, 0, 0), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    with pytest.raises(WSOLError, match="'m': unusable preprocessing in its data_config .input size 0"):
        preprocessing(broken)


def test_checkpoint_state_dict(mixed: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    from wsol.models import EMBEDDED_MODEL, build_model

    monkeypatch.undo()  # the real loader
    model = build_model(EMBEDDED_MODEL, num_classes=3, pretrained=False)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "tiny.pt")
    out = tmp_path / "o"
    result = runner.invoke(app, ["localize", str(mixed / "coffee_cup.png"), "--out", str(out), "--checkpoint",
                                 str(tmp_path / "tiny.pt"), "--target", "2", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    (record,) = _records(out)
    assert len(record["top5"]) == 3 and record["target"] == {**record["target"], "class": 2, "name": "class 2"}
    bad = runner.invoke(app, ["localize", str(mixed), "--out", str(out), "--checkpoint", str(tmp_path / "no.pt")])
    assert isinstance(bad.exception, WSOLError) and "no.pt" in str(bad.exception)
