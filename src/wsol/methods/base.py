"""What a WSOL training method is: an optional network change, a training loss, and its localization map.

A method sees the classifier (:class:`wsol.models.WSOLClassifier`) and a training batch; everything else
(data, optimiser, validation with the protocol's metrics, checkpoints) is the shared training loop's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn


class TrainingMethod:
    """Plain CAM training: cross-entropy on the classifier's logits, no network change.

    Subclasses override :meth:`setup` (change the network in place, e.g. ADL's layers), :meth:`loss` (HaS's
    erasing, CutMix's mixing, ACoL's two branches) and :attr:`map_method` (the ``wsol.cams`` method that
    computes the map the method's paper evaluates, e.g. ACoL's two-branch maximum).
    """

    name: ClassVar[str] = "cam"
    map_method: ClassVar[str] = "cam"

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod
    def check(cls, options: Any) -> None:
        """Raise a one-line ``WSOLError`` naming the config key of an option out of range."""

    def setup(self, model: nn.Module) -> None:
        """Change ``model`` in place before training (and before loading a checkpoint of this method)."""

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, logits)`` of one training batch; the logits give the training accuracy."""
        logits = model(images)
        return F.cross_entropy(logits, labels), logits

    def record(self) -> dict[str, Any]:
        """What a checkpoint must hold to rebuild the network (:meth:`setup`) without the config."""
        return {"name": self.name}
