"""Helpers for the tests that replace ``compute_cams`` with a stand-in (test_pinned_localize.py,
test_mutants_folder.py): the stand-in reads which map to return from the pixels the model was given."""

from __future__ import annotations

import torch
from torch import nn

from wsol.localize.pipeline import preprocessing


def input_rgb(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's normalised input batch (B, 3, S, S) back in 0..255 RGB, rounded, on the CPU."""
    prep = preprocessing(model)
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
    return ((images.float().cpu() * std + mean) * 255).round()
