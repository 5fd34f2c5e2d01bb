"""`wsol evaluate` end to end on a small split with boxes and masks, and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from protocol_oracle import oracle_box_accuracy, oracle_pxap
from scoremap_cases import smooth_map
from wsol.data.metadata import Metadata
from wsol.errors import WSOLError
from wsol.metrics.scoremaps import evaluate_scoremaps


@pytest.fixture
def split(tmp_path):
    """Six images of odd original sizes with boxes and masks, and a score map for each."""
    rng = np.random.default_rng(0)
    meta, masks, maps = tmp_path / "meta" / "test", tmp_path / "masks", tmp_path / "scoremaps"
    meta.mkdir(parents=True)
    ids, sizes, boxes, mask_lines = [], [], [], []
    for n in range(6):
        image_id = f"class{n % 2}/img{n}.jpg"
        width, height = int(rng.integers(100, 600)), int(rng.integers(100, 600))
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = int(rng.integers(x0 + 1, width)), int(rng.integers(y0 + 1, height))
        ids.append(image_id)
        sizes.append(f"{image_id},{width},{height}")
        boxes.append(f"{image_id},{x0},{y0},{x1},{y1}")
        mask = np.zeros((height, width), np.uint8)
        mask[y0:y1 + 1, x0:x1 + 1] = 255
        (masks / f"class{n % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(masks / f"class{n % 2}" / f"img{n}.png"), mask)
        mask_lines.append(f"{image_id},class{n % 2}/img{n}.png,")
        (maps / f"class{n % 2}").mkdir(parents=True, exist_ok=True)
        np.save(maps / f"{image_id}.npy", smooth_map(rng, grid=4, power=2.0))
    (meta / "image_ids.txt").write_text("\n".join(ids))
    (meta / "class_labels.txt").write_text("\n".join(f"{i},{n % 2}" for n, i in enumerate(ids)))
    (meta / "image_sizes.txt").write_text("\n".join(sizes))
    (meta / "localization.txt").write_text("\n".join(boxes))
    (meta / "mask_localization.txt").write_text("\n".join(mask_lines))
    return meta, masks, maps


def wsol(*args):
    return subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=120)


def test_evaluate_writes_the_oracles_numbers(split, tmp_path):
    meta, masks, maps = split
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--mask-root", str(masks),
               "--cam-curve-interval", "0.01", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "c.png"),
               "--quiet")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    metadata = Metadata.load(meta)
    score_maps = [np.load(maps / f"{i}.npy") for i in metadata.image_ids]
    gt = [metadata.resized_boxes()[i] for i in metadata.image_ids]
    largest = oracle_box_accuracy(score_maps, gt, 0.01, multi_contour=False)
    every = oracle_box_accuracy(score_maps, gt, 0.01, multi_contour=True)
    assert result["MaxBoxAcc"] == largest[50].max()
    assert result["MaxBoxAccV2"] == np.mean([every[i].max() for i in (30, 50, 70)])
    fg, ignore = zip(*(metadata.load_mask(i, masks) for i in metadata.image_ids))
    assert result["PxAP"] == oracle_pxap(score_maps, fg, ignore, 0.01)
    assert result["num_images"] == 6 and result["cam_curve_interval"] == 0.01
    assert "MaxBoxAcc" in out.stdout and "PxAP" in out.stdout
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_missing_score_map_is_a_one_line_error(split):
    meta, masks, maps = split
    (maps / "class1" / "img3.jpg.npy").unlink()
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--quiet")
    assert out.returncode == 2
    assert "img3.jpg.npy: score map not found" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_malformed_and_out_of_range_score_maps_are_named(split):
    meta, masks, maps = split
    np.save(maps / "class0" / "img0.jpg.npy", np.zeros((100, 100), np.float32))
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--quiet")
    assert out.returncode == 2 and "img0.jpg.npy: score map has shape (100, 100)" in out.stderr
    np.save(maps / "class0" / "img0.jpg.npy", np.full((224, 224), 3.0, np.float32))
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--quiet")
    assert out.returncode == 2 and "img0.jpg.npy: values must lie in [0, 1]" in out.stderr
    (maps / "class0" / "img0.jpg.npy").write_text("not numpy")
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--quiet")
    assert out.returncode == 2 and "img0.jpg.npy: not a readable .npy" in out.stderr


def test_too_fine_cam_curve_interval_is_a_one_line_error(split):
    meta, masks, maps = split
    # 1e-9 (10^9 thresholds) was killed for memory; 5e-5 shows the bound without that risk
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--cam-curve-interval", "5e-05",
               "--quiet")
    assert out.returncode == 2, out.stderr
    assert "cam_curve_interval must lie in [0.0001, 1)" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_interval_that_misses_0_2_leaves_out_boxacc_at_0_2(split):
    meta, masks, maps = split
    out = wsol("evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--cam-curve-interval", "0.7",
               "--quiet")
    assert out.returncode == 0, out.stderr
    assert "MaxBoxAcc" in out.stdout and "tau = 0.2" not in out.stdout


def write_huge_header(path):
    with open(path, "wb") as file:  # a header only: no data behind its claimed 4 TB
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False,
                                                    "shape": (1_000_000, 1_000_000)})


def write_npz(path):
    with open(path, "wb") as file:
        np.savez(file, scoremap=np.zeros((224, 224), np.float32))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: np.save(p, np.zeros((224, 224), np.complex64)), "score map has dtype complex64"),
        (lambda p: np.save(p, np.full((224, 224), "0")), "score map has dtype <U1"),
        (lambda p: np.save(p, np.zeros((224, 224), [("score", "<f4")])), r"score map has dtype \[\('score'"),
        (write_npz, r"a zip archive \(an .npz\?\), not a .npy score map"),
        (write_huge_header, r"score map has shape \(1000000, 1000000\), expected \(224, 224\)"),
    ],
)
def test_each_score_map_file_is_checked_on_its_own(split, write, message):
    meta, masks, maps = split
    bad = maps / "class1" / "img3.jpg.npy"  # not the first of its batch: the error must still name it
    write(bad)
    with pytest.raises(WSOLError, match=rf"^{re.escape(str(bad))}: {message}") as error:
        evaluate_scoremaps(Metadata.load(meta), maps, masks, cam_curve_interval=0.01)
    assert "\n" not in str(error.value)


def test_int_and_bool_score_maps_count_as_float32_whatever_their_neighbours(split):
    meta, masks, maps = split
    metadata = Metadata.load(meta)
    paths = [maps / f"{i}.npy" for i in metadata.image_ids]
    binary = [metadata.load_mask(i, masks)[0] for i in metadata.image_ids]  # each image's GT box, filled

    def evaluate(dtypes):
        for path, score_map, dtype in zip(paths, binary, dtypes):
            np.save(path, score_map.astype(dtype))
        return evaluate_scoremaps(metadata, maps, masks, cam_curve_interval=0.01)[0]

    as_float = evaluate([np.float32] * 6)
    float_maps = [m.astype(np.float32) for m in binary]
    gt = [metadata.resized_boxes()[i] for i in metadata.image_ids]
    assert as_float["MaxBoxAcc"] == oracle_box_accuracy(float_maps, gt, 0.01, multi_contour=False)[50].max()
    fg, ignore = zip(*(metadata.load_mask(i, masks) for i in metadata.image_ids))
    assert as_float["PxAP"] == oracle_pxap(float_maps, fg, ignore, 0.01) > 0
    assert evaluate([bool] * 6) == as_float  # a batch of bool maps used to be rejected as not float
    assert evaluate([np.float32, np.float32, np.float32, np.uint8, np.float32, np.float32]) == as_float
    assert evaluate([np.int64] * 6) == as_float
