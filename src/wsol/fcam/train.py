"""``wsol fcam train``: the F-CAM decoder trained on the ``wsol train`` Lightning machinery.

Reused as they are: the config tree and its YAML/override loader (:mod:`wsol.train.config`), the data
module, the trainer factory (checkpoints ``best``/``last``, resume, DDP, CSV/TensorBoard logs, Ctrl-C),
localization validation and the test stage (:class:`wsol.train.module.WSOLModule`), checkpoint selection on
the val split. F-CAM adds:

- :class:`FCAMConfig` = :class:`~wsol.train.config.TrainConfig` + an ``fcam`` section
  (:class:`FCAMSettings`: the trained classifier's checkpoint, the CAM method of the pseudo-labels, n-,
  the loss weights and the log-barrier schedule);
- :class:`FCAMModule`, a ``WSOLModule`` whose ``model`` is an :class:`~wsol.fcam.model.FCAM` (frozen
  classifier + decoder): its training step is the F-CAM loss; validation selects by the ``fcam`` maps;
  the test stage evaluates the classifier's CAM and F-CAM on the same split;
- :func:`train_fcam`, the runner, which also exports ``fcam.pt`` (:func:`wsol.fcam.save_fcam`) from the
  tested checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from wsol.cams import compute_cams
from wsol.cams.base import target_weights
from wsol.errors import WSOLError
from wsol.fcam.checkpoint import load_fcam, save_fcam
from wsol.fcam.decoder import DECODER_CHANNELS
from wsol.fcam.losses import FCAMLossWeights, LogBarrierSchedule, fcam_loss
from wsol.fcam.model import FCAM
from wsol.fcam.sampling import sample_pseudo_labels, upsample_cams
from wsol.files import read_checkpoint
from wsol.train.config import TrainConfig, build_section, load_config
from wsol.train.data import WSOLDataModule
from wsol.train.module import WSOLModule
from wsol.train.run import load_checkpoint_model, read_checkpoint_meta, train


@dataclass
class FCAMSettings:
    """The ``fcam`` section of a recipe (F-CAM defaults)."""

    classifier: str = ""  # the trained classifier: a `wsol train` checkpoint (best.ckpt)
    cam_method: str = "cam"  # the CAM the pseudo-labels come from (any registered method but fcam)
    n_neg: float = 0.1  # background = the lowest n- fraction of the CAM (chosen on val in [0.1, 0.7])
    num_samples: int = 1  # seeds drawn per region and image, every minibatch
    erosion: int = 11  # erosion of the Otsu foreground (pixels, square)
    dilation: int = 3  # dilation of each seed (pixels, square)
    alpha: float = 1.0  # partial cross-entropy weight
    lambda_crf: float = 2e-9  # dense CRF loss weight (Tang et al.)
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    crf_downsample: int = 2  # exact dense CRF on s x s block means (1 = full resolution); see fcam.losses
    lambda_size: float = 0.1  # size constraint (extended log-barrier) weight
    t_init: float = 1.0  # log-barrier t: init, x t_mult per epoch, at most t_max
    t_mult: float = 1.01
    t_max: float = 10.0
    decoder_channels: list[int] = field(default_factory=lambda: list(DECODER_CHANNELS))

    def check(self) -> None:
        """One-line errors naming the key."""
        if not self.classifier:
            raise WSOLError("config fcam.classifier: required (the `wsol train` checkpoint of the classifier)")
        if Path(self.classifier).is_dir():
            raise WSOLError(f"config fcam.classifier={self.classifier}: is a folder, not a checkpoint file (a `wsol "
                            "train` checkpoint such as <run>/checkpoints/best.ckpt)")
        if not Path(self.classifier).is_file():
            raise WSOLError(f"config fcam.classifier={self.classifier}: file not found (a `wsol train` checkpoint)")
        if self.cam_method.lower() == "fcam":
            raise WSOLError("config fcam.cam_method=fcam: pseudo-labels come from a classifier CAM (cam, gradcam...)")
        if not 0 < self.n_neg < 1:
            raise WSOLError(f"config fcam.n_neg={self.n_neg}: must lie in (0, 1)")
        for key in ("erosion", "dilation"):
            v = getattr(self, key)
            if v < 1 or v % 2 == 0:
                raise WSOLError(f"config fcam.{key}={v}: must be an odd size >= 1")
        if self.num_samples < 1 or self.crf_downsample < 1:
            key = "num_samples" if self.num_samples < 1 else "crf_downsample"
            raise WSOLError(f"config fcam.{key}={getattr(self, key)}: must be >= 1")
        if self.t_init <= 0 or self.t_mult < 1 or self.t_max < self.t_init:
            raise WSOLError("config fcam.t_init/t_mult/t_max: need 0 < t_init <= t_max and t_mult >= 1")
        if not self.decoder_channels or min(self.decoder_channels) < 1:
            raise WSOLError(f"config fcam.decoder_channels={self.decoder_channels}: positive integers")

    def weights(self) -> FCAMLossWeights:
        return FCAMLossWeights(self.alpha, self.lambda_crf, self.lambda_size, self.sigma_rgb, self.sigma_xy,
                               self.crf_downsample)

    def schedule(self) -> LogBarrierSchedule:
        return LogBarrierSchedule(self.t_init, self.t_mult, self.t_max)


@dataclass
class FCAMConfig(TrainConfig):
    """A ``wsol train`` recipe plus the ``fcam`` section. ``model`` is taken from the classifier checkpoint."""

    fcam: FCAMSettings = field(default_factory=FCAMSettings)

    def base_dict(self) -> dict[str, Any]:
        """The recipe without the ``fcam`` section (what ``WSOLModule`` reads)."""
        out = asdict(self)
        out.pop("fcam")
        return out

    def check(self) -> None:
        super().check()
        self.fcam.check()


def load_fcam_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FCAMConfig:
    """Read an F-CAM YAML recipe, apply ``key=value`` overrides (``fcam.n_neg=0.3``...), validate the keys.

    F-CAM's defaults differ from classifier training where the paper says so: ``eval.method: fcam``,
    ``optim.schedule: none`` (SGD, lr 0.01).
    """
    return load_config(path, overrides, cls=FCAMConfig,
                       defaults={"eval": {"method": "fcam"}, "optim": {"schedule": "none"}})


class FCAMModule(WSOLModule):
    """``WSOLModule`` with ``model = FCAM(frozen classifier, decoder)`` and the F-CAM training step.

    ``config`` is the recipe without ``fcam`` (:meth:`FCAMConfig.base_dict`), ``fcam`` its ``fcam`` section.
    The classifier is read from ``fcam["classifier"]``; on resume the Lightning checkpoint's weights (the
    same, frozen) are loaded over it.
    """

    def __init__(self, config: dict[str, Any], fcam: dict[str, Any], num_classes: int,
                 class_names: list[str] | None = None, test_methods: list[str] | None = None) -> None:
        settings: FCAMSettings = build_section(FCAMSettings, dict(fcam), "fcam.")
        settings.check()
        meta = read_checkpoint_meta(settings.classifier)
        config = dict(config)
        config["model"] = {**config.get("model", {}), "name": str(meta["model"]), "pool": str(meta.get("pool", "gap")),
                           "tap_theta": float(meta.get("tap_theta", 0.1)), "pretrained": False, "weights": None,
                           "large_feature_map": bool(meta.get("large_feature_map", False)),
                           "num_classes": int(meta["num_classes"]),
                           **({"surgery": meta["surgery"]} if "surgery" in meta else {})}
        if int(meta["num_classes"]) < num_classes:
            raise WSOLError(f"{settings.classifier}: the classifier has {meta['num_classes']} classes, "
                            f"the data {num_classes}")
        super().__init__(config, int(meta["num_classes"]), class_names,
                         test_methods or [settings.cam_method, "fcam"], build_pretrained=False)
        classifier = load_checkpoint_model(settings.classifier)
        if class_names is not None and not classifier.class_names:
            classifier.class_names = list(class_names)
        self.model = FCAM(classifier, channels=settings.decoder_channels)
        self.fcam_settings = settings
        self.loss_weights = settings.weights()
        self.barrier = settings.schedule()
        self.norm_mean: tuple[float, ...] = tuple(classifier.data_config.get("mean", (0.485, 0.456, 0.406)))
        self.norm_std: tuple[float, ...] = tuple(classifier.data_config.get("std", (0.229, 0.224, 0.225)))

    def raw_images(self, images: Tensor) -> Tensor:
        """Normalised images back to 0..255 (the CRF's colour space)."""
        mean = torch.tensor(self.norm_mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.norm_std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        return ((images.float() * std + mean) * 255).clamp(0, 255)

    def pseudo_cams(self, images: Tensor, labels: Tensor, features: list[Tensor]) -> Tensor:
        """The classifier's CAM of the GT class (raw, (B, h, w)); plain CAM reuses the encoder's F."""
        method = self.fcam_settings.cam_method
        if method.lower() == "cam":
            with torch.no_grad():
                f = features[-1]
                w, _ = target_weights(self.model.classifier, f, labels)
                return torch.einsum("bc,bchw->bhw", w.to(f.dtype), f).float()
        return compute_cams(self.model.classifier, images, labels, method).maps

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch
        s = self.fcam_settings
        feats = self.model.encode(images)
        cams = upsample_cams(self.pseudo_cams(images, labels, feats), (images.shape[-2], images.shape[-1]))
        draws = torch.Generator(device=images.device).manual_seed(self.draw_seed(batch_idx))
        pseudo = sample_pseudo_labels(cams, s.n_neg, s.num_samples, s.erosion, s.dilation, generator=draws)
        logits = self.model.decode(images, feats)
        t = self.barrier.t(self.current_epoch)
        terms = fcam_loss(logits, pseudo, self.raw_images(images), t, self.loss_weights)
        n = len(labels)
        self.log("train/loss", terms["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for key in ("pce", "crf", "size"):
            self.log(f"train/{key}", terms[key].detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log("train/t", t, on_step=False, on_epoch=True, batch_size=n)
        return terms["loss"]

    def draw_seed(self, batch_idx: int) -> int:
        """Seed of a training step's pseudo-label draws: a function of (run seed, epoch, batch, rank), not of the
        global RNG (which a resumed run re-seeds), so that a run resumed from a checkpoint, mid-epoch too, draws
        exactly what the uninterrupted run drew."""
        key = ((int(self.cfg.trainer.seed) * 100_003 + int(self.current_epoch)) * 1_000_003 + int(batch_idx)) * 4099
        return (key + int(self.global_rank)) % (2**63 - 1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["wsol"]["kind"] = "fcam"
        checkpoint["fcam"] = {"feature_channels": list(self.model.decoder.feature_channels),
                              "channels": list(self.model.decoder.channels),
                              "config": asdict(self.fcam_settings)}


def train_fcam(config: FCAMConfig, *, resume: bool | str | Path = False, quiet: bool = False,
               test_methods: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit the decoder, select on val (``eval.select``, by the ``fcam`` maps), test CAM and F-CAM on the
    test split, write ``test_metrics.json`` and ``fcam.pt``; return the summary (as ``wsol train``)."""

    def make_module(config: FCAMConfig, datamodule: WSOLDataModule, resuming: bool) -> FCAMModule:
        module = FCAMModule(config.base_dict(), asdict(config.fcam), datamodule.num_classes,
                            datamodule.class_names, test_methods)
        config.model = type(config.model)(**module.cfg.model.__dict__)  # the classifier's architecture, recorded
        return module

    def finalize(summary: dict[str, Any], tested: str) -> None:
        summary["fcam_checkpoint"] = str(export_fcam(tested, Path(config.trainer.out_dir) / "fcam.pt"))

    return train(config, resume=resume, quiet=quiet, make_module=make_module, finalize=finalize,
                 callbacks=callbacks)


def export_fcam(lightning_checkpoint: str | Path, path: str | Path) -> Path:
    """A ``wsol fcam train`` Lightning checkpoint -> a standalone ``fcam.pt`` (:func:`wsol.fcam.save_fcam`)."""
    obj = read_checkpoint(lightning_checkpoint)
    model = load_fcam(lightning_checkpoint)
    meta = obj.get("wsol", {})
    build = {k: meta[k] for k in ("pool", "tap_theta", "large_feature_map", "surgery") if k in meta}
    return save_fcam(model, path, build=build, config=obj.get("fcam", {}).get("config", {}))
