"""The torchmetrics base of :class:`~wsol.metrics.BoxAccuracy` and :class:`~wsol.metrics.PixelAP`: metric
states that are summed integer counters, exchanged as numpy arrays with the torch-free twins in
:mod:`wsol.metrics.counts` (shards, ``wsol evaluate``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torchmetrics import Metric


class CounterMetric(Metric):
    """A ``Metric`` whose states, named in :attr:`STATES`, are counters that add up."""

    STATES: ClassVar[tuple[str, ...]] = ()

    def add_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Add counters given as arrays (a batch's increments, or another process's :meth:`state_arrays`)."""
        for name, value in state.items():
            current = getattr(self, name)
            setattr(self, name, current + torch.as_tensor(np.asarray(value), dtype=current.dtype,
                                                          device=current.device))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The counters as int64 arrays, by the names of :attr:`STATES`."""
        return {name: getattr(self, name).cpu().numpy().astype(np.int64) for name in self.STATES}
