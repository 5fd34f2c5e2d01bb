"""The metrics' compiled kernels against independent references on small maps (mutation testing, issue 12).

``sweep_levels`` against OpenCV's contours at every needed cut, ``pixel_histograms`` against
``numpy.histogram`` and hand-placed bins. The maps are small so that ``scripts/mutation.sh`` can run these
tests on the kernels' pure-Python form (numba cannot compile mutated code).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scoremap_cases import corner_case_maps
from wsol.metrics._kernels import pixel_histograms, sweep_levels

CRITERIA = np.array([0.1, 0.3, 0.5, 0.7, 0.9])


def _iou(box: np.ndarray, gt: np.ndarray) -> float:
    """Best IoU of one inclusive box with the GT boxes, written out for the test."""
    best = 0.0
    for g in gt:
        iw = min(box[2], g[2]) - max(box[0], g[0]) + 1
        ih = min(box[3], g[3]) - max(box[1], g[1]) + 1
        inter = max(0, iw) * max(0, ih)
        union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
        best = max(best, inter / union if union > 0 else 0.0)
    return best


def _opencv_levels(u8: np.ndarray, cut: int, gt: np.ndarray, criteria: np.ndarray = CRITERIA
                   ) -> tuple[int, np.ndarray, np.ndarray]:
    """(outer contours, outer contours reaching each criterion, whether any contour reaches it) at ``u8 > cut``."""
    height, width = u8.shape
    contours, hierarchy = cv2.findContours((u8 > cut).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    outer_passing = np.zeros(len(criteria), np.int64)
    any_passing = np.zeros(len(criteria), bool)
    num_outer = 0
    for i, contour in enumerate(contours):
        depth, parent = 0, hierarchy[0, i, 3]
        while parent >= 0:
            depth, parent = depth + 1, hierarchy[0, parent, 3]
        x, y, w, h = cv2.boundingRect(contour)
        passes = _iou(np.array([x, y, min(x + w, width - 1), min(y + h, height - 1)]), gt) >= criteria
        any_passing |= passes
        if depth % 2 == 0:
            num_outer += 1
            outer_passing += passes
    return num_outer, outer_passing, any_passing


def _small_maps() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    maps = corner_case_maps(rng, size=16)[1:]  # (the all-zero map never reaches the sweep)
    plateaus = rng.integers(0, 5, (13, 17)).astype(np.uint8) * 60  # ties on few levels, 255 included
    maps.append(np.minimum(plateaus, 255) / 255.0)
    ring = np.zeros((12, 12))
    ring[2:10, 2:10] = 1.0
    ring[4:7, 5:8] = 0.3  # a hole whose level is in between: a hole box at the low cuts only
    maps.append(ring)
    return [m for m in maps if m.max() > 0]


@pytest.mark.parametrize("index", range(len(_small_maps())))
def test_sweep_levels_equals_opencv_at_every_needed_cut(index):
    score_map = _small_maps()[index]
    u8 = (score_map * 255).astype(np.uint8)
    height, width = u8.shape
    # GT: a box of the map's own foreground at a middle level (hits occur), and a far corner box
    ys, xs = np.nonzero(u8 > u8.max() // 2)
    gt = np.array([[xs.min(), ys.min(), min(xs.max() + 1, width - 1), min(ys.max() + 1, height - 1)],
                   [0, 0, 1, 1]], np.int64)
    needed = np.zeros(256, bool)
    needed[np.unique(np.concatenate([u8.ravel(), u8.ravel() - 1, [0, 254]]).clip(0, 255))] = True
    needed[::37] = True
    num_components, components_passing, any_passing = sweep_levels(u8, needed, gt, CRITERIA)
    assert not num_components[~needed].any() and not any_passing[~needed].any()
    for cut in np.flatnonzero(needed):
        outer, outer_passing, any_pass = _opencv_levels(u8, cut, gt)
        assert num_components[cut] == outer == cv2.connectedComponents((u8 > cut).astype(np.uint8), 8)[0] - 1
        np.testing.assert_array_equal(components_passing[cut], outer_passing, err_msg=f"cut {cut}")
        np.testing.assert_array_equal(any_passing[cut], any_pass, err_msg=f"cut {cut}")


def test_sweep_levels_hand_checked_block_with_a_hole():
    """A 6 x 6 block at 200 with a 2 x 2 hole at 100, in an 10 x 10 map: hand-counted boxes."""
    u8 = np.zeros((10, 10), np.uint8)
    u8[2:8, 2:8] = 200
    u8[4:6, 4:6] = 100
    gt = np.array([[2, 2, 8, 8]], np.int64)  # the block's box with the one-pixel quirk: IoU 1
    needed = np.zeros(256, bool)
    needed[[0, 99, 100, 199, 200]] = True
    num, passing, anyp = sweep_levels(u8, needed, gt, np.array([0.5, 1.0]))
    assert (num.dtype, passing.dtype, anyp.dtype) == (np.int64, np.int64, np.bool_)
    assert num.shape == (256,) and passing.shape == anyp.shape == (256, 2)
    np.testing.assert_array_equal(num[[0, 99, 100, 199, 200]], [1, 1, 1, 1, 0])
    # cuts 0 and 99: the full block, box (2, 2, 8, 8), IoU 1
    np.testing.assert_array_equal(passing[[0, 99]], [[1, 1], [1, 1]])
    # cuts 100 and 199: the block with the hole; the outer box is still (2, 2, 8, 8); the hole's contour box
    # is (3, 3, 6, 6) + the quirk = (3, 3, 7, 7), IoU 25 / 49 with the GT
    np.testing.assert_array_equal(passing[[100, 199]], [[1, 1], [1, 1]])
    np.testing.assert_array_equal(anyp[[100, 199]], [[True, True], [True, True]])
    np.testing.assert_array_equal(anyp[200], [False, False])
    np.testing.assert_array_equal(passing[200], [0, 0])
    # a GT on the hole's box: the outer box (2, 2, 8, 8) has IoU 25 / 49 = 0.51 with it (0.5 but not 0.9),
    # the hole's box equals it
    num, passing, anyp = sweep_levels(u8, needed, np.array([[3, 3, 7, 7]], np.int64), np.array([0.5, 0.9]))
    np.testing.assert_array_equal(passing[[99, 100]], [[1, 0], [1, 0]])
    np.testing.assert_array_equal(anyp[99], [True, False])  # no hole yet at cut 99
    np.testing.assert_array_equal(anyp[100], [True, True])


def test_sweep_levels_touching_the_frame_clips_and_has_no_hole():
    """A foreground on the right edge; the background hole-candidate touching the frame is not a hole."""
    u8 = np.zeros((5, 6), np.uint8)
    u8[1:4, 3:6] = 255  # a 3 x 3 block at the right edge: box (3, 1, min(6, 5), 4) = (3, 1, 5, 4)
    needed = np.zeros(256, bool)
    needed[[0, 254, 255]] = True
    num, passing, anyp = sweep_levels(u8, needed, np.array([[3, 1, 5, 4]], np.int64), np.array([1.0]))
    np.testing.assert_array_equal(num[[0, 254, 255]], [1, 1, 0])
    np.testing.assert_array_equal(passing[[0, 254]], [[1], [1]])
    np.testing.assert_array_equal(anyp[[0, 254, 255]], [[True], [True], [False]])
    # a GT one pixel narrower on the left or the bottom: IoU < 1
    num, passing, anyp = sweep_levels(u8, needed, np.array([[4, 1, 5, 4]], np.int64), np.array([1.0]))
    assert passing[0, 0] == 0 and not anyp[0, 0]
    num, passing, anyp = sweep_levels(u8, needed, np.array([[3, 1, 5, 3]], np.int64), np.array([1.0]))
    assert passing[0, 0] == 0 and not anyp[0, 0]


def test_sweep_levels_counts_diagonal_pixels_as_one_component_and_their_gap_as_no_hole():
    u8 = np.zeros((6, 6), np.uint8)
    for i in range(1, 5):
        u8[i, i] = 90  # an 8-connected diagonal: one component, box (1, 1, 5, 5)
    u8[1, 4] = 90  # plus a pixel apart from it (not 8-adjacent to the diagonal)
    needed = np.zeros(256, bool)
    needed[[0, 89, 90]] = True
    num, passing, _ = sweep_levels(u8, needed, np.array([[1, 1, 5, 5]], np.int64), np.array([1.0, 0.05]))
    np.testing.assert_array_equal(num[[0, 89, 90]], [2, 2, 0])
    # the diagonal passes both; the single pixel's box (4, 1, 5, 2) has IoU 4 / 25 = 0.16: 0.05 only
    np.testing.assert_array_equal(passing[0], [1, 2])


def test_pixel_histograms_hand_placed_bins():
    """interval 0.25: edges (0, .25, .5, .75, 1, 2, 3); 1.0 falls in [1, 2) as in numpy.histogram."""
    edges = np.array([0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0])
    values = np.array([[0.0, 0.2499, 0.25, 0.5, 0.7499, 0.75, 0.999, 1.0]], np.float64)
    fg = np.array([[True, True, True, True, False, False, False, False]])
    counts, problems = pixel_histograms(values[None], fg[None], np.zeros((0, 0, 0), bool), edges, 0.25)
    np.testing.assert_array_equal(counts, [[2, 1, 1, 0, 0, 0], [0, 0, 1, 2, 1, 0]])
    np.testing.assert_array_equal(problems, [0])
    assert counts.dtype == np.int64 and problems.dtype == np.int8  # counts add into the metric's long states
    # ignored background pixels count nowhere; an ignored foreground pixel still counts
    ignore = np.array([[[True, False, False, False, True, False, False, True]]])
    counts, _ = pixel_histograms(values[None], fg[None], ignore, edges, 0.25)
    np.testing.assert_array_equal(counts, [[2, 1, 1, 0, 0, 0], [0, 0, 0, 2, 0, 0]])
    # a one-pixel map whose background pixel is ignored counts nothing
    counts, _ = pixel_histograms(np.full((1, 1, 1), 0.5), np.zeros((1, 1, 1), bool), np.ones((1, 1, 1), bool),
                                 edges, 0.25)
    assert not counts.any()


def test_pixel_histograms_flag_bad_maps_and_skip_them():
    edges = np.append(np.arange(0, 1, 0.1), [1.0, 2.0, 3.0])
    good = np.full((2, 2), 0.35)
    nan = good.copy()
    nan[0, 1] = np.nan
    above, below = good.copy(), good.copy()
    above[1, 1] = 1.0001
    below[0, 0] = -0.0001
    maps = np.stack([good, nan, above, below, good * 3])
    fg = np.zeros(maps.shape, bool)
    fg[:, 0] = True  # two foreground, two background pixels per map
    counts, problems = pixel_histograms(maps, fg, np.zeros((0, 0, 0), bool), edges, 0.1)
    np.testing.assert_array_equal(problems, [0, 1, 2, 2, 2])
    expected = np.zeros((2, 12), np.int64)
    expected[:, 3] = 2  # only the first map counts: 0.35 in [0.3, 0.4)
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_pixel_histograms_equal_numpy_on_random_maps(interval):
    rng = np.random.default_rng(5)
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    maps = rng.random((3, 7, 9)).astype(np.float32)
    maps[0, 0, :3] = [0.0, 1.0, np.float32(0.5)]
    fg = rng.random(maps.shape) < 0.4
    ignore = rng.random(maps.shape) < 0.3
    counts, problems = pixel_histograms(maps, fg, ignore, edges, interval)
    assert not problems.any()
    values = maps.astype(np.float64)
    np.testing.assert_array_equal(counts[0], np.histogram(values[fg], edges)[0])
    np.testing.assert_array_equal(counts[1], np.histogram(values[~fg & ~ignore], edges)[0])


@pytest.mark.filterwarnings("error::RuntimeWarning")  # compiled, a division by zero raises
def test_sweep_levels_one_pixel_box_and_inverted_gt():
    """A lone pixel in the bottom-right corner: its box (2, 2, 2, 2) is one pixel (the quirk is clipped), so a
    GT on it has union 1 and IoU 1. An inverted GT box (x1 < x0) has a negative area: union <= 0, IoU 0."""
    u8 = np.zeros((3, 3), np.uint8)
    u8[2, 2] = 255
    needed = np.zeros(256, bool)
    needed[0] = True
    num, passing, anyp = sweep_levels(u8, needed, np.array([[2, 2, 2, 2]], np.int64), np.array([1.0]))
    assert num[0] == 1 and passing[0, 0] == 1 and anyp[0, 0]
    num, passing, anyp = sweep_levels(u8, needed, np.array([[10, 0, 0, 3]], np.int64), np.array([0.0001]))
    assert num[0] == 1 and passing[0, 0] == 0 and not anyp[0, 0]
    # area -1 against the box's 1: union 0, IoU 0 (the reference's 0 / 0 is NaN, which passes no criterion)
    num, passing, anyp = sweep_levels(u8, needed, np.array([[2, 2, 0, 2]], np.int64), np.array([0.0, 0.5]))
    assert num[0] == 1 and passing[0].tolist() == [1, 0] and anyp[0].tolist() == [True, False]


def test_sweep_levels_hole_at_the_lowest_cut_only():
    """A ring at 1 around one 0: its hole exists at cut 0 only, and only the hole's box (1, 1, 4, 4) is the
    GT's; the ring's box (0, 0, 4, 4) has IoU 16 / 25."""
    u8 = np.ones((5, 5), np.uint8)
    u8[2, 2] = 0
    needed = np.zeros(256, bool)
    needed[0] = True
    num, passing, anyp = sweep_levels(u8, needed, np.array([[1, 1, 4, 4]], np.int64), np.array([0.6, 1.0]))
    assert num[0] == 1 and passing[0].tolist() == [1, 0] and anyp[0].tolist() == [True, True]


# the neighbour bits of the sweep's 8-neighbourhood code: bit j is the pixel at NEIGHBOURS[j] (dx, dy)
NEIGHBOURS = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]


def _patch(code: int, centre: int) -> np.ndarray:
    """A 5 x 5 zero frame around the 3 x 3 neighbourhood of ``code``, its centre set to ``centre``."""
    patch = np.zeros((5, 5), np.uint8)
    for j, (dx, dy) in enumerate(NEIGHBOURS):
        patch[2 + dy, 2 + dx] = code >> j & 1
    patch[2, 2] = centre
    return patch


def test_euler_delta_table_is_four_times_the_change_of_skimages_euler_number():
    """Every entry: switching the centre on changes the 8-connected Euler number (components - holes) by
    table / 4, with scikit-image's Euler number as the reference (called directly: the sweep reads the table
    built at import)."""
    from skimage.measure import euler_number

    from wsol.metrics._kernels import _euler_delta_table

    table = _euler_delta_table()
    expected = [4 * (euler_number(_patch(code, 1), connectivity=2) - euler_number(_patch(code, 0), connectivity=2))
                for code in range(256)]
    assert table.dtype == np.int64 and table.shape == (256,)
    assert table.tolist() == expected
    # alone: +1 component; beside one: no change; between two (n and s): they merge; in a ring: fills its hole
    assert (table[0], table[0b10], table[0b01000010], table[0b11111111]) == (4, 0, -4, 4)


def test_representatives_table_names_one_neighbour_per_group_of_adjacent_neighbours():
    """Every entry: one index per group of mutually 8-adjacent active neighbours (the groups of the ring
    without its centre, by scipy's 8-connected labelling), -1 after them."""
    from scipy import ndimage

    from wsol.metrics._kernels import _representatives_table

    table = _representatives_table()
    assert table.dtype == np.int64 and table.shape == (256, 4)
    for code in range(256):
        labels, count = ndimage.label(_patch(code, 0), structure=np.ones((3, 3)))
        reps = [int(r) for r in table[code] if r >= 0]
        assert table[code].tolist() == reps + [-1] * (4 - len(reps)), code  # the -1 padding only at the end
        assert reps == sorted(reps) and all(code >> r & 1 for r in reps), code
        groups = [labels[2 + NEIGHBOURS[r][1], 2 + NEIGHBOURS[r][0]] for r in reps]
        assert sorted(groups) == list(range(1, count + 1)), code  # one per group, every group
    assert table[0b10100101].tolist() == [0, 2, 5, 7]  # the four corners: four groups
    assert table[0b11111111].tolist() == [0, -1, -1, -1]  # the whole ring: one


def test_top_follows_links_to_the_root():
    from wsol.metrics._kernels import _top

    assert _top({0: 0, 3: 0, 5: 3, 7: 7}, 5) == 0
    assert _top({0: 0, 3: 0, 5: 3, 7: 7}, 7) == 7


def test_importing_the_kernels_skips_numbas_blas_probe_and_keeps_its_answer():
    """In a fresh interpreter (the probe runs at import): importing the kernels loads numba's arraymath
    without importing scipy.linalg, sets its BLAS flag as the probe would (scipy is installed), and puts the
    real probe back in both modules."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "import wsol.metrics._kernels\n"
        "import numba.np.arraymath as arraymath, numba.np.linalg as linalg\n"
        "print(json.dumps({'scipy_linalg': 'scipy.linalg' in sys.modules, 'have_blas': arraymath._HAVE_BLAS,\n"
        "                  'same_probe': arraymath.ensure_blas is linalg.ensure_blas,\n"
        "                  'probe': linalg.ensure_blas.__name__}))\n"
    )
    # the same modules as this process (under mutmut: its mutated copy; MUTANT_UNDER_TEST is inherited)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "scipy_linalg": False, "have_blas": True, "same_probe": True, "probe": "ensure_blas"}


def _background_boxes(u8: np.ndarray, cut: int) -> list[list[int]]:
    """The box a hole's contour would have, for every 4-connected background component of ``u8 > cut`` (the
    holes and the bays that touch the frame): the component's box grown by one pixel, with the quirk."""
    height, width = u8.shape
    count, _, stats, _ = cv2.connectedComponentsWithStats((u8 <= cut).astype(np.uint8), connectivity=4)
    return [[x - 1, y - 1, min(x + w, width - 1), min(y + h, height - 1)] for x, y, w, h, _ in stats[1:count]]


