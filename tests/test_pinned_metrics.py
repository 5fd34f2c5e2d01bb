"""Top-1 / Top-5 Loc pinned: the GT label at every rank 1..5 and 6 of the logits, with boxes that hit or miss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsol.metrics import BoxAccuracy

K = 10
HIT_BOX = np.array([[3, 2, 7, 5]])  # the box of the block below, at every threshold


def _hit_map() -> np.ndarray:
    m = np.zeros((12, 12), np.float32)
    m[2:5, 3:7] = 1.0  # contour box (3, 2, 7, 5) = HIT_BOX at every threshold
    return m


def _logits_with_label_at_rank(label: int, rank: int) -> torch.Tensor:
    """Logits (K,) whose classes in decreasing order put ``label`` at 1-based ``rank`` (no ties)."""
    others = [c for c in range(K) if c != label]
    order = others[:rank - 1] + [label] + others[rank - 1:]
    logits = torch.empty(K)
    logits[torch.tensor(order)] = torch.arange(K, 0, -1, dtype=torch.float32)  # 10, 9, ..., 1
    return logits


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5, 6])
def test_label_at_each_rank_alone(rank: int) -> None:
    label = 4
    logits = _logits_with_label_at_rank(label, rank)
    assert int((logits > logits[label]).sum()) == rank - 1
    metric = BoxAccuracy(cam_curve_interval=0.01)
    metric.update(_hit_map()[None], [HIT_BOX], logits=logits[None], labels=[label])
    r = metric.compute()
    assert r["MaxBoxAcc"] == 100.0
    assert r["top1_cls"] == (100.0 if rank == 1 else 0.0)
    assert r["top5_cls"] == (100.0 if rank <= 5 else 0.0)
    assert r["top1_loc"] == (100.0 if rank == 1 else 0.0)
    assert r["top5_loc"] == (100.0 if rank <= 5 else 0.0)
    assert r["top1_loc_v2"] == (100.0 if rank == 1 else 0.0)
    assert r["top5_loc_v2"] == (100.0 if rank <= 5 else 0.0)
    assert r["top1_loc_fixed"] == (100.0 if rank == 1 else 0.0)


def test_every_rank_in_one_batch_with_hits_and_misses() -> None:
    """Twelve images: the label at rank 1..6, each once with a hitting map and once with a missing one.

    Top-1 Loc needs rank 1 AND a hit: 1 of 12; Top-5 Loc rank <= 5 AND a hit: 5 of 12; classification
    counts the ranks alone: 2 and 10 of 12; MaxBoxAcc the hits alone: 6 of 12.
    """
    maps, boxes, logits, labels = [], [], [], []
    for rank in range(1, 7):
        for hit in (True, False):
            label = (rank * 3) % K
            maps.append(_hit_map() if hit else np.zeros((12, 12), np.float32))
            boxes.append(HIT_BOX if hit else np.array([[6, 6, 11, 11]]))  # the empty map's (0,0,0,0) misses
            logits.append(_logits_with_label_at_rank(label, rank))
            labels.append(label)
    metric = BoxAccuracy(cam_curve_interval=0.001)
    metric.update(np.stack(maps[:5]), boxes[:5], logits=torch.stack(logits[:5]), labels=labels[:5])
    metric.update(np.stack(maps[5:]), boxes[5:], logits=torch.stack(logits[5:]), labels=torch.tensor(labels[5:]))
    r = metric.compute()
    assert r["num_images"] == 12
    assert r["MaxBoxAcc"] == pytest.approx(6 * 100 / 12)
    assert r["top1_cls"] == pytest.approx(2 * 100 / 12)
    assert r["top5_cls"] == pytest.approx(10 * 100 / 12)
    assert r["top1_loc"] == pytest.approx(1 * 100 / 12)
    assert r["top5_loc"] == pytest.approx(5 * 100 / 12)
    assert r["top1_loc_v2"] == pytest.approx(1 * 100 / 12)
    assert r["top5_loc_v2"] == pytest.approx(5 * 100 / 12)


def test_fewer_than_five_classes_top5_is_every_class() -> None:
    metric = BoxAccuracy(cam_curve_interval=0.01)
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])  # label 2 at rank 3, then at rank 1
    metric.update(np.stack([_hit_map(), _hit_map()]), [HIT_BOX, HIT_BOX], logits=logits, labels=[2, 2])
    r = metric.compute()
    assert r["top1_loc"] == 50.0 and r["top5_loc"] == 100.0
