"""Throughput of the evaluation engine against the per-threshold oracle, on the same maps, in one run.

    .venv/bin/python benchmarks/bench_metrics.py [--num 300] [--interval 0.001]

Prints images/s of wsol's BoxAccuracy and PixelAP and of the oracle (tests/protocol_oracle.py, one OpenCV
threshold + findContours per threshold as in the reference), their ratio, and checks the numbers are equal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from protocol_oracle import oracle_box_accuracy, oracle_pxap  # noqa: E402
from scoremap_cases import benchmark_set  # noqa: E402
from wsol.metrics import BoxAccuracy, PixelAP  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=300, help="number of 224 x 224 score maps")
    parser.add_argument("--interval", type=float, default=0.001, help="cam_curve_interval (0.001 = 1000 thresholds)")
    parser.add_argument("--threads", type=int, default=None, help="BoxAccuracy threads (default: up to 4)")
    args = parser.parse_args()
    maps, boxes = benchmark_set(args.num, seed=0)
    stack = np.stack(maps)
    masks = np.stack([m > 0.5 for m in np.roll(stack, 7, axis=2)])  # masks that overlap the maps imperfectly
    ignore = np.zeros_like(masks)
    ignore[:, :20] = True

    def ours_boxes():
        metric = BoxAccuracy(args.interval, num_threads=args.threads)
        for start in range(0, len(maps), 32):
            metric.update(stack[start:start + 32], boxes[start:start + 32])
        return metric

    metric, t_ours = timed(ours_boxes)
    every, t_v2 = timed(lambda: oracle_box_accuracy(maps, boxes, args.interval, multi_contour=True))
    largest, t_v1 = timed(lambda: oracle_box_accuracy(maps, boxes, args.interval, (50,), multi_contour=False))
    curves = metric.curves()
    same = np.array_equal(curves["largest"], largest[50]) and all(
        np.array_equal(curves["all"][r], every[i]) for r, i in enumerate((30, 50, 70)))

    def ours_pixels():
        metric = PixelAP(args.interval)
        for start in range(0, len(maps), 32):
            metric.update(stack[start:start + 32], masks[start:start + 32], ignore[start:start + 32])
        return metric.compute()["PxAP"]

    pxap, t_px = timed(ours_pixels)
    pxap_oracle, t_px_oracle = timed(lambda: oracle_pxap(stack, masks, ignore, args.interval))

    n = len(maps)
    print(f"{n} maps of 224 x 224, {len(metric.thresholds)} thresholds (interval {args.interval:g}), "
          f"{metric.num_threads} threads")
    print(f"{'':38s}{'images/s':>10s}{'speed-up':>10s}")
    print(f"{'oracle MaxBoxAccV2 (all contours)':38s}{n / t_v2:10.1f}")
    print(f"{'oracle MaxBoxAcc (largest contour)':38s}{n / t_v1:10.1f}")
    print(f"{'wsol BoxAccuracy (both, one pass)':38s}{n / t_ours:10.1f}{t_v2 / t_ours:9.1f}x vs V2 oracle, "
          f"{(t_v1 + t_v2) / t_ours:.1f}x vs both")
    print(f"{'oracle PxAP':38s}{n / t_px_oracle:10.1f}")
    print(f"{'wsol PixelAP':38s}{n / t_px:10.1f}{t_px_oracle / t_px:9.1f}x")
    print(f"identical BoxAcc curves: {same}; PxAP {pxap:.6f} vs oracle {pxap_oracle:.6f}: {pxap == pxap_oracle}")
    if not same or pxap != pxap_oracle:
        sys.exit(1)


if __name__ == "__main__":
    main()
