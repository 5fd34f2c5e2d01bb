"""The LightningModule: classifier training, and localization validation/test with the protocol's metrics.

Validation (every ``eval.every_n_epochs``) computes, on the val split (train-fullsup), classification
accuracy and, from the GT class's map of ``eval.method`` (GT-known) made 224 x 224 by the reference path,
MaxBoxAcc / MaxBoxAccV2 (boxes) and PxAP (masks). The test stage does the same for every variant in
``test_methods``. Metric states are torchmetrics counters reduced (summed) across DDP ranks at compute.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from wsol.data.metadata import Metadata
from wsol.errors import WSOLError
from wsol.files import plain
from wsol.maps.variants import MapVariant
from wsol.methods import get_training_method
from wsol.metrics.classification import ClassAccuracy
from wsol.metrics.split import SplitEvaluator
from wsol.models import WSOLClassifier, build_model
from wsol.train.config import TrainConfig, config_from_dict


def model_from_config(config: TrainConfig, num_classes: int, pretrained: bool = True) -> WSOLClassifier:
    """Build the classifier a config describes, with its training method's network change (``pretrained=False``
    when weights come from a checkpoint)."""
    m = config.model
    use_pretrained = pretrained and (m.pretrained or m.weights is not None)
    model = build_model(m.name, num_classes=num_classes, pool=m.pool, tap_theta=m.tap_theta,
                        pretrained=use_pretrained and m.weights is None,
                        weights=m.weights if use_pretrained else None, large_feature_map=m.large_feature_map,
                        surgery=m.surgery)
    get_training_method(config.method).setup(model)
    return model


class WSOLModule(L.LightningModule):
    """Wraps a :class:`WSOLClassifier` as ``self.model``; hyper-parameters are plain dicts/lists."""

    def __init__(self, config: dict[str, Any], num_classes: int, class_names: list[str] | None = None,
                 test_methods: list[str] | None = None, build_pretrained: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["build_pretrained"])
        self.cfg = config_from_dict(config)
        self.model = model_from_config(self.cfg, num_classes, pretrained=build_pretrained)
        if class_names is not None:
            self.model.class_names = list(class_names)
        self.method = get_training_method(self.cfg.method)
        # the default map is the method's own (ACoL's two-branch maximum, SPG's SPG_A4 map); any other is kept
        eval_method = self.method.map_method if self.cfg.eval.method == "cam" else self.cfg.eval.method
        self.val_variant = MapVariant.parse(eval_method)
        self.test_variants = [MapVariant.parse(s) for s in (test_methods or [eval_method])]
        self.eval_splits: dict[str, Metadata | None] = {}  # set by run.py: metadata of val/test (not saved)
        self.mask_root: str | None = self.cfg.data.mask_root
        self.results: dict[str, dict[str, Any]] = {}
        self.results_path: str | None = None  # rank 0 writes the test results here (JSON), e.g. for ddp_spawn
        self._evaluators: dict[str, dict[str, SplitEvaluator]] = {}  # per stage: one per map variant
        self._classification: dict[str, ClassAccuracy] = {}
        self._gt_boxes: dict[str, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ training
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_before_backward(self, loss: Tensor) -> None:
        """Stop at the first non-finite loss: a diverged run would otherwise finish, exit 0 and leave NaN
        weights behind (the last checkpoint, from before, stays resumable)."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.trainer is not None and self.trainer.world_size > 1:  # every rank stops, none waits in a reduce
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise WSOLError(f"training diverged: the loss is {loss.detach().float().mean().item()} at epoch "
                            f"{self.current_epoch}, step {self.global_step}; lower optim.lr or check the data")

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch
        loss, logits = self.method.loss(self.model, images, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("train/acc", acc * 100, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def configure_optimizers(self) -> Any:
        o, epochs = self.cfg.optim, self.cfg.trainer.epochs
        groups = self.model.param_groups(o.lr, o.classifier_lr_mult)
        if o.name == "sgd":
            opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                  nesterov=o.nesterov)
        else:
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        schedule = o.schedule or ("step" if o.name == "sgd" else "cosine")
        if schedule == "none":
            return opt
        if schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.lr_decay_epochs, gamma=o.lr_decay_gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        # cosine over optimizer steps with an optional linear warm-up (a stateless closed form: exact resume)
        per_epoch = self._steps_per_epoch()
        total = per_epoch * epochs
        if self.cfg.trainer.max_steps > 0:
            total = min(total, self.cfg.trainer.max_steps)
        warm = o.warmup_epochs * per_epoch
        floor = o.min_lr / o.lr
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _CosineFactor(total, warm, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, from the split size (not ``trainer.estimated_stepping_batches``, which
        loads the train dataloader before a checkpoint's loader state is restored and breaks exact resume)."""
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None or not hasattr(dm, "splits"):
            return 1
        world = trainer.world_size
        batches = math.ceil(math.ceil(len(dm.splits["train"]) / world) / self.cfg.data.batch_size)
        limit = self.cfg.trainer.limit_train_batches
        batches = int(batches * limit) if isinstance(limit, float) else min(int(limit), batches)
        return max(math.ceil(batches / self.cfg.trainer.accumulate_grad_batches), 1)

    # ------------------------------------------------------------------ evaluation
    def _setup_metrics(self, stage: str, variants: list[MapVariant]) -> None:
        meta = self.eval_splits.get(stage)
        self._classification[stage] = ClassAccuracy().to(self.device)
        evaluators: dict[str, SplitEvaluator] = {}
        if meta is not None:
            if meta.has_boxes and stage not in self._gt_boxes:
                self._gt_boxes[stage] = meta.resized_boxes()
            for v in variants:
                evaluator = SplitEvaluator(meta, self.mask_root, cam_curve_interval=self.cfg.eval.cam_curve_interval,
                                           iou_thresholds=self.cfg.eval.iou_thresholds, synced=True,
                                           gt_boxes=self._gt_boxes.get(stage))
                for m in evaluator.metrics.values():
                    m.to(self.device)
                if evaluator.metrics:
                    evaluators[v.spec] = evaluator
        self._evaluators[stage] = evaluators

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor, Tensor], variants: list[MapVariant]) -> None:
        images, labels, index = batch
        evaluators = self._evaluators[stage]
        logits = None
        if evaluators:
            meta = self.eval_splits[stage]
            ids = [meta.image_ids[int(i)] for i in index]
            first = next(iter(evaluators.values()))
            masks = first.load_masks(ids) if first.masks is not None else None  # once for every variant
            for v in variants:
                raw, out_logits = v.raw_maps(self.model, images, labels)
                logits = out_logits if logits is None else logits
                evaluators[v.spec].update(ids, v.score_maps(raw), out_logits.float(), labels, masks=masks)
        if logits is None:  # features + head, which every model here has (an F-CAM model's forward is its map)
            logits = self.model.logits_from_features(self.model.features(images))
        self._classification[stage].update(logits.float(), labels)

    def _eval_end(self, stage: str, variants: list[MapVariant]) -> dict[str, Any]:
        evaluators = self._evaluators.pop(stage)
        result: dict[str, Any] = {"classification": self._classification.pop(stage).compute()}
        for v in variants:
            if v.spec in evaluators:
                entry: dict[str, Any] = {}
                for kind_result in evaluators[v.spec].compute().values():
                    entry.update(kind_result)
                result[v.spec] = entry
        return result

    def on_validation_epoch_start(self) -> None:
        self._setup_metrics("val", [self.val_variant])

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch, [self.val_variant])

    def on_validation_epoch_end(self) -> None:
        result = self._eval_end("val", [self.val_variant])
        self.results["val"] = result
        flat = flat_metrics(result, self.val_variant.spec)
        if self.trainer is not None and not self.trainer.sanity_checking:
            for key, value in flat.items():
                self.log(f"val/{key}", value, prog_bar=key in ("top1_cls", "MaxBoxAcc", "MaxBoxAccV2", "PxAP"),
                         sync_dist=False, rank_zero_only=False)

    def on_test_epoch_start(self) -> None:
        self._setup_metrics("test", self.test_variants)

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch, self.test_variants)

    def on_test_epoch_end(self) -> None:
        self.results["test"] = self._eval_end("test", self.test_variants)
        if self.results_path and (self.trainer is None or self.trainer.is_global_zero):
            from wsol.files import write_json

            write_json(self.results_path, self.results["test"])

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wsol"] = {
            "model": self.cfg.model.name, "num_classes": int(self.model.num_classes), "pool": self.cfg.model.pool,
            "tap_theta": float(self.cfg.model.tap_theta), "large_feature_map": bool(self.cfg.model.large_feature_map),
            "surgery": self.cfg.model.surgery, "method": plain(dataclasses.asdict(self.cfg.method)),
            "class_names": list(self.model.class_names) if self.model.class_names else None,
            "data_config": plain(self.model.data_config), "config": self.cfg.to_dict(),
        }