def _holey_maps() -> list[np.ndarray]:
    """Small uint8 maps full of holes, bays, nested rings and merges: few levels on random blobs."""
    rng = np.random.default_rng(2024)
    maps = []
    for _ in range(14):
        height, width = rng.integers(5, 11, 2)
        levels = rng.integers(0, 4, (height, width)) * rng.integers(1, 85)
        maps.append(np.minimum(levels, 255).astype(np.uint8))
    rings = np.zeros((11, 11), np.uint8)
    for level, inset in [(50, 1), (0, 2), (120, 3), (0, 4)]:  # nested rings, holes touching rows/columns 1
        rings[inset:11 - inset, inset:11 - inset] = level
    rings[1:10, 1] = 50
    maps.append(rings)
    merged = np.full((7, 9), 200, np.uint8)
    merged[3, 3:6] = [0, 50, 0]  # two holes at cuts 0-49, one (two merged by the 50) at cuts 50-199
    maps.append(merged)
    two_holes = np.full((7, 9), 200, np.uint8)
    two_holes[3, [2, 6]] = [100, 0]  # filling the hole at 100 leaves the other: 1 component, 1 hole, at cuts 0-99
    maps.append(two_holes)
    return maps


@pytest.mark.parametrize("index", range(len(_holey_maps())))
def test_sweep_levels_equals_opencv_with_gt_on_holes_and_bays(index):
    """GT boxes on the boxes of holes (where only the hole's contour reaches IoU 1) and on the would-be boxes
    of bays (background touching the frame: no contour has them), at every cut, at sparse cuts and at one."""
    u8 = _holey_maps()[index]
    rng = np.random.default_rng(index)
    candidates = {tuple(box) for cut in np.unique(u8)[:-1] for box in _background_boxes(u8, cut)}
    criteria = np.array([0.5, 0.8, 1.0])
    for box in sorted(candidates):
        gt = np.array([box], np.int64)
        for needed_cuts in (np.arange(256), np.unique(np.concatenate([u8.ravel(), u8.ravel() - 1]).clip(0, 255)),
                            [int(rng.choice(np.unique(u8)[:-1]))]):
            needed = np.zeros(256, bool)
            needed[needed_cuts] = True
            num_components, components_passing, any_passing = sweep_levels(u8, needed, gt, criteria)
            for cut in np.unique(np.concatenate([u8.ravel(), u8.ravel() - 1]).clip(0, 255)):
                if not needed[cut]:
                    continue
                outer, outer_passing, any_pass = _opencv_levels(u8, cut, gt, criteria)
                where = f"box {box}, cut {cut}, needed {len(needed_cuts)}"
                assert num_components[cut] == outer, where
                np.testing.assert_array_equal(components_passing[cut], outer_passing, err_msg=where)
                np.testing.assert_array_equal(any_passing[cut], any_pass, err_msg=where)
