"""methods: how a WSOL classifier is trained (CAM, HaS, CutMix, ADL, ACoL, SPG), one module per method.

Between ``models`` (the networks) and ``train`` (the Lightning loop, which dispatches to the config's
``method.name``). Adding a method = one module with a :class:`TrainingMethod` subclass + one line here.
"""

from __future__ import annotations

from typing import Any

from wsol.errors import WSOLError
from wsol.methods.acol import ACoL
from wsol.methods.adl import ADL
from wsol.methods.base import TrainingMethod
from wsol.methods.cam import CAMTraining
from wsol.methods.cutmix import CutMix
from wsol.methods.has import HaS
from wsol.methods.spg import SPG

METHODS: dict[str, type[TrainingMethod]] = {
    "cam": CAMTraining,
    "has": HaS,
    "cutmix": CutMix,
    "adl": ADL,
    "acol": ACoL,
    "spg": SPG,
}


def method_class(name: str) -> type[TrainingMethod]:
    key = str(name).lower()
    if key not in METHODS:
        raise WSOLError(f"config method.name={name!r}: must be one of {', '.join(METHODS)}")
    return METHODS[key]


def check_method(options: Any) -> None:
    """Validate ``options`` (a ``MethodConfig``): a known name and its options in range."""
    method_class(options.name).check(options)


def get_training_method(options: Any) -> TrainingMethod:
    """The method a ``MethodConfig`` names, with its options."""
    return method_class(options.name)(options)


__all__ = ["METHODS", "TrainingMethod", "check_method", "get_training_method", "method_class"]
