"""F-CAM pinned: the total loss with every term on against a value worked out by hand, and an interrupted and
resumed ``wsol fcam train`` ending on the weights of an uninterrupted one."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from wsol.fcam.losses import FCAMLossWeights, fcam_loss
from wsol.fcam.sampling import IGNORE

# One image of two pixels side by side: pixel 0 black, pixel 1 (3, 4, 0); logits [0, 0] and [0, ln 3], so the
# probabilities (background, foreground) are (1/2, 1/2) and (1/4, 3/4). Pixel 0 is labelled foreground,
# pixel 1 is not labelled. sigma_rgb 5, sigma_xy 1: the affinity of the two pixels is
# exp(-1 / 2 - 25 / 50) = e^-1 (and 1 for a pixel with itself).
#   pCE  = -log(1/2) = ln 2
#   CRF  = -sum_k S_k^T A S_k = -[(1/4 + 1/16 + 2 e^-1 / 8) + (1/4 + 9/16 + 2 e^-1 3/8)] = -(9/8 + e^-1)
#   size: z = -(sum of each map) = -3/4 (background), -5/4 (foreground); t = 1, so -1/t^2 = -1:
#         ELB(-3/4) = t z - log(1/t^2)/t + 1/t = 1/4 (linear part), ELB(-5/4) = -log(5/4)/t; size = the mean
WEIGHTS = FCAMLossWeights(alpha=0.7, lambda_crf=0.3, lambda_size=0.2, sigma_rgb=5.0, sigma_xy=1.0, crf_downsample=1)
PCE = math.log(2)
CRF = -(9 / 8 + math.exp(-1))
SIZE = (0.25 - math.log(1.25)) / 2
TOTAL = 0.7 * PCE + 0.3 * CRF + 0.2 * SIZE  # 0.48520 - 0.44786 + 0.00269 = 0.04002


def _two_pixels(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3)]]]]).repeat(batch, 1, 1, 1)  # (B, 2, 1, 2)
    labels = torch.tensor([[[1, IGNORE]]]).repeat(batch, 1, 1)
    image = torch.zeros(batch, 3, 1, 2)
    image[:, 0, 0, 1], image[:, 1, 0, 1] = 3.0, 4.0
    return logits, labels, image


def test_total_loss_with_every_term_on_by_hand() -> None:
    logits, labels, image = _two_pixels()
    terms = fcam_loss(logits, labels, image, 1.0, WEIGHTS)
    assert float(terms["pce"]) == pytest.approx(PCE, rel=1e-6)
    assert float(terms["crf"]) == pytest.approx(CRF, rel=1e-6)
    assert float(terms["size"]) == pytest.approx(SIZE, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(TOTAL, rel=1e-5)
    assert TOTAL == pytest.approx(0.0400249, abs=1e-7)


def test_total_loss_is_per_image_not_per_batch() -> None:
    """Two copies of the image: every term is a mean over images (or labelled pixels), so nothing changes."""
    logits, labels, image = _two_pixels(batch=2)
    terms = fcam_loss(logits, labels, image, 1.0, WEIGHTS)
    assert float(terms["loss"]) == pytest.approx(TOTAL, rel=1e-5)


def test_total_loss_gradient_equals_the_formula_differentiated() -> None:
    logits, labels, image = _two_pixels()
    ours = logits.clone().requires_grad_(True)
    fcam_loss(ours, labels, image, 1.0, WEIGHTS)["loss"].backward()
    ref = logits.double().clone().requires_grad_(True)
    p = ref.softmax(1)[0, :, 0]  # (2 classes, 2 pixels)
    a = torch.tensor([[1.0, math.exp(-1)], [math.exp(-1), 1.0]], dtype=torch.float64)
    pce = -torch.log(p[1, 0])
    crf = -sum(p[k] @ a @ p[k] for k in range(2))
    z = -p.sum(1)  # background, foreground
    elb = torch.where(z <= -1, -torch.log(-z.clamp_max(-1e-9)), z + 1)  # t = 1
    (0.7 * pce + 0.3 * crf + 0.2 * elb.mean()).backward()
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------- resume
class _StepRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, *args) -> None:
        self.losses.append(float(outputs["loss"]))


class _CtrlC(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic dataset, classifier checkpoint) as in tests/test_fcam_train.py, smaller."""
    from wsol.data.synth import SynthConfig, generate
    from wsol.train.config import load_config
    from wsol.train.run import train

    root = tmp_path_factory.mktemp("fcam_resume")
    synth = generate(SynthConfig(num_classes=2, train_per_class=5, val_per_class=1, test_per_class=1, min_side=64,
                                 max_side=72, distractors=1), root / "synth")
    values = {**_common(synth, root / "clf"), "model.name": "resnet10t", "model.pretrained": False}
    summary = train(load_config(None, [f"{k}={v}" for k, v in values.items()]), quiet=True)
    return synth, Path(summary["last_checkpoint"])


