"""Train/eval flags kept across a block of code: what a function that runs a model in eval mode for a moment
(a dry forward pass, a CAM) uses so that the caller's model comes back exactly as it was.

A top-level module without imports, so that model-agnostic packages (``wsol.cams``, ``wsol.memory``) can use it
without importing ``wsol.models`` (timm, the model registry).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@contextmanager
def kept_modes(*modules: nn.Module) -> Iterator[None]:
    """Record the ``training`` flag of every submodule of ``modules`` (themselves included) and set each back
    on exit, also on an exception.

    The flags are assigned, not restored through ``train()``, so a mix of train and eval submodules, or a
    module whose ``train()`` is overridden, comes back as it was. Modules added inside the block are not
    touched.
    """
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


__all__ = ["kept_modes"]