class _CosineFactor:
    """Picklable, stateless LR factor: linear warm-up then cosine from 1 to ``floor``."""

    def __init__(self, total: int, warmup: int, floor: float) -> None:
        self.total, self.warmup, self.floor = total, warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def flat_metrics(result: dict[str, Any], spec: str) -> dict[str, float]:
    """The headline numbers of one variant plus classification, as floats."""
    out = {k: float(v) for k, v in result["classification"].items() if k != "num_images"}
    entry = result.get(spec, {})
    for key in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "peak_IoU", "top1_loc", "top5_loc"):
        if key in entry:
            out[key] = float(entry[key])
    return out


def select_metric(config: TrainConfig, meta: Metadata | None, has_masks: bool) -> str:
    """The metric the protocol selects checkpoints by: MaxBoxAccV2 (boxes), PxAP (masks), else top-1."""
    if config.eval.select != "auto":
        return config.eval.select
    if meta is not None and meta.has_boxes:
        return "MaxBoxAccV2"
    if meta is not None and meta.has_masks and has_masks:
        return "PxAP"
    return "top1_cls"


def check_selectable(name: str, meta: Metadata | None, has_masks: bool) -> None:
    """Raise when ``eval.select`` names a metric the val split cannot give."""
    boxes = meta is not None and meta.has_boxes
    masks = meta is not None and meta.has_masks and has_masks
    if (name in ("MaxBoxAcc", "MaxBoxAccV2") and not boxes) or (name == "PxAP" and not masks):
        raise WSOLError(f"config eval.select={name}: the val split has no {'masks' if name == 'PxAP' else 'boxes'}")
