"""`wsol analyze features`: feature maps built so that their shares are known, PC1's variance, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from wsol.analysis.features import (
    EVAL_SIZE,
    FeatureAnalysis,
    ImageStats,
    analyze_split,
    batch_stats,
    boxes_mask,
    channels_to_cover,
    explained_variance_ratio,
    gt_coverage,
)
from wsol.cli import app
from wsol.errors import WSOLError
from wsol.models import WSOLClassifier
from wsol.models.heads import LinearHead

runner = CliRunner()
BOX = np.array([[0, 0, 111, 111]])  # at 224: exactly the top-left 2 x 2 cells of a 4 x 4 feature map


def known_features(shares: tuple[float, float, float] = (0.92, 0.05, 0.03)) -> torch.Tensor:
    """F (4, 4, 4) for W_k = (1, 1, 1, -1): channels 0-2 carry ``shares`` of M, where M is 3 in the top-left
    2 x 2 cells (the GT) and 4/11 in the 12 others; channel 3 is 1 in the bottom-right cell only, where it
    makes the CAM negative (4/11 - 1). The CAM's positive mass: 12 inside, 11 x 4/11 = 4 outside."""
    m = torch.full((4, 4), 4 / 11, dtype=torch.float64)
    m[:2, :2] = 3
    f = torch.zeros(4, 4, 4, dtype=torch.float64)
    for c, share in enumerate(shares):
        f[c] = share * m
    f[3, 3, 3] = 1
    return f


W_K = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)


def test_gt_coverage_is_the_area_share_of_each_cell() -> None:
    inside, outside = gt_coverage(boxes_mask(BOX), None, (4, 4))
    expected = np.zeros((4, 4))
    expected[:2, :2] = 1
    np.testing.assert_array_equal(inside, expected)
    np.testing.assert_array_equal(outside, 1 - expected)
    half = boxes_mask(np.array([[0, 0, 27, 55]]))  # half of cell (0, 0): 28 of its 56 columns
    ignore = np.zeros((EVAL_SIZE, EVAL_SIZE), bool)
    ignore[:56, 28:56] = True  # the other half of that cell is ignored: neither inside nor outside
    inside, outside = gt_coverage(half, ignore, (4, 4))
    assert inside[0, 0] == pytest.approx(0.5) and outside[0, 0] == 0
    assert inside.sum() == pytest.approx(0.5) and outside.sum() == pytest.approx(15)
    inside, _ = gt_coverage(boxes_mask(np.array([[0, 0, 223, 74]])), None, (3, 3))  # 75 rows of 224 / 3
    np.testing.assert_allclose(inside[:, 0], [1, 75 / (224 / 3) - 1, 0])
    assert boxes_mask(np.array([[0, 0, 111, 111], [100, 100, 223, 223]])).sum() == 112 ** 2 + 124 ** 2 - 12 ** 2


def test_shares_and_channel_count_of_a_constructed_feature_map() -> None:
    f = torch.stack([known_features(), known_features((0.6, 0.35, 0.05)), known_features((0.5, 0.3, 0.2))])
    w = W_K.expand(3, 4)
    fg = boxes_mask(BOX)
    stats = batch_stats(f, w, [fg] * 3, [None] * 3, [BOX] * 3)
    for s in stats:
        assert s.values["gt_area"] == 0.25
        assert s.values["cam_mass_in_gt"] == pytest.approx(0.75, abs=1e-12)  # 12 / (12 + 4)
        # the evidence before channel 3 cancels it: 12 inside, 12 x 4/11 outside -> 11 / 15
        assert s.values["evidence_in_gt"] == pytest.approx(11 / 15, abs=1e-12)
    # channel contributions on the CAM's positive pixels: 92 / 5 / 3 %, 60 / 35 / 5 %, 50 / 30 / 20 %
    assert [s.values["channels_90"] for s in stats] == [1, 2, 3]
    assert [s.values["channels_90_fraction"] for s in stats] == [0.25, 0.5, 0.75]
    np.testing.assert_allclose(stats[0].curve, [0.92, 0.97, 1.0, 1.0])
    np.testing.assert_allclose(stats[2].curve, [0.5, 0.8, 1.0, 1.0])
    # channel 3 pulls the CAM down only where it is negative anyway: nothing cancelled on its positive pixels
    assert stats[0].values["cam_cancelled"] == pytest.approx(0, abs=1e-12)
    # PC1's matrix holds two patterns (M normalised, and channel 3's): rank 1 once centred
    assert stats[0].values["pc1_evr"] == pytest.approx(1.0, abs=1e-9)
    # the CAM score map (224 x 224) inside and outside the GT: every pixel counted once
    assert stats[0].hist_in.sum() == 112 ** 2 and stats[0].hist_out.sum() == 224 ** 2 - 112 ** 2
    assert stats[0].values["cam_mean_in_gt"] > 0.8 and stats[0].values["cam_mean_out_gt"] < 0.3
    # min-max normalised, the outside cells sit at (4/11 + 7/11) / (3 + 7/11) = 27.5 % > 20 %: the CAM's box at
    # 0.2 is the whole image, IoU 112^2 / 224^2 with the GT box
    assert stats[0].values["cam_box_iou_gt"] == 0.25


