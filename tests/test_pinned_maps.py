"""The score-map path pinned to hand-computed numbers: OpenCV's bicubic resize (A = -0.75, not bilinear), the
reference's resize-then-min-max, PaS (the 90th percentile, not another), and the localize threshold rule.

The tests compare against numbers worked out by hand and against a numpy transcription of OpenCV's
``INTER_CUBIC`` written here, never against the functions under test, so that a different kernel, a different
percentile or a different order of the steps fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsol.maps import resize_map, resize_maps, threshold_value, to_score_maps
from wsol.maps.boxes import mask_from_map
from wsol.maps.normalize import pas_normalize
from wsol.maps.variants import MapVariant

A = -0.75  # OpenCV's bicubic coefficient


def cubic_weight(d: np.ndarray) -> np.ndarray:
    d = np.abs(d)
    near = ((A + 2) * d - (A + 3)) * d * d + 1
    far = ((A * d - 5 * A) * d + 8 * A) * d - 4 * A
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def cubic_matrix(n_src: int, n_dst: int) -> np.ndarray:
    """(n_dst, n_src) interpolation matrix of OpenCV's INTER_CUBIC along one axis: half-pixel centres
    (``src = (dst + 0.5) n_src / n_dst - 0.5``), taps floor(src) - 1 .. floor(src) + 2, border replicated."""
    out = np.zeros((n_dst, n_src))
    for j in range(n_dst):
        src = (j + 0.5) * n_src / n_dst - 0.5
        i = int(np.floor(src))
        t = src - i
        for k, d in zip(range(i - 1, i + 3), (1 + t, t, 1 - t, 2 - t)):
            out[j, min(max(k, 0), n_src - 1)] += cubic_weight(np.array(d))
    return out


def cubic_resize(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return cubic_matrix(m.shape[0], h) @ m.astype(np.float64) @ cubic_matrix(m.shape[1], w).T


# ---------------------------------------------------------------------------------------------- bicubic
def test_cubic_weights_by_hand() -> None:
    # d = 0.25, 0.75, 1.25, 1.75: the four taps of a sample a quarter pixel past a source pixel
    np.testing.assert_array_equal(cubic_weight(np.array([0.25, 0.75, 1.25, 1.75])),
                                  [0.87890625, 0.26171875, -0.10546875, -0.03515625])


def test_resize_map_is_opencv_bicubic_golden_step() -> None:
    # a step 0 0 1 1 doubled: dst x samples src x / 2 - 0.25. Bicubic rings below 0 and above 1 next to the
    # step (bilinear would give 0 0 0 0.25 0.75 1 1 1, never outside [0, 1]).
    step = np.array([[0, 0, 1, 1]], np.float32)
    expected = [0, -0.03515625, -0.10546875, 0.2265625, 0.7734375, 1.10546875, 1.03515625, 1]
    got = resize_map(step, (8, 1))
    assert got.dtype == np.float32 and got.shape == (1, 8)
    np.testing.assert_allclose(got[0], expected, atol=1e-7)
    # 2-D: the same along y, separable
    np.testing.assert_allclose(resize_map(step.T, (1, 8))[:, 0], expected, atol=1e-7)


def test_to_score_maps_resizes_then_min_max_normalises() -> None:
    step = np.array([[0, 0, 1, 1]], np.float32)
    # the ringing sets min and max: (v + 0.10546875) / 1.2109375
    expected = (np.array([0, -0.03515625, -0.10546875, 0.2265625, 0.7734375, 1.10546875, 1.03515625, 1])
                + 0.10546875) / 1.2109375
    got = to_score_maps(step[None], (8, 1))
    np.testing.assert_allclose(got[0, 0], expected, atol=1e-6)
    assert got.min() == 0 and got.max() == 1
    # a tensor batch on the same path
    np.testing.assert_allclose(to_score_maps(torch.from_numpy(step)[None], (8, 1)), got, atol=0)


@pytest.mark.parametrize("shape, size", [((7, 7), (224, 224)), ((14, 14), (224, 224)), ((5, 9), (37, 20)),
                                         ((12, 12), (224, 224))])
def test_resize_map_equals_a_transcription_of_opencv_cubic(shape, size) -> None:
    rng = np.random.default_rng(sum(shape) + size[0])
    m = (rng.standard_normal(shape) * 3).astype(np.float32)
    got = resize_map(m, size)
    want = cubic_resize(m, size)
    assert got.shape == (size[1], size[0])
    assert np.abs(got - want).max() < 2e-5 * np.abs(m).max()
    np.testing.assert_allclose(resize_maps(m[None], size)[0], got, atol=0)


def test_score_maps_of_a_variant_are_bicubic_at_224() -> None:
    raw = torch.zeros(1, 7, 7)
    raw[0, 2:5, 3:6] = 2.0
    raw[0, 0, 0] = -1.0
    want = cubic_resize(raw[0].numpy(), (224, 224))
    want = (want - want.min()) / (want.max() - want.min())
    got = MapVariant.parse("cam").score_maps(raw)
    assert got.shape == (1, 224, 224) and got.dtype == np.float32
    assert np.abs(got[0] - want).max() < 1e-5


# ---------------------------------------------------------------------------------------------- PaS
def _tenths() -> np.ndarray:
    """0.0, 0.1, ..., 0.9 as a 2 x 5 map: its 90th percentile (numpy's linear rule) is 0.8 + 0.1 x 0.1 = 0.81,
    its 80th 0.72."""
    return (np.arange(10, dtype=np.float32) / 10).reshape(2, 5)


def test_pas_normalize_divides_by_the_90th_percentile() -> None:
    m = _tenths()
    got = pas_normalize(m[None])[0]
    want = np.clip(np.arange(10) / 10 / 0.81, 0, 1).reshape(2, 5)  # 0, 0.1235, ..., 0.9877, 1
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got[1, 3] == pytest.approx(0.8 / 0.81, rel=1e-6) and got[1, 4] == 1.0


def test_pas_normalize_leaves_maps_with_a_zero_percentile() -> None:
    sparse = np.zeros((4, 5), np.float32)
    sparse[0, 0] = 0.7  # 19 of 20 pixels are 0: the 90th percentile (rank 17.1 of 0..19) is 0
    np.testing.assert_array_equal(pas_normalize(sparse[None])[0], sparse)


def test_variant_pas_score_maps_are_the_90th_percentile_rule() -> None:
    raw = torch.zeros(1, 7, 7)
    raw[0, 1:6, 1:6] = 1.0
    raw[0, 3, 3] = 3.0
    plain = MapVariant.parse("cam").score_maps(raw)[0]
    pas = MapVariant.parse("cam+pas").score_maps(raw)[0]
    p90 = np.percentile(plain.astype(np.float64), 90)
    assert 0.2 < p90 < 0.9  # far from the max (1): PaS changes the map
    np.testing.assert_allclose(pas, np.clip(plain / np.float32(p90), 0, 1), rtol=2e-6, atol=1e-7)
    assert np.abs(pas - np.clip(plain / np.percentile(plain, 80), 0, 1)).max() > 0.05  # another percentile


def test_localize_pas_threshold_rule_by_hand() -> None:
    # uint8 of the tenths: 0 25 51 76 102 127 153 178 204 229. 90th percentile 204 + 0.1 x 25 = 206.5,
    # x 0.5 = 103.25 -> cut 103: the five pixels 127..229. (The 80th, 183.2, would cut at 91: six pixels.)
    m = _tenths()
    assert threshold_value(m, 0.5, 90) == 103
    assert mask_from_map(m, 0.5, 90).sum() == 5
    assert threshold_value(m, 0.35, 90) == 72  # Bae et al.'s 0.35: int(72.275)
    assert threshold_value(m, 0.5, 100) == 114  # the max rule: int(0.5 x 229)
