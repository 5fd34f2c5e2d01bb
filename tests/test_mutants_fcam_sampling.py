"""F-CAM pseudo-label sampling pinned where mutation testing found it loose (issue 12):
Otsu thresholds on hand-computed histograms, per-map ranges, devices and dtypes, the exact error
messages, the defaults (n- = 0.1, erosion 11, one seed), erosion/dilation kernels, and seeded draws."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from wsol.errors import WSOLError
from wsol.fcam.sampling import (
    IGNORE,
    dilate,
    erode,
    otsu_thresholds,
    sample_pseudo_labels,
    sampling_regions,
    upsample_cams,
)

META = torch.device("meta")


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _two_clusters(h: int = 24, w: int = 24) -> torch.Tensor:
    """(1, h, w): columns < 6 hold the distinct values i / 1000 (row-major), columns >= 6 are 1."""
    cams = torch.ones(1, h, w)
    cams[0, :, :6] = torch.arange(h * 6, dtype=torch.float32).view(h, 6) / 1000
    return cams


# --- Otsu thresholds -------------------------------------------------------------------------------

# The threshold is the upper edge of the last bin of the class below the best split (first maximum of
# the between-class variance w0 * w1 * (mean0 - mean1) ** 2 over bin centres; never after the last bin).
OTSU_CASES = [
    # [0, 0, 0, 1], 4 bins: bins {0: 3, 3: 1}; splits after bins 0..2 are the same partition -> bin 0
    ([0.0, 0.0, 0.0, 1.0], 4, 0.25),
    # [0, 1], 3 bins: bins {0: 1, 2: 1}; first of the equal splits -> after bin 0
    ([0.0, 1.0], 3, 1 / 3),
    # [0, 1], 2 bins: the only split (between 0.25 here, below 1) -> 0.5
    ([0.0, 1.0], 2, 0.5),
    # [0, .4, 1], 4 bins: bins {0, 1, 3}; {0, .4} | {1}: 2 * (.25 - .875)^2 = .78 beats {0} | {.4, 1}: .5
    ([0.0, 0.4, 1.0], 4, 0.5),
    # [0, .4, .8, 1], 3 bins: hist [1, 1, 2]; {0} | rest: 3 * (1/6 - 13/18)^2 = .93 < 2 * 2 * (1/3 - 5/6)^2 = 1
    ([0.0, 0.4, 0.8, 1.0], 3, 2 / 3),
    # [0, .4, .4, 1, 1], 3 bins: hist [1, 2, 2]; split after bin 1: 6 * (7/18 - 5/6)^2 = 1.19 > 1
    ([0.0, 0.4, 0.4, 1.0, 1.0], 3, 2 / 3),
    # a range that does not start at 0: [-2, 1], 2 bins -> -2 + 3 / 2
    ([-2.0, 1.0], 2, -0.5),
    # the same shape shifted and scaled: [10, 10.4, 11], 4 bins -> 10.5
    ([10.0, 10.4, 11.0], 4, 10.5),
]


@pytest.mark.parametrize(("values", "bins", "expected"), OTSU_CASES)
def test_otsu_threshold_by_hand(values: list[float], bins: int, expected: float) -> None:
    thr = otsu_thresholds(torch.tensor([values]), bins=bins)
    assert thr.shape == (1,) and thr.dtype == torch.float32
    assert float(thr[0]) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_otsu_thresholds_use_each_maps_own_range() -> None:
    maps = torch.tensor([[0.0, 0.4, 1.0], [10.0, 10.4, 11.0], [-2.0, -1.6, -1.0]])
    np.testing.assert_allclose(otsu_thresholds(maps, bins=4).numpy(), [0.5, 10.5, -1.5], rtol=1e-6)


def test_otsu_is_half_a_bin_above_skimage_on_untied_maps() -> None:
    """scikit-image returns the centre of the same bin whose upper edge is ours."""
    g = torch.Generator().manual_seed(3)
    maps = torch.stack([torch.rand(300, generator=g) * s + o for s, o in ((1, 0), (5, 3), (0.5, -4), (2, -1))])
    maps[1] = maps[1] ** 2
    for bins in (8, 32, 256):
        ours = otsu_thresholds(maps, bins=bins)
        for m, t in zip(maps, ours):
            half = float(m.max() - m.min()) / bins / 2
            ref = threshold_otsu(m.numpy().astype(np.float64), nbins=bins)
            assert float(t) == pytest.approx(ref + half, abs=1e-4 * half)


def test_otsu_of_a_constant_map_is_its_value_exactly() -> None:
    thr = otsu_thresholds(torch.stack([torch.zeros(3, 3), torch.full((3, 3), 2.5), torch.full((3, 3), -1.0)]))
    assert thr.tolist() == [0.0, 2.5, -1.0]


def test_otsu_thresholds_stay_on_the_maps_device() -> None:
    thr = otsu_thresholds(torch.rand(2, 5, 5).to(META))
    assert thr.device == META and thr.shape == (2,) and thr.dtype == torch.float32


def test_otsu_thresholds_are_float32_under_a_float64_default(float64_default: None) -> None:
    maps = torch.tensor([[0.0, 0.4, 1.0], [10.0, 10.4, 11.0]], dtype=torch.float32)
    thr = otsu_thresholds(maps, bins=4)
    assert thr.dtype == torch.float32
    assert thr.tolist() == pytest.approx([0.5, 10.5], rel=1e-6)


# --- erosion / dilation ----------------------------------------------------------------------------

def test_size_one_kernels_return_the_mask_itself() -> None:
    mask = torch.rand(2, 5, 6) > 0.5
    assert erode(mask, 1) is mask
    assert dilate(mask, 1) is mask


def test_dilate_with_a_5x5_square_keeps_the_shape() -> None:
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    mask[0, 0, 8] = True
    out = dilate(mask, 5)
    expected = torch.zeros(1, 9, 9, dtype=torch.bool)
    expected[0, 2:7, 2:7] = True
    expected[0, 0:3, 6:9] = True
    assert out.dtype == torch.bool and torch.equal(out, expected)


def test_erode_with_a_5x5_square_counts_outside_as_on() -> None:
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    mask[0, 5, 0] = False
    out = erode(mask, 5)
    expected = torch.ones(1, 8, 8, dtype=torch.bool)
    expected[0, 3:8, 0:3] = False
    assert torch.equal(out, expected)


# --- regions ---------------------------------------------------------------------------------------

def test_region_defaults_are_n_neg_one_tenth_and_erosion_11() -> None:
    cams = _two_clusters()
    fg, bg = sampling_regions(cams)
    cols = torch.arange(24).view(1, 1, 24).expand(1, 24, 24)
    # Otsu keeps columns >= 6; an 11 x 11 erosion (outside on) keeps the columns >= 6 + 5
    assert torch.equal(fg, cols >= 11)
    # ceil(0.1 * 576) = 58 lowest pixels: the values 0 .. 57 / 1000
    assert int(bg.sum()) == 58
    assert torch.equal(bg, (cols < 6) & (cams < 57.5 / 1000))


def test_at_least_one_background_pixel_and_no_more_than_ceil() -> None:
    cams = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    _, bg = sampling_regions(cams, n_neg=0.05, erosion=1)  # ceil(0.05 * 16) = 1
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0, 0] = True
    assert torch.equal(bg, expected)


@pytest.mark.parametrize("n_neg", [0.0, 1.0, 1.5, -0.1])
def test_n_neg_outside_open_unit_interval_is_refused(n_neg: float) -> None:
    msg = f"F-CAM n_neg must lie in (0, 1), got {n_neg}"
    with pytest.raises(WSOLError, match=f"^{re.escape(msg)}$"):
        sampling_regions(torch.rand(1, 8, 8), n_neg=n_neg)


def test_even_erosion_message() -> None:
    with pytest.raises(WSOLError, match="^" + re.escape("F-CAM erosion must be an odd size >= 1, got 4") + "$"):
        sampling_regions(torch.rand(1, 8, 8), erosion=4)


# --- upsampling ------------------------------------------------------------------------------------

def test_upsample_is_bilinear_without_corner_alignment() -> None:
    up = upsample_cams(torch.tensor([[[0.0, 1.0]]]), (1, 4))
    np.testing.assert_allclose(up.numpy(), [[[0.0, 0.25, 0.75, 1.0]]], atol=1e-7)


def test_upsample_at_the_same_size_does_not_resample() -> None:
    cams = torch.rand(2, 3, 5)
    assert upsample_cams(cams, (3, 5)) is cams
    doubles = cams.double()
    same = upsample_cams(doubles, (3, 5))
    assert same.dtype == torch.float32 and torch.equal(same, cams)


def test_upsample_shape_message() -> None:
    with pytest.raises(WSOLError, match="^" + re.escape("CAMs must be (B, h, w), got shape (8, 8)") + "$"):
        upsample_cams(torch.rand(8, 8), (16, 16))


# --- pseudo-labels ---------------------------------------------------------------------------------

def test_default_draw_is_one_seed_per_region_from_the_default_regions() -> None:
    cams = _two_clusters()
    fg, bg = sampling_regions(cams, 0.1, 11)
    for seed in range(3):
        labels = sample_pseudo_labels(cams, dilation=1, generator=torch.Generator().manual_seed(seed))
        assert int((labels == 1).sum()) == 1 and int((labels == 0).sum()) == 1
        assert fg[labels == 1].all() and bg[labels == 0].all()


def test_erosion_is_passed_to_the_regions() -> None:
    cams = torch.zeros(1, 16, 16)
    cams[0, 2:14, 2:14] = 1.0
    labels = sample_pseudo_labels(cams, n_neg=0.1, num_samples=10_000, erosion=1, dilation=1)
    # every pixel of the un-eroded 12 x 12 square is drawn (an 11 x 11 erosion would leave 2 x 2)
    assert torch.equal(labels == 1, cams > 0.5)
    assert int((labels == 0).sum()) == 26  # ceil(0.1 * 256) lowest pixels, all drawn


def test_dilation_one_is_valid_and_exact_seed_counts() -> None:
    cams = _two_clusters()
    labels = sample_pseudo_labels(cams, n_neg=0.2, num_samples=5, erosion=3, dilation=1,
                                  generator=torch.Generator().manual_seed(0))
    assert int((labels == 1).sum()) == 5 and int((labels == 0).sum()) == 5
    assert int((labels == IGNORE).sum()) == 576 - 10


def test_seeds_with_a_zero_score_are_still_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.rand`` may return exactly 0: a region pixel with that score is a valid draw."""
    def zeros(shape, device=None, generator=None):
        return torch.zeros(shape, device=device)

    monkeypatch.setattr(torch, "rand", zeros)
    labels = sample_pseudo_labels(_two_clusters(), n_neg=0.2, num_samples=3, erosion=3, dilation=1)
    assert int((labels == 1).sum()) == 3 and int((labels == 0).sum()) == 3