def test_histograms_match_an_independent_count() -> None:
    from wsol.maps.normalize import to_score_maps

    f = known_features()[None]
    fg = boxes_mask(BOX)
    ignore = np.zeros_like(fg)
    ignore[150:200, 150:200] = True
    (s,) = batch_stats(f, W_K[None], [fg], [ignore], bins=10)
    score = to_score_maps((f * W_K.view(1, 4, 1, 1)).sum(1).float(), (224, 224))[0]
    edges = np.linspace(0, 1, 11)
    np.testing.assert_array_equal(s.hist_in, np.histogram(score[fg], edges)[0])
    np.testing.assert_array_equal(s.hist_out, np.histogram(score[~fg & ~ignore], edges)[0])
    assert s.hist_out.sum() == 224 ** 2 - 112 ** 2 - 50 ** 2


def test_channel_count_edge_cases() -> None:
    g = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    g[1, 0] = -1  # a CAM with no positive mass: no count
    count, curve, cancelled = channels_to_cover(g)
    assert torch.isnan(count).all() and torch.isnan(curve).all() and torch.isnan(cancelled).all()
    g = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    g[0, 0] = torch.tensor([[2.0, 1.0]])
    g[0, 1] = torch.tensor([[-1.0, 0.0]])  # cancels half of channel 0 in the first pixel
    g[0, 2] = torch.tensor([[0.5, 0.5]])
    count, curve, cancelled = channels_to_cover(g, 0.9)
    # CAM (1.5, 1.5): positive mass 3; channel contributions 3, -1, 1: the positive ones 3 and 1 (sum 4), so
    # channel 0 alone holds 75 % (two channels for 90 %), and 1 of the 4 is cancelled
    assert count.item() == 2 and curve[0].tolist() == [0.75, 1.0, 1.0] and cancelled.item() == 0.25
    count, _, _ = channels_to_cover(g, 0.75)
    assert count.item() == 1


def test_pc1_agrees_exactly_with_the_cam_when_the_channels_share_one_pattern() -> None:
    """G = (2P, P, -P): PC1 is an affine function of P, as is the CAM (2P), so after the protocol's resize and
    min-max normalisation the two maps are the same map."""
    y, x = np.mgrid[0:7, 0:7]
    p = torch.tensor(np.exp(-((x - 3.5) ** 2 + (y - 2.5) ** 2) / 4), dtype=torch.float64)
    f = p.expand(1, 3, 7, 7).clone()
    w = torch.tensor([[2.0, 1.0, -1.0]], dtype=torch.float64)
    box = np.array([[60, 40, 180, 150]])
    (s,) = batch_stats(f, w, [boxes_mask(box)], [None], [box])
    assert s.values["pc1_evr"] == pytest.approx(1.0, abs=1e-9)
    assert s.values["pc1_cam_pearson"] == pytest.approx(1.0, abs=1e-5)
    assert s.values["pc1_cam_box_iou"] == 1.0 and s.values["pc1_cam_mask_iou"] == 1.0
    assert s.values["cam_box_iou_gt"] == s.values["pc1_box_iou_gt"] > 0.3


