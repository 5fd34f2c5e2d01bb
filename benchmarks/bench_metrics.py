"""Throughput of the evaluation engine against the per-threshold oracle, on the same maps, in one run.

    .venv/bin/python benchmarks/bench_metrics.py [--num 1000] [--interval 0.001]

The maps are saved as ``.npy`` files first and every contender reads them back (as ``wsol evaluate`` does).
Prints images/s of wsol's BoxAccuracy and PixelAP and of the oracle (tests/protocol_oracle.py, one OpenCV
threshold + findContours per threshold as in the reference; BoxAccuracy computes both of the reference's
``multi_contour_eval`` modes in one pass, so it is compared with the oracle's two runs together), their
ratios, checks the numbers are equal, and writes ``benchmarks/results/bench_metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from protocol_oracle import oracle_box_accuracy, oracle_pxap  # noqa: E402
from scoremap_cases import benchmark_set  # noqa: E402
from wsol.metrics import BoxAccuracy, PixelAP  # noqa: E402
from wsol.metrics.scoremaps import load_score_map  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_metrics.json"
BATCH = 64  # as wsol evaluate


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=300, help="number of 224 x 224 score maps")
    parser.add_argument("--interval", type=float, default=0.001, help="cam_curve_interval (0.001 = 1000 thresholds)")
    parser.add_argument("--threads", type=int, default=None, help="BoxAccuracy threads (default: up to 4)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args()
    maps, boxes = benchmark_set(args.num, seed=0)
    stack = np.stack(maps).astype(np.float32)
    masks = np.stack([m > 0.5 for m in np.roll(stack, 7, axis=2)])  # masks that overlap the maps imperfectly
    ignore = np.zeros_like(masks)
    ignore[:, :20] = True
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i:05d}.npy" for i in range(len(maps))]
        for path, score_map in zip(paths, stack):
            np.save(path, score_map)
        BoxAccuracy(args.interval).update(stack[:2], boxes[:2])  # compiled kernels loaded before timing
        PixelAP(args.interval).update(stack[:2], masks[:2], ignore[:2])

        def read(start: int, stop: int) -> np.ndarray:
            return np.stack([load_score_map(p) for p in paths[start:stop]])

        def ours_boxes():
            metric = BoxAccuracy(args.interval, num_threads=args.threads)
            for start in range(0, len(paths), BATCH):
                metric.update(read(start, start + BATCH), boxes[start:start + BATCH])
            return metric

        def oracle(multi_contour: bool, ious: tuple[int, ...]):
            return oracle_box_accuracy([np.load(p) for p in paths], boxes, args.interval, ious,
                                       multi_contour=multi_contour)

        metric, t_ours = timed(ours_boxes)
        every, t_v2 = timed(lambda: oracle(True, (30, 50, 70)))
        largest, t_v1 = timed(lambda: oracle(False, (50,)))
        curves = metric.curves()
        same = np.array_equal(curves["largest"], largest[50]) and all(
            np.array_equal(curves["all"][r], every[i]) for r, i in enumerate((30, 50, 70)))

        def ours_pixels():
            metric = PixelAP(args.interval)
            for start in range(0, len(paths), BATCH):
                stop = start + BATCH
                metric.update(read(start, stop), masks[start:stop], ignore[start:stop])
            return metric.compute()["PxAP"]

        pxap, t_px = timed(ours_pixels)
        pxap_oracle, t_px_oracle = timed(lambda: oracle_pxap(np.stack([np.load(p) for p in paths]), masks, ignore,
                                                             args.interval))

    n = len(maps)
    figures = {
        "num_maps": n, "interval": args.interval, "threads": metric.num_threads,
        "images_per_s": {"oracle_v2_all_contours": n / t_v2, "oracle_v1_largest_contour": n / t_v1,
                         "oracle_both": n / (t_v1 + t_v2), "wsol_box_accuracy_both": n / t_ours,
                         "oracle_pxap": n / t_px_oracle, "wsol_pixel_ap": n / t_px},
        "box_speedup_vs_both": (t_v1 + t_v2) / t_ours, "box_speedup_vs_v2": t_v2 / t_ours,
        "pxap_speedup": t_px_oracle / t_px, "identical_box_curves": bool(same),
        "identical_pxap": bool(pxap == pxap_oracle), "pxap": pxap,
    }
    print(f"{n} maps of 224 x 224 read from .npy files, {len(metric.thresholds)} thresholds (interval "
          f"{args.interval:g}), {metric.num_threads} threads")
    print(f"{'':38s}{'images/s':>10s}{'speed-up':>10s}")
    print(f"{'oracle MaxBoxAccV2 (all contours)':38s}{n / t_v2:10.1f}")
    print(f"{'oracle MaxBoxAcc (largest contour)':38s}{n / t_v1:10.1f}")
    print(f"{'oracle, both modes':38s}{n / (t_v1 + t_v2):10.1f}")
    print(f"{'wsol BoxAccuracy (both, one pass)':38s}{n / t_ours:10.1f}{(t_v1 + t_v2) / t_ours:9.1f}x vs both, "
          f"{t_v2 / t_ours:.1f}x vs V2 alone")
    print(f"{'oracle PxAP (numpy.histogram)':38s}{n / t_px_oracle:10.1f}")
    print(f"{'wsol PixelAP':38s}{n / t_px:10.1f}{t_px_oracle / t_px:9.1f}x")
    print(f"identical BoxAcc curves: {same}; PxAP {pxap:.6f} vs oracle {pxap_oracle:.6f}: {pxap == pxap_oracle}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.json}")
    if not same or pxap != pxap_oracle:
        sys.exit(1)


if __name__ == "__main__":
    main()
