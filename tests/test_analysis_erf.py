"""`wsol analyze erf`: the ERF of models whose answer is known by construction, the area ratios, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from wsol.analysis.erf import (
    ERFAccumulator,
    ERFResult,
    area_ratios,
    centred_square_sums,
    contribution_maps,
    log_scaled,
    measure_erf,
)
from wsol.cli import app
from wsol.errors import WSOLError

runner = CliRunner()


class ConvStack(nn.Module):
    """k 3x3 convolutions (3 -> 1, then 1 -> 1), zero bias, ReLU after each but the last; ``features`` is
    the last map (same size as the input)."""

    def __init__(self, kernels: list[torch.Tensor]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, kernel in enumerate(kernels):
            conv = nn.Conv2d(3 if i == 0 else 1, 1, 3, padding=1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(kernel.expand_as(conv.weight))
            layers += [conv, nn.ReLU()]
        self.body = nn.Sequential(*layers[:-1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _positive_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return 0.5 + 0.5 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def trinomial(k: int) -> np.ndarray:
    """Row k of the trinomial triangle: the number of paths through k all-ones 3-tap filters, by offset."""
    row = np.array([1])
    for _ in range(k):
        row = np.convolve(row, [1, 1, 1])
    return row


def test_single_conv_erf_is_its_positive_kernel_and_the_ratios_are_the_hand_computed_ones() -> None:
    kernel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 4.0, 2.0], [0.0, 1.0, 0.0]])
    model = ConvStack([kernel])
    result = measure_erf(model, [_positive_images(2, 15), _positive_images(3, 15, seed=1)])
    expected = np.zeros((15, 15))
    expected[6:9, 6:9] = 3 * np.array([[1, 0, 0], [2, 4, 2], [0, 1, 0]])  # relu(kernel) summed over 3 colours
    np.testing.assert_array_equal(result.erf, expected)
    assert result.num_images == 5 and result.skipped == 0 and result.feature_shape == (1, 15, 15)
    # log10(1 + x) / max: the centre 1, the 2s log10(7)/log10(13), the 1s log10(4)/log10(13)
    total = 1 + 2 * math.log10(7) / math.log10(13) + 2 * math.log10(4) / math.log10(13)
    assert result.scaled.sum() == pytest.approx(total)
    assert 0.2 < 1 / total < 0.3  # the centre pixel alone holds 27.8 %: the 1 x 1 square for t = 20 % only
    assert result.ratios == {"0.2": {"side": 1, "area_ratio": 1 / 225}, "0.3": {"side": 3, "area_ratio": 9 / 225},
                             "0.5": {"side": 3, "area_ratio": 9 / 225}, "0.99": {"side": 3, "area_ratio": 9 / 225}}


def test_single_all_ones_conv_erf_is_exactly_the_3x3_square() -> None:
    result = measure_erf(ConvStack([torch.ones(3, 3)]), [_positive_images(2, 11)])
    support = np.argwhere(result.erf > 0)
    assert support.min(0).tolist() == [4, 4] and support.max(0).tolist() == [6, 6]
    assert np.all(result.erf[4:7, 4:7] == 3.0)
    assert all(r == {"side": 3, "area_ratio": 9 / 121} for r in result.ratios.values())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stack_of_k_all_ones_convs_has_the_trinomial_erf_on_a_2k_plus_1_square(k: int) -> None:
    size = 17
    result = measure_erf(ConvStack([torch.ones(3, 3)] * k), [_positive_images(2, size)])
    t = trinomial(k)
    expected = np.zeros((size, size))
    c = size // 2
    expected[c - k:c + k + 1, c - k:c + k + 1] = 3 * np.outer(t, t)
    np.testing.assert_array_equal(result.erf, expected)
    assert np.count_nonzero(result.erf) == (2 * k + 1) ** 2
    if k == 3:
        assert t.tolist() == [1, 3, 6, 7, 6, 3, 1] and result.erf.max() == 3 * 49
        # the scaled map log10(1 + 3 t_i t_j) / log10(148) sums to 1 (centre), 8.633 (3 x 3), 21.044 (5 x 5) and
        # 33.028 (7 x 7, all of it): shares 3.0 %, 26.1 %, 63.7 %, 100 %, so r = 3 x 3 for t = 20 %, 5 x 5 for
        # 30 % and 50 %, 7 x 7 for 99 %
        scaled = np.log10(1 + expected) / np.log10(1 + 147)
        rings = [scaled[c - i:c + i + 1, c - i:c + i + 1].sum() for i in range(4)]
        assert rings == pytest.approx([1.0, 8.6327, 21.0442, 33.0280], abs=1e-4)
        assert result.scaled.sum() == pytest.approx(33.0280, abs=1e-4)
        assert {t: r["side"] for t, r in result.ratios.items()} == {"0.2": 3, "0.3": 5, "0.5": 5, "0.99": 7}
        assert result.ratios["0.5"]["area_ratio"] == 25 / 289


def test_the_mean_is_over_images_and_a_dead_centre_contributes_zeros() -> None:
    """ReLU at the centre: an image whose centre is negative gives no gradient, and still counts (the
    authors' AverageMeter averages every image)."""
    model = ConvStack([torch.ones(3, 3)])
    images = torch.cat([_positive_images(2, 9), -_positive_images(2, 9)])
    maps = contribution_maps(model.features, images)
    assert maps[:2, 3:6, 3:6].eq(3).all() and maps[2:].eq(0).all()
    result = measure_erf(model, [images[:3], images[3:]])  # batches of 3 and 1: the same mean
    assert result.erf[3:6, 3:6] == pytest.approx(np.full((3, 3), 1.5))
    assert result.erf.sum() == pytest.approx(1.5 * 9)


def test_accumulator_skips_non_finite_maps_as_the_authors_do() -> None:
    acc = ERFAccumulator()
    good = torch.ones(2, 4, 4)
    bad = torch.ones(1, 4, 4)
    bad[0, 1, 1] = math.nan
    acc.update(torch.cat([good, bad]))
    acc.update(3 * torch.ones(1, 4, 4))
    assert acc.count == 3 and acc.skipped == 1
    np.testing.assert_allclose(acc.mean(), np.full((4, 4), 5 / 3))
    with pytest.raises(WSOLError, match="no image"):
        ERFAccumulator().mean()


def test_batching_does_not_change_the_erf_of_a_real_network() -> None:
    from wsol.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet10t", num_classes=3, pretrained=False)
    images = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    net.train()  # measure_erf runs in eval mode (BatchNorm statistics would couple the images) and restores
    one = measure_erf(net, [images[i:i + 1] for i in range(4)])
    four = measure_erf(net, [images])
    np.testing.assert_allclose(one.erf, four.erf, rtol=1e-4, atol=1e-6 * four.erf.max())
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert one.feature_shape == (512, 2, 2) and one.erf.shape == (48, 48)


def _authors_loop(data: np.ndarray, thresh: float) -> int | None:
    """analyze_erf.py's search, re-stated: sides 3, 5, ... while i < h // 2."""
    h, w = data.shape
    for i in range(1, h // 2):
        if data[h // 2 - i:h // 2 + i + 1, w // 2 - i:w // 2 + i + 1].sum() / data.sum() > thresh:
            return 2 * i + 1
    return None


@pytest.mark.parametrize("size", [9, 10, 31])
def test_square_sums_and_ratios_agree_with_a_direct_loop(size: int) -> None:
    rng = np.random.default_rng(size)
    data = log_scaled(rng.gamma(0.5, size=(size, size)) * np.outer(np.hanning(size), np.hanning(size)) * 100)
    sums = centred_square_sums(data)
    c = size // 2
    direct = [data[c - i:c + i + 1, c - i:c + i + 1].sum() for i in range(len(sums))]
    np.testing.assert_allclose(sums, direct)
    assert len(sums) == (size + 1) // 2  # up to the largest centred square inside the input
    ratios = area_ratios(data, (0.2, 0.5, 0.8))
    for t, entry in ratios.items():
        theirs = _authors_loop(data, float(t))
        if entry is not None and 3 <= entry["side"] < size - 1:
            assert entry["side"] == theirs
            assert entry["area_ratio"] == theirs ** 2 / size ** 2


def test_ratio_edge_cases() -> None:
    assert all(v is None for v in area_ratios(np.zeros((5, 5))).values())  # no contribution at all
    corner = np.zeros((4, 4))
    corner[0, 0] = 1  # an even side: the centred squares (centre 2) never reach row / column 0
    assert area_ratios(corner)["0.2"] is None
    assert log_scaled(np.zeros((3, 3))).max() == 0
    scaled = log_scaled(np.array([[0.0, 9.0], [99.0, 0.0]]))
    np.testing.assert_allclose(scaled, [[0, 0.5], [1, 0]])
    with pytest.raises(WSOLError, match="threshold"):
        area_ratios(np.ones((3, 3)), (1.5,))
    result = ERFResult("x", np.ones((5, 5)), 1, 0, (1, 5, 5))
    assert result.record()["ratios"]["0.99"] == {"side": 5, "area_ratio": 1.0}


# ------------------------------------------------------------------------------------------ the command
def test_cli_random_images_two_models_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "erf.png"
    result = runner.invoke(app, ["analyze", "erf", "--models", "resnet10t,resnet18", "--random-init",
                                 "--image-size", "48", "-n", "3", "--batch-size", "2", "--out", str(out),
                                 "--save-maps", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "resnet10t (random init)" in result.output and "random images" in result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["images"] == "random images (uniform pixels, seed 0)" and record["image_size"] == 48
    assert [m["label"] for m in record["models"]] == ["resnet10t (random init)", "resnet18 (random init)"]
    for entry in record["models"]:
        assert entry["num_images"] == 3 and entry["input_size"] == [48, 48]
        areas = [entry["ratios"][t]["area_ratio"] for t in ("0.2", "0.3", "0.5", "0.99")]
        assert areas == sorted(areas) and 0 < areas[0] and areas[-1] <= 1
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 1.5 * image.height  # two panels side by side
    maps = np.load(out.with_suffix(".npz"))
    assert sorted(maps.files) == ["resnet10t (random init)", "resnet18 (random init)"]
    assert maps["resnet18 (random init)"].shape == (48, 48)


def test_cli_images_from_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "o" / "erf.png"
    result = runner.invoke(app, ["analyze", "erf", str(folder), "--model", "resnet10t", "--random-init",
                                 "--image-size", "32", "-n", "5", "--out", str(out), "--json",
                                 str(tmp_path / "r.json"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["images"].startswith("images from") and record["models"][0]["num_images"] == 2
    assert "2 images used of the 5 asked" in result.output
    assert out.is_file() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("args, culprit", [
    (["-n", "0"], "--num-images must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--model", "no_such_net"], "unknown model 'no_such_net'"),
    (["--models", "resnet10t,resnet10t"], "the same model twice"),
    (["--metadata", "MISSING", "--data-root", "."], "metadata folder not found"),
    (["--metadata", "MISSING"], "--metadata needs --data-root"),
    (["EMPTY"], "no image files in"),
    (["--checkpoint", "nothing.pt"], "file not found"),
    (["--device", "warp"], "is not a device"),
])
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], culprit: str) -> None:
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("MISSING", "EMPTY", "nothing.pt") else a for a in args]
    if "--model" not in args and "--models" not in args and "--checkpoint" not in args:
        args += ["--model", "resnet10t"]
    result = runner.invoke(app, ["analyze", "erf", *args, "--random-init" if "--checkpoint" not in args else "-q",
                                 "--image-size", "16", "--out", str(tmp_path / "e.png")])
    assert isinstance(result.exception, WSOLError), result.output
    message = str(result.exception)
    assert culprit in message and "\n" not in message


def test_cli_out_must_be_a_png(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", "erf", "--out", str(tmp_path / "erf.jpg")])
    assert isinstance(result.exception, WSOLError) and "name it .png" in str(result.exception)


def test_cli_checkpoints_side_by_side(tmp_path: Path) -> None:
    from wsol.models import build_model

    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(build_model("resnet10t", num_classes=3).state_dict(), tmp_path / f"net{seed}.pt")
    out = tmp_path / "erf.png"
    result = runner.invoke(app, ["analyze", "erf", "--checkpoint", str(tmp_path / "net0.pt"), "--checkpoint",
                                 str(tmp_path / "net1.pt"), "--model", "resnet10t", "--image-size", "32", "-n", "2",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert [m["label"] for m in record["models"]] == ["net0", "net1"]
    assert record["models"][0]["erf_max"] != record["models"][1]["erf_max"]  # two different networks
    both = runner.invoke(app, ["analyze", "erf", "--checkpoint", str(tmp_path / "net0.pt"), "--random-init",
                               "--out", str(out)])
    assert isinstance(both.exception, WSOLError) and "--random-init" in str(both.exception)


def test_a_model_failing_on_its_inputs_is_one_line() -> None:
    from wsol.analysis.cli import _model_errors

    with pytest.raises(WSOLError, match=r"^m: the model failed at 64 px \(RuntimeError: CUDA out of memory\. Tried "
                                        r"to allocate 2 GiB\); lower --batch-size or --image-size$"):
        with _model_errors("m", "at 64 px"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail")