def test_explained_variance_ratio_matches_the_covariance_eigenvalues() -> None:
    """PCA over channels (samples) of the min-max normalised class-weighted maps: the top eigenvalue of the
    (hw x hw) covariance over the sum of them (what scikit-learn's PCA reports)."""
    gen = torch.Generator().manual_seed(0)
    f = torch.rand(3, 16, 5, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    ours = explained_variance_ratio(f, w)
    for i in range(3):
        x = (f[i] * w[i].view(16, 1, 1)).flatten(1).numpy()
        x = (x - x.min(1, keepdims=True)) / (x.max(1, keepdims=True) - x.min(1, keepdims=True))
        eigen = np.linalg.eigvalsh(np.cov(x, rowvar=False))
        assert ours[i].item() == pytest.approx(eigen[-1] / eigen.sum(), abs=1e-10)
        assert 0.1 < ours[i].item() < 0.9
    assert math.isnan(explained_variance_ratio(torch.ones(1, 3, 2, 2), torch.ones(1, 3)).item())


def test_aggregation_per_class_and_split() -> None:
    def stats(mass: float, evr: float) -> ImageStats:
        values = {key: math.nan for key in ("gt_area", "evidence_in_gt", "pc1_cam_pearson", "pc1_cam_box_iou",
                                            "pc1_cam_mask_iou", "cam_box_iou_gt", "pc1_box_iou_gt", "channels_90",
                                            "channels_90_fraction", "cam_cancelled", "cam_mean_in_gt",
                                            "cam_mean_out_gt")}
        values.update(cam_mass_in_gt=mass, pc1_evr=evr)
        return ImageStats(values, np.array([1, 0]), np.array([0, 2]), np.array([0.5, 1.0]))

    analysis = FeatureAnalysis(["a", "b", "c"], [0, 0, 1], [stats(0.2, 0.5), stats(0.4, 0.7), stats(0.9, math.nan)],
                               ["cat", "dog"], {"coverage": 0.9}, bins=2)
    per_class = analysis.per_class()
    assert per_class[0]["name"] == "cat" and per_class[0]["num_images"] == 2
    assert per_class[0]["cam_mass_in_gt"]["mean"] == pytest.approx(0.3)
    assert per_class[1]["pc1_evr"] == {"mean": None, "median": None, "std": None, "n": 0}
    split = analysis.split()
    assert split["cam_mass_in_gt"]["mean"] == pytest.approx(0.5) and split["cam_mass_in_gt"]["median"] == 0.4
    assert split["pc1_evr"]["mean"] == pytest.approx(0.6) and split["pc1_evr"]["n"] == 2
    assert split["hist_in"] == [3, 0] and split["hist_out"] == [0, 6] and split["channel_curve"] == [0.5, 1.0]
    rows = list(csv.DictReader(analysis.per_class_csv().splitlines()))
    assert [r["class"] for r in rows] == ["cat", "dog", "(split)"]
    assert float(rows[2]["cam_mass_in_gt_mean"]) == pytest.approx(0.5) and rows[1]["pc1_evr_mean"] == ""
    images = list(csv.DictReader(analysis.per_image_csv().splitlines()))
    assert [(r["image_id"], r["class"], r["cam_mass_in_gt"]) for r in images] == [
        ("a", "cat", "0.2"), ("b", "cat", "0.4"), ("c", "dog", "0.9")]
    record = json.loads(json.dumps(analysis.record()))
    assert record["per_class"]["1"]["name"] == "dog" and record["hist_edges"] == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------------------------------ whole splits
class FixedFeatures(nn.Module):
    """A backbone whose F is one stored map whatever the image, for class-dependent weights to act on."""

    def __init__(self, f: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("f", f.float())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.f.expand(x.shape[0], -1, -1, -1)


def _stand_in() -> WSOLClassifier:
    fc = nn.Linear(4, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.stack([W_K, torch.tensor([0.0, 0.0, 0.0, 1.0])]).float())
        fc.bias.zero_()
    return WSOLClassifier(FixedFeatures(known_features()), LinearHead(fc), name="stand-in").eval()


def _tiny_split(root: Path) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((224, 224, 3), 128, np.uint8)).save(images / name)
    split = root / "metadata" / "test"
    split.mkdir(parents=True)
    (split / "image_ids.txt").write_text("a.png\nb.png\n")
    (split / "class_labels.txt").write_text("a.png,0\nb.png,1\n")
    (split / "image_sizes.txt").write_text("a.png,224,224\nb.png,224,224\n")
    (split / "localization.txt").write_text("a.png,0,0,111,111\nb.png,112,112,223,223\n")
    (root / "metadata" / "class_names.txt").write_text("zero\none\n")
    return split, images


def test_analyze_split_uses_each_image_s_gt_class_and_boxes(tmp_path: Path) -> None:
    split, images = _tiny_split(tmp_path)
    analysis = analyze_split(split, images, _stand_in(), batch_size=1, device="cpu", workers=0)
    a, b = (s.values for s in analysis.stats)
    assert analysis.image_ids == ["a.png", "b.png"] and analysis.labels == [0, 1]
    assert a["cam_mass_in_gt"] == pytest.approx(0.75, abs=1e-6) and a["channels_90"] == 1
    # class 1 weighs channel 3 only: its CAM is the one bottom-right cell, inside b's GT box
    assert b["cam_mass_in_gt"] == pytest.approx(1.0) and b["channels_90"] == 1
    assert analysis.per_class()[1]["name"] == "one"
    assert analysis.settings["gt"] == "boxes" and analysis.settings["feature_map"] == [4, 4]
    only_one = analyze_split(split, images, _stand_in(), num_images=1, device="cpu", workers=0)
    assert only_one.image_ids == ["a.png"]


@pytest.mark.parametrize("kwargs, culprit", [
    ({"gt": "masks"}, "has no masks"),
    ({"gt": "both"}, "--gt must be"),
    ({"num_images": 0}, "--num-images must be >= 1"),
    ({"coverage": 1.5}, "--coverage must lie"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
])
def test_analyze_split_errors(tmp_path: Path, kwargs: dict, culprit: str) -> None:
    split, images = _tiny_split(tmp_path)
    with pytest.raises(WSOLError, match=culprit):
        analyze_split(split, images, _stand_in(), device="cpu", **kwargs)


def test_a_label_beyond_the_model_s_classes_is_an_error(tmp_path: Path) -> None:
    split, images = _tiny_split(tmp_path)
    (split / "class_labels.txt").write_text("a.png,0\nb.png,2\n")
    with pytest.raises(WSOLError, match="label 2 of 'b.png' >= the model's 2 classes"):
        analyze_split(split, images, _stand_in(), device="cpu")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wsol.data.synth import SynthConfig, generate

    config = SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, test_per_class=3, min_side=64,
                         max_side=96)
    return generate(config, tmp_path_factory.mktemp("synth") / "ds")


def test_cli_on_a_synthetic_split_with_a_random_model(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "features"
    result = runner.invoke(app, ["analyze", "features", "--metadata", str(synth / "metadata" / "test"),
                                 "--data-root", str(synth / "images"), "--mask-root", str(synth / "masks"),
                                 "--model", "resnet10t", "--random-init", "--image-size", "64", "--out", str(out),
                                 "--workers", "0", "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "CAM positive mass in GT" in result.output
    record = json.loads((out / "features.json").read_text())
    assert record["settings"]["gt"] == "masks" and record["settings"]["model"] == "resnet10t (random init)"
    assert record["settings"]["feature_channels"] == 512 and record["split"]["num_images"] == 6
    assert sorted(v["name"] for v in record["per_class"].values()) == sorted(
        (synth / "metadata" / "class_names.txt").read_text().split())
    assert sum(record["split"]["hist_in"]) > 0 and sum(record["split"]["hist_out"]) > 0
    for key in ("cam_mass_in_gt", "evidence_in_gt", "pc1_evr", "gt_area"):
        assert 0 <= record["split"][key]["mean"] <= 1
    assert 1 <= record["split"]["channels_90"]["mean"] <= 512
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    shares = [r["cam_mass_in_gt"] for r in rows]  # empty where a random CAM has no positive mass at all
    assert len(rows) == 6 and any(shares) and all(0 <= float(v) <= 1 for v in shares if v)
    assert len(list(csv.DictReader((out / "per_class.csv").open()))) == 3
    with Image.open(out / "features.png") as image:
        assert image.format == "PNG" and image.width > 800


@pytest.mark.parametrize("args, culprit", [
    (["--metadata", "MISSING"], "metadata folder not found"),
    (["--model", "no_such_net"], "unknown model 'no_such_net'"),
    (["--model", "resnet10t,resnet18"], "one model per run"),
    (["--num-images", "0"], "--num-images must be >= 1"),
    (["--gt", "masks"], "--gt masks needs --mask-root"),
    (["--data-root", "MISSING"], "folder not found"),
])
def test_cli_errors_are_one_line(synth: Path, tmp_path: Path, args: list[str], culprit: str) -> None:
    base = {"--metadata": str(synth / "metadata" / "test"), "--data-root": str(synth / "images"),
            "--model": "resnet10t"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = str(tmp_path / "missing") if value == "MISSING" else value
    flat = [x for kv in base.items() for x in kv]
    result = runner.invoke(app, ["analyze", "features", *flat, "--random-init", "--out", str(tmp_path / "o"),
                                 "--image-size", "32", "--workers", "0", "-q"])
    assert isinstance(result.exception, WSOLError), result.output
    assert culprit in str(result.exception) and "\n" not in str(result.exception)


def test_cli_with_a_checkpoint(synth: Path, tmp_path: Path) -> None:
    from wsol.models import build_model

    torch.manual_seed(0)
    torch.save(build_model("resnet10t", num_classes=2).state_dict(), tmp_path / "net.pt")
    out = tmp_path / "features"
    result = runner.invoke(app, ["analyze", "features", "--metadata", str(synth / "metadata" / "test"),
                                 "--data-root", str(synth / "images"), "--checkpoint", str(tmp_path / "net.pt"),
                                 "--model", "resnet10t", "--image-size", "64", "--out", str(out), "--workers", "0",
                                 "-n", "2", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "features.json").read_text())
    assert record["settings"]["model"] == "net" and record["settings"]["gt"] == "boxes"
    assert record["split"]["num_images"] == 2 and record["split"]["cam_box_iou_gt"]["n"] == 2
