"""The dense CRF (wsol.maps.crf) pinned on hand-checked behaviour: the tests that kill mutmut's surviving
mutants (issue 12; see benchmarks/results/mutation.md).

The defaults against a brute-force mean field, the row chunks of the exact kernel (recorded with a
``TorchFunctionMode``: ``chunk`` bounds the memory), the meta device and a float64 default dtype, the
probability clamp, the argument checks' exact messages, and how ``crf_on_images`` resizes the images.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import wsol.maps.crf as crf_module
from test_crf import brute_force_mean_field
from wsol.errors import WSOLError
from wsol.maps.crf import bilateral_features, crf_on_images, crf_refine, dense_gaussian_filter

DEFAULTS = {"iterations": 5, "sigma_rgb": 13.0, "sigma_xy": 80.0, "bilateral_weight": 10.0, "smooth_sigma_xy": 3.0,
            "smooth_weight": 3.0}


def _scene(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours a few sigma_rgb apart (so both kernels matter) and a map away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=g) * 30
    image[..., w // 2:] += 20
    maps = 0.1 + 0.8 * torch.rand(1, h, w, generator=g)
    return image, maps


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, in float64 (not torch.testing, whose first call imports for 0.7 s)."""
    return (a.double() - b.double()).abs().max().item()


class _ExpRows(TorchFunctionMode):
    """Records the row count of every ``torch.exp`` call: one per kernel row chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.exp:
            self.rows.append(args[0].shape[1])
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------- defaults


def _balanced_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """3 x 12 pixels whose labels the defaults leave undecided: each default moves the result (found by a search
    over small random scenes; with a plain scene the default weights saturate every pixel to 0 or 1)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 3, 12, generator=g) * 80
    maps = 0.1 + 0.8 * torch.rand(1, 3, 12, generator=g)
    return image, maps


def test_the_defaults_are_the_pydensecrf_settings_and_match_a_brute_force_mean_field():
    image, maps = _balanced_scene()  # longest side 12 <= GRID: the default grid is the full resolution
    default = crf_refine(image, maps)
    assert torch.equal(default, crf_refine(image, maps, downsample=1, chunk=2048, **DEFAULTS))
    want = brute_force_mean_field(image[0], maps[0], 5, 13.0, 80.0, 10.0, 3.0, 3.0)
    assert _max_diff(default[0], want) < 2e-4  # float32 in a sensitive scene; each default + 1 moves it > 1e-3


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_default_matters(name):
    """One more than each default changes the result well beyond float noise (so the test above pins them)."""
    image, maps = _balanced_scene()
    moved = crf_refine(image, maps, **{**DEFAULTS, name: DEFAULTS[name] + 1})
    assert (moved - crf_refine(image, maps)).abs().max() > 1e-3


def test_dense_gaussian_filter_splits_rows_in_chunks_of_2048_by_default():
    g = torch.Generator().manual_seed(0)
    features, values = torch.rand(1, 2049, 2, generator=g) * 40, torch.rand(1, 2049, 2, generator=g)
    with _ExpRows() as mode:
        out = dense_gaussian_filter(features, values)
    assert mode.rows == [2048, 1]
    assert _max_diff(out, dense_gaussian_filter(features, values, 700)) < 1e-5 * out.abs().max()


def test_crf_refine_filters_in_chunks_of_2048_by_default():
    image, maps = _scene(33, 64)  # N = 2112 at s = 1
    with _ExpRows() as mode:
        crf_refine(image, maps, iterations=1)
    assert mode.rows == [2048, 64, 2048, 64]  # the appearance kernel, then the smoothness kernel


def test_crf_refine_passes_its_chunk_to_both_filters():
    image, maps = _scene(4, 5)  # N = 20
    with _ExpRows() as mode:
        chunked = crf_refine(image, maps, iterations=2, chunk=7)
    assert mode.rows == [7, 7, 6] * 4  # two filters per iteration
    assert _max_diff(chunked, crf_refine(image, maps, iterations=2)) < 1e-6


# ------------------------------------------------------------------------------- devices and dtypes


def test_everything_runs_on_the_inputs_device_whatever_the_default_device():
    """With "meta" as the default device, a tensor made without ``device=`` would land there and not mix with
    the CPU inputs; every position grid must follow the image (both downsample paths)."""
    image, maps = _scene(5, 6, seed=4)
    want = [bilateral_features(image, 13.0, 4.0, s) for s in (1, 2)]
    want_refined = crf_refine(image, maps, iterations=2, sigma_xy=4.0, downsample=2)
    with torch.device("meta"):
        got = [bilateral_features(image, 13.0, 4.0, s) for s in (1, 2)]
        refined = crf_refine(image, maps, iterations=2, sigma_xy=4.0, downsample=2)
    for f, w in zip(got, want, strict=True):
        assert f.device.type == "cpu" and torch.equal(f, w)
    assert refined.device.type == "cpu" and torch.equal(refined, want_refined)


