"""cams: activation-map methods, ``(model, images, targets) -> raw maps (B, h, w)``, batched on the device."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from wsol.cams.base import CAMMethod, CAMOutput, Targets
from wsol.cams.registry import METHODS, get_method


def compute_cams(model: nn.Module, images: Tensor, targets: Targets = None, method: str = "cam",
                 **options: Any) -> CAMOutput:
    """Raw maps of ``method`` for ``targets`` (None/'top1' = predicted class, an int, or B ints).

    Raises ``WSOLError`` for an unknown method, a non-4-D input, or targets out of range / wrong length.
    """
    return get_method(method, **options)(model, images, targets)


__all__ = ["METHODS", "CAMMethod", "CAMOutput", "compute_cams", "get_method"]
