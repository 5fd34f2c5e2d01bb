"""Early stopping of bad trials: a Lightning callback that reports each epoch's val metric to the trial and
stops the run when the trial's pruner says so (our own small callback: no optuna-integration needed)."""

from __future__ import annotations

import math
from typing import Protocol

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from wsol.errors import WSOLError


class ReportingTrial(Protocol):
    """What the callback needs of a trial (``optuna.Trial`` has it)."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class PruningCallback(Callback):
    """After each validation: report the val metric that selects checkpoints (``val/<eval.select>``, as the
    ``best`` checkpoint monitors it) at step = epoch, and raise ``optuna.TrialPruned`` when the trial
    should be pruned. The last epoch is never pruned: a finished run is a complete trial.

    ``best=True`` (the recipe tests its best checkpoint) reports the best value so far, so that trials are
    compared on what they would be scored by; ``best=False`` (it tests the last) reports each epoch's value.
    """

    def __init__(self, trial: ReportingTrial, *, best: bool = True) -> None:
        self.trial = trial
        self.best = best
        self.monitor: str | None = None
        self.values: list[float] = []
        self.pruned_epoch: int | None = None

    @property
    def metric(self) -> str | None:
        """The metric's name (``MaxBoxAccV2``, ``PxAP``...)."""
        return self.monitor.split("/", 1)[1] if self.monitor else None

    @property
    def value(self) -> float | None:
        """The trial's score: the best (or last) val value seen, None before any validation."""
        if not self.values:
            return None
        return max(self.values) if self.best else self.values[-1]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitors = [cb.monitor for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
        if not monitors:
            raise WSOLError("wsol tune scores trials on the val split, and this recipe has none "
                            "(data.val_split, or no val folder)")
        self.monitor = monitors[0]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor is None:
            return
        raw = trainer.callback_metrics.get(self.monitor)
        if raw is None:
            return
        value = float(raw)
        if not math.isfinite(value):
            return
        self.values.append(value)
        epoch = trainer.current_epoch
        self.trial.report(float(self.value), epoch)  # type: ignore[arg-type]
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if not last and self.trial.should_prune():
            import optuna

            self.pruned_epoch = epoch
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: val {self.metric} {self.value:.2f}")

