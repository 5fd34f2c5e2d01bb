"""Map primitives (wsol.localize) pinned on hand-checked values: the tests that kill mutmut's surviving
mutants (issue 12; see benchmarks/results/mutation.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsol.errors import WSOLError
from wsol.maps.boxes import (
    box_iou,
    boxes_from_map,
    boxes_from_maps,
    contour_boxes,
    mask_from_map,
    masks_from_maps,
    threshold_value,
    threshold_values,
    to_uint8,
    trace_boxes,
)
from wsol.maps.crf import bilateral_features, crf_refine, dense_gaussian_filter
from wsol.maps.normalize import check_score_map, minmax_normalize, pas_normalize, resize_map, resize_maps
from wsol.maps.variants import MapVariant

# ---------------------------------------------------------------------------------------------- maps.py


def test_minmax_normalize_of_a_4d_tensor_is_per_map():
    """(2, 2, 1, 3) maps: each 1 x 3 map on its own (not over the second batch axis)."""
    maps = torch.tensor([[[[1.0, 2.0, 5.0]], [[-1.0, -1.0, -1.0]]],
                         [[[0.0, 10.0, 5.0]], [[3.0, float("nan"), 4.0]]]])
    out = minmax_normalize(maps)
    expected = torch.tensor([[[[0.0, 0.25, 1.0]], [[0.0, 0.0, 0.0]]],
                             [[[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_minmax_normalize_of_a_single_tensor_map():
    out = minmax_normalize(torch.tensor([[2.0, 4.0], [6.0, 10.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.25], [0.5, 1.0]]), rtol=0, atol=0)


def test_minmax_normalize_of_a_4d_array_keeps_its_dtype():
    maps = np.array([[[[1, 2, 5]], [[7, 7, 7]]], [[[0, 10, 5]], [[3, np.nan, 4]]]], np.float32)
    out = minmax_normalize(maps)
    assert out.dtype == np.float32 and out.shape == maps.shape
    np.testing.assert_array_equal(out.reshape(4, 3), [[0, 0.25, 1], [0, 0, 0], [0, 1, 0.5], [0, 0, 0]])


def test_resize_map_works_in_float32_whatever_the_input():
    """float64 and integer maps are converted to float32 first (an integer resize would round)."""
    ints = np.array([[0, 3], [1, 0]], np.int64)
    out = resize_map(ints, (5, 3))
    assert out.dtype == np.float32 and out.shape == (3, 5)
    np.testing.assert_array_equal(out, resize_map(ints.astype(np.float32), (5, 3)))
    assert not np.allclose(out, np.round(out))  # fractional values: not an integer resize
    assert resize_map(ints.astype(np.float64), (5, 3)).dtype == np.float32


def test_resize_maps_of_an_empty_batch():
    out = resize_maps(np.zeros((0, 7, 5), np.float32), (4, 3))
    assert out.shape == (0, 3, 4) and out.dtype == np.float32
    out = resize_maps(torch.zeros(0, 7, 5), (6, 2))
    assert out.shape == (0, 2, 6) and out.dtype == np.float32


@pytest.mark.parametrize(("bad", "message"), [
    ([[0.5]], "my map: expected a float array, got list"),
    (np.zeros((2, 2), np.int32), "my map: expected a float array, got int32"),
    (np.zeros((1, 2, 2), np.float32), r"my map: expected a 2-D map, got shape \(1, 2, 2\)"),
    (np.array([[0.5, np.nan]]), "my map: contains NaN"),
    (np.array([[-0.5, 1.0]]), r"my map: values must lie in \[0, 1\], found \[-0.5, 1\] \(normalise it first\)"),
    (np.array([[0.0, 1.25]]), r"my map: values must lie in \[0, 1\], found \[0, 1.25\] \(normalise it first\)"),
])
def test_check_score_map_names_the_problem(bad, message):
    with pytest.raises(WSOLError, match=f"^{message}$"):
        check_score_map(bad, "my map")


def test_check_score_map_accepts_the_bounds():
    check_score_map(np.array([[0.0, 1.0]], np.float32))
    with pytest.raises(WSOLError, match="^score map: contains NaN$"):
        check_score_map(np.array([[np.nan]]))


# ---------------------------------------------------------------------------------------------- boxes.py


def two_blobs() -> np.ndarray:
    """A 3 x 4 blob at 1.0 (box (1, 1, 5, 4)) and a 2 x 2 one at 0.21 (uint8 53 > int(0.2 * 255) = 51; box
    (7, 6, 9, 8), clipped to W - 1 = 9)."""
    m = np.zeros((9, 10), np.float32)
    m[1:4, 1:5] = 1.0
    m[6:8, 7:9] = 0.21
    return m


def test_box_functions_defaults_are_tau_0_2_the_max_and_the_largest_contour():
    m = two_blobs()
    np.testing.assert_array_equal(boxes_from_map(m), [[1, 1, 5, 4]])
    np.testing.assert_array_equal(boxes_from_maps(m[None])[0], [[1, 1, 5, 4]])
    assert sorted(map(tuple, boxes_from_map(m, components="all"))) == [(1, 1, 5, 4), (7, 6, 9, 8)]
    assert mask_from_map(m).sum() == 12 + 4 and masks_from_maps(m[None]).sum() == 16
    assert threshold_value(m, 0.2) == 51 and threshold_values(m[None], 0.2).tolist() == [51]
    assert threshold_values(m[None], 0.2).dtype == np.int64
    assert sorted(map(tuple, contour_boxes(mask_from_map(m).view(np.uint8)))) == [(1, 1, 5, 4), (7, 6, 9, 8)]
    assert mask_from_map(m, 0.21).sum() == 12  # int(0.21 * 255) = 53 is not below 53


def test_threshold_values_percentile_reference_below_100_only():
    """reference 100 is the max, and so is any larger value; below 100 the percentile of the uint8 map."""
    m = (np.arange(10, dtype=np.float32) / 10).reshape(1, 2, 5)  # uint8 0, 25, 51, ..., 229
    assert threshold_values(m, 0.5, 100.0).tolist() == [114]
    assert threshold_values(m, 0.5, 99.0).tolist() == [int(0.5 * np.percentile(to_uint8(m), 99))]
    assert threshold_values(m, 0.5, 99.0).tolist() == [113]  # 0.5 * (204 + 0.91 * 25) = 113.375


def test_box_iou_matrix_and_degenerate_boxes():
    a = np.array([[0, 0, 1, 1], [2, 2, 1, 1]])  # the second is empty (x1 < x0 and y1 < y0): area 0
    b = np.array([[0, 0, 1, 1], [0, 0, 3, 1], [2, 2, 1, 1]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3) and iou.dtype == np.float64
    # 4 / 4, 4 / 8, and (empty vs empty: union 0) 0, never NaN
    np.testing.assert_array_equal(iou, [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # an inverted box of negative area makes the union negative: IoU 0, not inter / union
    assert box_iou(np.array([[0, 0, -2, 5]]), np.array([[0, 0, 0, 0]]))[0, 0] == 0.0


def test_to_uint8_truncates():
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.999, 1.0, 0.5, 0.0039])), [0, 254, 255, 127, 0])
    assert to_uint8(np.array([0.5])).dtype == np.uint8


def test_trace_boxes_offset_frame_and_largest_row():
    fg = np.zeros((6, 8), np.uint8)
    fg[0:2, 0:2] = 1  # 2 x 2: contour area 1
    fg[3:6, 4:8] = 1  # 3 x 4: contour area 6, the largest
    boxes, largest = trace_boxes(fg)
    assert tuple(boxes[largest]) == (4, 3, 7, 5)  # x1 = min(4 + 4, 7), y1 = min(3 + 3, 5)
    assert sorted(map(tuple, boxes)) == [(0, 0, 2, 2), (4, 3, 7, 5)]
    # the same crop placed at (10, 20) of a 30 x 40 image: no clipping at the crop's edge
    boxes, largest = trace_boxes(fg, offset=(10, 20), frame=(30, 40))
    assert tuple(boxes[largest]) == (14, 23, 18, 26)
    assert sorted(map(tuple, boxes)) == [(10, 20, 12, 22), (14, 23, 18, 26)]
    boxes, largest = trace_boxes(np.zeros((3, 3), np.uint8))
    assert largest == 0 and boxes.tolist() == [[0, 0, 0, 0]] and boxes.dtype == np.int64


# ---------------------------------------------------------------------------------------------- variants.py


@pytest.mark.parametrize(("spec", "method", "nwc", "pas", "published", "options"), [
    ("cam", "cam", False, False, False, {}),
    (" CAM + NWC ", "cam", True, False, False, {"nwc": True}),
    ("cam+pas", "cam", False, True, False, {}),
    ("cam+nwc+pas", "cam", True, True, False, {"nwc": True}),
    ("pc1+published", "pc1", False, False, True, {"as_published": True}),
    ("cam+published+pas", "cam", False, True, True, {"as_published": True}),
    ("gradcam+pas", "gradcam", False, True, False, {}),
])
def test_map_variant_parse(spec, method, nwc, pas, published, options):
    v = MapVariant.parse(spec)
    assert (v.spec, v.method, v.nwc, v.pas, v.published) == (spec, method, nwc, pas, published)
    assert v.options == options


@pytest.mark.parametrize(("spec", "message"), [
    ("cam+foo", "map variant 'cam\\+foo': unknown modifier 'foo'; use \\+nwc, \\+published and/or \\+pas"),
    ("cam+zz+aa", "map variant 'cam\\+zz\\+aa': unknown modifier 'aa'; use"),
    ("gradcam+nwc", "map variant 'gradcam\\+nwc': \\+nwc applies to cam only"),
    ("gradcam+published", "map variant 'gradcam\\+published': as published \\(CAM Back Again's procedure\\) exists "
                          "for cam and pc1, without \\+nwc"),
    ("cam+nwc+published", "map variant 'cam\\+nwc\\+published': as published"),
])
def test_map_variant_parse_errors(spec, message):
    with pytest.raises(WSOLError, match=f"^{message}"):
        MapVariant.parse(spec)


def test_map_variant_parse_checks_the_method_name():
    with pytest.raises(WSOLError, match="nosuchcam"):
        MapVariant.parse("nosuchcam+pas")


def test_map_variant_score_maps_are_float32_224_and_pas_only_when_asked():
    raw = torch.zeros(2, 7, 7, dtype=torch.float64)
    raw[:, 1:6, 1:6] = 1.0
    raw[:, 3, 3] = 3.0
    plain = MapVariant.parse("cam").score_maps(raw)
    assert plain.shape == (2, 224, 224) and plain.dtype == np.float32
    assert plain.max() == 1.0 and plain.min() == 0.0
    pas = MapVariant.parse("cam+pas").score_maps(raw)
    assert pas.dtype == np.float32
    np.testing.assert_array_equal(pas, pas_normalize(plain))
    assert (pas == 1.0).sum() > 10 * (plain == 1.0).sum()  # PaS saturates the top tenth


def test_pas_normalize_batch_and_dtype():
    maps = np.stack([np.arange(10, dtype=np.float32).reshape(2, 5) / 10, np.zeros((2, 5), np.float32)])
    out = pas_normalize(maps)
    assert out.dtype == np.float32 and out.shape == maps.shape
    np.testing.assert_allclose(out[0].ravel()[:9], np.arange(9) / 10 / 0.81, rtol=1e-6)
    assert out[0, 1, 4] == 1.0 and not out[1].any()  # clipped; an all-zero map stays
    np.testing.assert_allclose(pas_normalize(maps, 50.0)[0, 0, 1], 0.1 / 0.45, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- crf.py


def test_bilateral_features_by_hand():
    image = torch.arange(3 * 2 * 4, dtype=torch.float32).view(1, 3, 2, 4)  # channel c, row y, col x: 8c + 4y + x
    f = bilateral_features(image, sigma_rgb=2.0, sigma_xy=4.0)  # downsample 1 by default
    assert f.shape == (1, 8, 5)
    # pixel (x=3, y=1) is row 7: [3 / 4, 1 / 4, (7, 15, 23) / 2]
    torch.testing.assert_close(f[0, 7], torch.tensor([0.75, 0.25, 3.5, 7.5, 11.5]))
    torch.testing.assert_close(f[0, 1], torch.tensor([0.25, 0.0, 0.5, 4.5, 8.5]))
    # downsample 2: 2 x 2 blocks, centres at x = 0.5, 2.5 and y = 0.5, block-mean colours
    f2 = bilateral_features(image, 2.0, 4.0, downsample=2)
    assert f2.shape == (1, 2, 5)
    torch.testing.assert_close(f2[0, 1], torch.tensor([2.5 / 4, 0.5 / 4, 4.5 / 2, 12.5 / 2, 20.5 / 2]))
    with pytest.raises(WSOLError, match=r"^CRF: image must be \(B, 3, H, W\), got shape \(1, 2, 2, 4\)$"):
        bilateral_features(image[:, :2], 2.0, 4.0)


@pytest.mark.parametrize("chunk", [1, 3, 2048])
def test_dense_gaussian_filter_is_the_kernel_times_the_values(chunk):
    features = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])
    values = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0]]])
    d2 = torch.cdist(features[0].double(), features[0].double()) ** 2
    expected = torch.exp(-d2 / 2) @ values[0].double()
    torch.testing.assert_close(dense_gaussian_filter(features, values, chunk)[0].double(), expected)


def test_crf_without_iterations_is_the_clamped_unary():
    image = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(0)) * 255
    maps = torch.tensor([[0.0, 0.25, 0.5, 1.0, 0.75]]).repeat(6, 1)[None]
    out = crf_refine(image, maps, iterations=0, downsample=1)
    torch.testing.assert_close(out, maps.clamp(1e-5, 1 - 1e-5))
    assert out.dtype == maps.dtype and out.shape == maps.shape


def test_crf_one_iteration_by_hand():
    """One pixel pair, no colour difference, far apart in xy except for the appearance kernel: the mean-field
    step q = softmax(unary + w_b (A q - q) + w_s (K q - q)) written out."""
    image = torch.zeros(1, 3, 1, 2)
    maps = torch.tensor([[[0.8, 0.3]]])
    out = crf_refine(image, maps, iterations=1, sigma_rgb=13.0, sigma_xy=1.0, bilateral_weight=2.0,
                     smooth_sigma_xy=0.5, smooth_weight=3.0, downsample=1)
    p = maps.flatten().double()
    unary = torch.stack([torch.log1p(-p), torch.log(p)], 1)
    q = unary.softmax(1)
    a = torch.exp(torch.tensor(-0.5 * (1.0 / 1.0) ** 2, dtype=torch.float64))  # appearance, distance 1
    k = torch.exp(torch.tensor(-0.5 * (1.0 / 0.5) ** 2, dtype=torch.float64))  # smoothness, distance 1
    message = 2.0 * a * q.flip(0) + 3.0 * k * q.flip(0)  # (A q - q) = the other pixel's q times the kernel
    expected = (unary + message).softmax(1)[:, 1]
    torch.testing.assert_close(out.flatten().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("maps", "message"), [
    (torch.zeros(1, 4, 5), r"^CRF: maps \(1, 4, 5\) must be \(B, H, W\) of images \(1, 3, 4, 4\)$"),
    (torch.zeros(2, 4, 4), r"^CRF: maps \(2, 4, 4\) must be"),
    (torch.zeros(4, 4), r"^CRF: maps \(4, 4\) must be"),
    (torch.full((1, 4, 4), 1.5), r"^CRF: score maps must lie in \[0, 1\] \(normalise them first\)$"),
    (torch.full((1, 4, 4), -0.5), r"^CRF: score maps must lie in \[0, 1\]"),
    (torch.full((1, 4, 4), float("nan")), r"^CRF: score maps must lie in \[0, 1\]"),
])
def test_crf_refine_errors(maps, message):
    with pytest.raises(WSOLError, match=message):
        crf_refine(torch.zeros(1, 3, 4, 4), maps)