def test_a_seeded_draw_uses_only_its_generator() -> None:
    cams = _two_clusters()
    state = torch.get_rng_state()
    a = sample_pseudo_labels(cams, n_neg=0.3, num_samples=4, erosion=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not consumed
    b = sample_pseudo_labels(cams, n_neg=0.3, num_samples=4, erosion=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_labels_stay_on_the_cams_device() -> None:
    labels = sample_pseudo_labels(torch.rand(2, 12, 12).to(META), n_neg=0.2, erosion=3,
                                  generator=torch.Generator().manual_seed(0))
    assert labels.device == META and labels.dtype == torch.long and labels.shape == (2, 12, 12)


def test_labels_are_long_under_a_float64_default(float64_default: None) -> None:
    labels = sample_pseudo_labels(_two_clusters(), n_neg=0.2, num_samples=2, erosion=3, dilation=1,
                                  generator=torch.Generator().manual_seed(0))
    assert labels.dtype == torch.long
    assert int((labels == 1).sum()) == 2 and int((labels == 0).sum()) == 2


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"num_samples": 0}, "F-CAM num_samples must be >= 1, got 0"),
    ({"dilation": 2}, "F-CAM dilation must be an odd size >= 1, got 2"),
    ({"dilation": 0}, "F-CAM dilation must be an odd size >= 1, got 0"),
])
def test_pseudo_label_messages(kwargs: dict, msg: str) -> None:
    with pytest.raises(WSOLError, match=f"^{re.escape(msg)}$"):
        sample_pseudo_labels(torch.rand(1, 8, 8), 0.2, erosion=3, **kwargs)
