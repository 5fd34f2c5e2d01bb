"""``wsol.modes.kept_modes``: every submodule's train/eval flag comes back as found, also after an exception."""

from __future__ import annotations

import pytest
from torch import nn

from wsol.modes import kept_modes


class _StickyEval(nn.Module):
    """A module whose ``train()`` keeps one child in eval mode (as F-CAM keeps its classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.BatchNorm2d(3)
        self.free = nn.Dropout()

    def train(self, mode: bool = True) -> _StickyEval:
        super().train(mode)
        self.frozen.eval()
        return self


def _mixed() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.BatchNorm2d(3), nn.Dropout()), _StickyEval())
    model.train()
    model[1][0].eval()  # nested: one grandchild in eval, its sibling and parent in train
    model[2].frozen.train()  # against its parent's own train(): only assignment can bring this back
    return model


def _flags(*modules: nn.Module) -> list[bool]:
    return [m.training for module in modules for m in module.modules()]


def test_restores_mixed_nested_flags() -> None:
    model = _mixed()
    before = _flags(model)
    assert len(set(before)) == 2
    with kept_modes(model):
        model.eval()
        assert not any(_flags(model))
    assert _flags(model) == before
    with kept_modes(model):
        model.train()
    assert _flags(model) == before


def test_restores_after_an_exception() -> None:
    model = _mixed()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"), kept_modes(model):
        model.eval()
        raise RuntimeError("boom")
    assert _flags(model) == before


def test_several_modules_and_new_ones() -> None:
    a, b = _mixed(), nn.Linear(2, 2).eval()
    before = _flags(a, b)
    with kept_modes(a, b):
        a.eval()
        b.train()
        a.add_module("extra", nn.Dropout().eval())  # added inside the block: left as it is afterwards
        a.extra.train()
    assert a.extra.training
    del a.extra
    assert _flags(a, b) == before