def _common(synth: Path, out: Path) -> dict[str, object]:
    return {"data.root": synth / "images", "data.metadata": synth / "metadata", "data.mask_root": synth / "masks",
            "data.resize_size": 40, "data.crop_size": 32, "data.batch_size": 4, "data.num_workers": 0,
            "eval.cam_curve_interval": 0.01, "trainer.out_dir": out, "trainer.epochs": 1,
            "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.progress_bar": False,
            "trainer.tensorboard": False}


def _fcam_config(synth: Path, clf: Path, out: Path):
    from wsol.fcam.train import load_fcam_config

    values = {**_common(synth, out), "trainer.epochs": 2, "fcam.classifier": clf, "fcam.erosion": 3,
              "fcam.lambda_crf": 1e-4, "fcam.lambda_size": 0.1, "fcam.n_neg": 0.3,
              "fcam.decoder_channels": "[16, 8, 8, 8, 8]"}
    return load_fcam_config(None, [f"{k}={v}" for k, v in values.items()])


def _run(config, callbacks: list[Callback], resume: bool = False) -> dict:
    """``train_fcam``'s fit (its module factory), with callbacks."""
    from dataclasses import asdict

    from wsol.fcam.train import FCAMModule
    from wsol.train.run import train

    def make_module(config, datamodule, resuming):
        module = FCAMModule(config.base_dict(), asdict(config.fcam), datamodule.num_classes, datamodule.class_names,
                            ["fcam"])
        config.model = type(config.model)(**module.cfg.model.__dict__)
        return module

    return train(config, resume=resume, callbacks=callbacks, quiet=True, make_module=make_module)


@pytest.mark.slow
def test_fcam_interrupt_and_resume_equals_uninterrupted(classifier: tuple[Path, Path], tmp_path: Path) -> None:
    """10 train images, batch 4: 3 steps per epoch, 2 epochs. Ctrl-C after step 4 (mid second epoch), resume:
    the losses of every step and the final weights are those of the run that was not interrupted (pseudo-labels
    are drawn at random every step, so the draws must resume too)."""
    from wsol.train.run import TrainingInterrupted

    synth, clf = classifier
    straight = _StepRecorder()
    _run(_fcam_config(synth, clf, tmp_path / "a"), [straight])
    first = _StepRecorder()
    config_b = _fcam_config(synth, clf, tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        _run(config_b, [first, _CtrlC(step=4)])
    second = _StepRecorder()
    _run(_fcam_config(synth, clf, tmp_path / "b"), [second], resume=True)
    assert len(straight.losses) == 6 and len(first.losses) == 4
    assert len(set(straight.losses)) == 6  # it trains
    assert first.losses + second.losses == pytest.approx(straight.losses, rel=1e-5, abs=1e-7)
    wa = torch.load(tmp_path / "a/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "b/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)