def test_a_float64_default_dtype_changes_nothing():
    image, maps = _scene(5, 6, seed=3)
    f32 = bilateral_features(image, 13.0, 4.0, 2)
    r32 = crf_refine(image, maps, iterations=2, sigma_xy=4.0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        f64 = bilateral_features(image, 13.0, 4.0, 2)
        r64 = crf_refine(image, maps, iterations=2, sigma_xy=4.0)
    finally:
        torch.set_default_dtype(previous)
    assert f64.dtype == torch.float32 and torch.equal(f64, f32)
    assert r64.dtype == torch.float32 and torch.equal(r64, r32)


def test_no_warnings():
    """Not even torch.meshgrid's warning about a missing ``indexing`` (shown every time here, not once)."""
    image, maps = _scene(4, 6)
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bilateral_features(image, 13.0, 80.0)
            crf_refine(image, maps, iterations=1, downsample=2)
    finally:
        torch.set_warn_always(previous)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_the_result_has_the_maps_dtype(dtype):
    image, maps = _scene(4, 5)
    out = crf_refine(image, maps.to(dtype), iterations=1)
    assert out.dtype == dtype
    assert torch.equal(out, crf_refine(image, maps.to(dtype).float(), iterations=1).to(dtype))


# ------------------------------------------------------------------------------------------- clamp


def test_without_iterations_the_result_is_the_map_clamped_to_1e5():
    image = torch.zeros(1, 3, 1, 4)
    maps = torch.tensor([[[0.0, 1.0, 0.5, 1e-6]]])
    out = crf_refine(image, maps, iterations=0)
    want = torch.tensor([[[1e-5, 1 - 1e-5, 0.5, 1e-5]]])
    assert _max_diff(out, want) < 1e-7  # unclamped, 0 and 1 would come back exactly


@pytest.mark.parametrize(("centre", "surround"), [(0.0, 0.9), (1.0, 0.1)])
def test_a_certain_pixel_can_still_be_outvoted(centre, surround):
    """Clamped to [1e-5, 1 - 1e-5], a pixel's unary is finite: 24 same-coloured neighbours flip it."""
    image = torch.zeros(1, 3, 5, 5)
    maps = torch.full((1, 5, 5), surround)
    maps[0, 2, 2] = centre
    out = crf_refine(image, maps, iterations=2)
    assert (out[0, 2, 2] > 0.5) == (surround > 0.5)  # unclamped, log(0) = -inf would keep it at 0 (or 1)


# ------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(("images", "maps", "message"), [
    ((1, 3, 4, 4), (1, 1, 4, 4), "CRF: maps (1, 1, 4, 4) must be (B, H, W) of images (1, 3, 4, 4)"),
    ((1, 4, 4), (1, 4, 4), "CRF: maps (1, 4, 4) must be (B, H, W) of images (1, 4, 4)"),
    ((1, 3, 4, 4), (1, 4, 3), "CRF: maps (1, 4, 3) must be (B, H, W) of images (1, 3, 4, 4)"),
    ((2, 3, 4, 4), (1, 4, 4), "CRF: maps (1, 4, 4) must be (B, H, W) of images (2, 3, 4, 4)"),
])
def test_shape_errors_exactly(images, maps, message):
    with pytest.raises(WSOLError, match=f"^{re.escape(message)}$"):
        crf_refine(torch.zeros(images), torch.zeros(maps))


@pytest.mark.parametrize("value", [1.0 + 1e-6, -1e-6, float("nan")])
def test_range_error_exactly(value):
    maps = torch.full((1, 2, 2), 0.5)
    maps[0, 1, 0] = value
    with pytest.raises(WSOLError, match=f"^{re.escape('CRF: score maps must lie in [0, 1] (normalise them first)')}$"):
        crf_refine(torch.zeros(1, 3, 2, 2), maps)


# ------------------------------------------------------------------------------------------ crf_on_images


def _uint8_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8))


@pytest.fixture
def spies(monkeypatch):
    """Counts F.interpolate's calls and records the images crf_refine receives (both still run for real)."""
    record = {"interpolate": 0, "rgb": []}
    interpolate, refine = F.interpolate, crf_module.crf_refine

    def counting_interpolate(*args, **kwargs):
        record["interpolate"] += 1
        return interpolate(*args, **kwargs)

    def recording_refine(images, maps, **kwargs):
        record["rgb"].append(images)
        return refine(images, maps, **kwargs)

    monkeypatch.setattr(F, "interpolate", counting_interpolate)
    monkeypatch.setattr(crf_module, "crf_refine", recording_refine)
    return record


def test_crf_on_images_of_the_maps_size_does_not_resize(spies):
    images = _uint8_images(2, 6, 7)
    maps = np.random.default_rng(1).random((2, 6, 7)).astype(np.float32)
    out = crf_on_images(images, maps)
    assert spies["interpolate"] == 0
    assert torch.equal(spies["rgb"][0], images.permute(0, 3, 1, 2).float())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 6, 7)
    np.testing.assert_array_equal(out, crf_refine(images.permute(0, 3, 1, 2).float(), torch.from_numpy(maps)).numpy())


def test_crf_on_images_resizes_bilinearly_with_antialiasing_to_the_maps_size(spies):
    images = _uint8_images(2, 24, 21, seed=2)  # shrunk 4x and 3x: antialiasing matters
    maps = np.random.default_rng(3).random((2, 6, 7))  # float64: the result keeps it
    rgb = images.permute(0, 3, 1, 2).float()
    want_rgb = F.interpolate(rgb, size=(6, 7), mode="bilinear", antialias=True, align_corners=False)
    calls = spies["interpolate"]
    out = crf_on_images(images, maps)
    assert spies["interpolate"] == calls + 1  # crf_refine itself runs at full resolution here
    assert torch.equal(spies["rgb"][0], want_rgb)
    assert out.dtype == np.float64 and out.shape == (2, 6, 7)
    np.testing.assert_array_equal(out, crf_refine(want_rgb, torch.from_numpy(maps)).numpy())
    # the other resizes give other images (so the equality above pins these arguments)
    for other in (F.interpolate(rgb, size=(6, 7), mode="bilinear", align_corners=False),
                  F.interpolate(rgb, size=(6, 7), mode="bilinear", antialias=True, align_corners=True),
                  F.interpolate(rgb, size=(6, 7), mode="nearest")):
        assert (other - want_rgb).abs().max() > 1.0
