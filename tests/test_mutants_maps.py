"""Map primitives pinned where mutation testing found them loose (issue 12; benchmarks/results/mutation.md):
``map_percentiles``' max rule, ``pas_normalize``'s clip, ``resize_maps`` of tensors that need grad,
``minmax_normalize``'s silence on infinite values, and ``MapVariant.raw_maps``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from wsol.cams import compute_cams
from wsol.maps.normalize import map_percentiles, minmax_normalize, pas_normalize, resize_maps
from wsol.maps.variants import MapVariant
from wsol.models import build_model


def test_map_percentiles_takes_the_max_in_the_maps_dtype_from_100_on() -> None:
    maps = np.array([[[0, 10], [200, 30]], [[5, 5], [5, 7]]], np.uint8)
    for q in (100, 100.0, 150):
        top = map_percentiles(maps, q)
        assert top.dtype == np.uint8 and top.tolist() == [200, 7]
    below = map_percentiles(maps, 50)  # numpy's linear rule: the mean of the middle two
    assert below.dtype == np.float64 and below.tolist() == [20.0, 5.0]
    assert map_percentiles(maps.astype(np.float32), 100).dtype == np.float32


def test_pas_normalize_clips_below_zero_too() -> None:
    """``clip(map / p90, 0, 1)`` on a map that is not min-max normalised (a negative value stays 0)."""
    m = np.array([[[-0.5, 0.0, 0.25, 0.5, 1.0]]], np.float32)  # p90 = 0.5 + 0.6 * 0.5 = 0.8
    np.testing.assert_allclose(pas_normalize(m)[0, 0], [0.0, 0.0, 0.3125, 0.625, 1.0], rtol=1e-6)


def test_resize_maps_takes_tensors_that_require_grad() -> None:
    raw = torch.rand(2, 7, 7, requires_grad=True)
    out = resize_maps(raw, (14, 14))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 14, 14)
    np.testing.assert_array_equal(out, resize_maps(raw.detach().numpy(), (14, 14)))


def test_minmax_normalize_is_silent_on_infinite_values_like_the_reference() -> None:
    """The reference's normalize_scoremap divides by the shifted max: an inf pixel gives inf / inf = NaN,
    the others 0; no warning is printed (the score-map check reports such maps in one line later)."""
    m = np.array([[0.0, 1.0], [2.0, np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = minmax_normalize(m)
    assert out[0].tolist() == [0.0, 0.0] and out[1, 0] == 0.0 and np.isnan(out[1, 1])


@pytest.mark.parametrize("spec, method, options", [("cam", "cam", {}), ("cam+nwc", "cam", {"nwc": True}),
                                                   ("pc1+published", "pc1", {"as_published": True}),
                                                   ("gradcam+pas", "gradcam", {})])
def test_map_variant_raw_maps_are_the_methods(spec, method, options) -> None:
    torch.manual_seed(0)
    model = build_model("resnet10t", num_classes=4).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([1, 3])
    raw, logits = MapVariant.parse(spec).raw_maps(model, images, targets)
    expected = compute_cams(model, images, targets, method, **options)
    torch.testing.assert_close(raw, expected.maps, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=0)
    if options.get("nwc"):  # the option changes the map: a variant without it would not pass
        assert not torch.equal(raw, compute_cams(model, images, targets, method).maps)
