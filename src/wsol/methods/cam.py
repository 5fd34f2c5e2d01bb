"""CAM (Zhou et al., 2016): a GAP classifier trained with cross-entropy; its map is the CAM."""

from __future__ import annotations

from wsol.methods.base import TrainingMethod


class CAMTraining(TrainingMethod):
    """The base every other method changes: nothing to add."""

    name = "cam"
