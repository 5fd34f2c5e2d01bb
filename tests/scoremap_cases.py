"""Score maps and GT that exercise the protocol's corner cases (shared by tests and benchmarks)."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_map(rng: np.random.Generator, size: int = 224, grid: int = 7, power: float = 3.0) -> np.ndarray:
    """A CAM-like map: a random low-resolution map upsampled bicubically, min-max normalised."""
    small = rng.random((grid, grid)).astype(np.float32) ** power
    up = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    up -= up.min()
    return up / up.max()


def ring_map(size: int = 224) -> np.ndarray:
    """A ring: its hole gives an inner contour (RETR_TREE) with a box of its own."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    return np.clip(1 - np.abs(r - size / 4) / (size / 8), 0, 1).astype(np.float32)


def corner_case_maps(rng: np.random.Generator, size: int = 224) -> list[np.ndarray]:
    maps = [np.zeros((size, size), np.float32), np.full((size, size), 0.5, np.float32), ring_map(size)]
    hot = np.zeros((size, size), np.float32)
    hot[size // 3, size // 2] = 1.0
    maps.append(hot)
    twins = np.zeros((size, size), np.float32)  # two equal blobs: a tie in contour area
    twins[40:60, 30:50] = 1.0
    twins[140:160, 150:170] = 1.0
    maps.append(twins)
    dots = (rng.random((size, size)) > 0.995).astype(np.float32)  # many single pixels (area 0 ties)
    maps.append(dots)
    noisy = np.clip(smooth_map(rng, size) + 0.15 * rng.random((size, size)), 0, 1).astype(np.float32)
    maps.append(noisy / noisy.max())
    maps.append(smooth_map(rng, size, grid=3, power=1.0))
    maps.append(smooth_map(rng, size, grid=14, power=4.0))
    edge = np.zeros((size, size), np.float32)  # touches the frame: the W - 1 / H - 1 clipping
    edge[:, size - 30:] = 0.9
    edge[size - 10:, :] = 0.7
    maps.append(edge)
    return maps


def random_gt_boxes(rng: np.random.Generator, size: int = 224, max_boxes: int = 3) -> np.ndarray:
    boxes = []
    for _ in range(rng.integers(1, max_boxes + 1)):
        x0, y0 = rng.integers(0, size - 8, 2)
        x1 = rng.integers(x0, size)
        y1 = rng.integers(y0, size)
        boxes.append([x0, y0, x1, y1])
    return np.array(boxes, dtype=np.int64)


def benchmark_set(num: int, seed: int = 0, size: int = 224):
    """``num`` maps (mostly CAM-like, some corner cases) with 1-3 GT boxes each."""
    rng = np.random.default_rng(seed)
    corner = corner_case_maps(rng, size)
    maps = [corner[i] if i < len(corner) else smooth_map(rng, size, grid=int(rng.integers(3, 15)),
                                                          power=float(rng.uniform(1, 4))) for i in range(num)]
    boxes = [random_gt_boxes(rng, size) for _ in range(num)]
    return maps, boxes
