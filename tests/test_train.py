"""wsol train: exact resume after Ctrl-C, DDP evaluation = single process, configs, checkpoints, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from wsol.data.synth import SynthConfig, generate
from wsol.errors import WSOLError
from wsol.files import write_json
from wsol.train.config import load_config
from wsol.train.run import TrainingInterrupted, evaluate, evaluate_module, load_checkpoint_model, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    # 9 test images: 2 ranks get 5 and 4, so a padding sampler would count one twice
    generate(SynthConfig(num_classes=3, train_per_class=6, val_per_class=2, test_per_class=3, min_side=64,
                         max_side=96, distractors=1), out)
    return out


def tiny_overrides(synth: Path, out: Path, **extra: object) -> list[str]:
    values = {
        "model.name": "resnet10t", "model.pretrained": False, "data.root": synth / "images",
        "data.metadata": synth / "metadata", "data.mask_root": synth / "masks", "data.resize_size": 72,
        "data.crop_size": 64, "data.mean": [0.5, 0.4, 0.3], "data.std": [0.2, 0.25, 0.3],  # not the model's
        "data.batch_size": 4, "data.num_workers": 0, "optim.lr": 0.01,
        "eval.cam_curve_interval": 0.01, "trainer.out_dir": out, "trainer.epochs": 2, "trainer.accelerator": "cpu",
        "trainer.devices": 1, "trainer.progress_bar": False, "trainer.tensorboard": False,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, *args) -> None:
        self.losses.append(float(outputs["loss"]))


class CtrlC(Callback):
    """Sends SIGINT to this process after ``step`` optimizer steps (a user pressing Ctrl-C)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_interrupt_and_resume_matches_uninterrupted(synth: Path, tmp_path: Path) -> None:
    # 18 train images / batch 4 = 5 batches per epoch (last one short); 2 epochs, AdamW + cosine per step
    extra = {"optim.name": "adamw", "optim.lr": 0.001, "optim.warmup_epochs": 1}
    straight = LossRecorder()
    full = train(load_config(None, tiny_overrides(synth, tmp_path / "a", **extra)), callbacks=[straight], quiet=True)

    first = LossRecorder()
    config_b = load_config(None, tiny_overrides(synth, tmp_path / "b", **extra))
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(config_b, callbacks=[first, CtrlC(step=7)], quiet=True)  # mid second epoch
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(WSOLError, match="already holds a run"):
        train(config_b, quiet=True)
    second = LossRecorder()
    resumed = train(config_b, resume=True, callbacks=[second], quiet=True)

    assert len(straight.losses) == 10
    stopped = len(first.losses)
    assert 7 <= stopped < 10
    assert first.losses + second.losses == pytest.approx(straight.losses, rel=1e-5, abs=1e-6)
    wa, wb = _weights(tmp_path / "a/checkpoints/last.ckpt"), _weights(tmp_path / "b/checkpoints/last.ckpt")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    assert resumed["test"]["cam"]["MaxBoxAccV2"] == pytest.approx(full["test"]["cam"]["MaxBoxAccV2"])
    history = (tmp_path / "b" / "val_history.jsonl").read_text().splitlines()
    assert len(history) == 2  # one validation per epoch, none repeated by the resume
    assert (tmp_path / "a" / "test_metrics.json").is_file()
    assert (tmp_path / "a" / "logs" / "version_0" / "metrics.csv").is_file()


@pytest.fixture(scope="module")
def checkpoint(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(load_config(None, tiny_overrides(synth, out, **{"trainer.epochs": 1, "model.pool": "tap"})), quiet=True)
    return out / "checkpoints" / "best.ckpt"


@pytest.mark.slow
def test_ddp_evaluation_equals_single_process(synth: Path, checkpoint: Path, tmp_path: Path) -> None:
    methods = ["cam", "cam+pas", "gradcam"]
    single = evaluate(load_config(None, tiny_overrides(synth, tmp_path / "one", **{"model.pool": "tap"})),
                      checkpoint, methods=methods)
    config = load_config(None, tiny_overrides(synth, tmp_path / "two", **{
        "model.pool": "tap", "trainer.devices": 2, "trainer.strategy": "ddp_spawn"}))
    double = evaluate(config, checkpoint, methods=methods, json_out=tmp_path / "two.json")
    assert single["classification"]["num_images"] == double["classification"]["num_images"] == 9
    for spec in methods:
        assert single[spec]["num_images"] == 9
    assert double == single


@pytest.mark.slow
def test_ddp_spawn_training_reports_its_test_metrics(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    summary = train(load_config(None, tiny_overrides(synth, out, **{
        "trainer.epochs": 1, "trainer.devices": 2, "trainer.strategy": "ddp_spawn"})), quiet=True)
    assert summary["test"]["cam"]["num_images"] == 9  # came back from the spawned ranks
    assert json.loads((out / "test_metrics.json").read_text())["test"] == summary["test"]
    assert not (out / ".test_results.json").exists()


def test_checkpoint_rebuilds_model_for_localize(checkpoint: Path, synth: Path) -> None:
    model = load_checkpoint_model(checkpoint)
    assert model.head.pool.kind == "tap" and model.num_classes == 3
    # the synthetic metadata's class_names.txt travels with the checkpoint
    names = (synth / "metadata" / "class_names.txt").read_text().split()
    assert model.class_names == names and len(names) == 3 and names[0].startswith("00_")
    state = _weights(checkpoint)
    assert torch.equal(model.head.fc.weight, state["model.head.fc.weight"])
    from wsol.localize.pipeline import load_model

    other = load_model(None, checkpoint)  # what `wsol localize --checkpoint` calls today: weights load
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other.eval().features(x), model.features(x))
        f = model.features(x)
        pooled = model.head.pool(f)
        torch.testing.assert_close(model(x), model.head.fc(pooled))


def test_localize_split_on_checkpoint_equals_its_evaluation(checkpoint: Path, synth: Path, tmp_path: Path) -> None:
    """The checkpoint records how its model was evaluated (64 px, bilinear, the recipe's mean/std), so
    ``wsol localize --metadata`` on it gives the numbers of ``wsol train``'s own test stage."""
    from wsol.localize.pipeline import load_model, preprocessing
    from wsol.localize.split import localize_split

    model = load_model(None, checkpoint)
    assert preprocessing(model) == {"size": 64, "interpolation": "bilinear", "mean": (0.5, 0.4, 0.3),
                                    "std": (0.2, 0.25, 0.3)}
    config = load_config(None, tiny_overrides(synth, tmp_path, **{"model.pool": "tap"}))
    variants = ["cam", "cam+pas", "cam+nwc", "gradcam"]
    reference = evaluate(config, checkpoint, methods=variants)
    for spec in variants:
        ours = localize_split(synth / "metadata" / "test", synth / "images", model, method=spec, evaluate=True,
                              mask_root=synth / "masks", image_size=preprocessing(model)["size"], workers=0,
                              batch_size=4,  # the test stage's: float sums agree bit for bit
                              cam_curve_interval=0.01, quiet=True).metrics
        assert ours["boxes"]["num_images"] == 9
        for key in ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc"):
            assert ours["boxes"][key] == reference[spec][key], (spec, key)
        assert ours["masks"]["PxAP"] == reference[spec]["PxAP"], spec
    assert reference["cam+pas"]["PxAP"] != reference["cam"]["PxAP"]  # the variants do differ here
    boxes_only = localize_split(synth / "metadata" / "test", synth / "images", model, evaluate=True, workers=0,
                                image_size=64, cam_curve_interval=0.01, quiet=True)
    assert "masks" not in boxes_only.metrics and any("--mask-root" in n for n in boxes_only.notes)


def test_resume_with_another_model_is_one_line_and_changes_nothing(checkpoint: Path, synth: Path) -> None:
    run = checkpoint.parent.parent
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    config = load_config(None, tiny_overrides(synth, run, **{"model.name": "resnet18", "model.pool": "tap"}))
    with pytest.raises(WSOLError, match="--resume .*'resnet10t'.*config.yaml"):
        train(config, resume=True, quiet=True)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # no config.yaml, no new log folder
    from wsol.localize.pipeline import load_model

    with pytest.raises(WSOLError, match="model 'resnet18' contradicts .*'resnet10t'"):
        load_model("resnet18", checkpoint)


def test_divergence_stops_training_and_nan_weights_are_refused(checkpoint: Path, synth: Path,
                                                                tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(synth, tmp_path / "nan", **{"optim.lr": 1e30, "trainer.epochs": 1}))
    with pytest.raises(WSOLError, match="training diverged: the loss is (nan|inf)"):
        train(config, quiet=True)
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["model.head.fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.ckpt")
    from wsol.localize.pipeline import load_model

    with pytest.raises(WSOLError, match="nan.ckpt: 1 weight tensors hold NaN or inf .first: head.fc.weight"):
        load_model(None, tmp_path / "nan.ckpt")


def test_checkpoint_of_another_architecture(checkpoint: Path, synth: Path, tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(synth, tmp_path, **{"model.name": "resnet18"}))
    with pytest.raises(WSOLError, match="does not fit 'resnet18'"):
        evaluate(config, checkpoint)
    bogus = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, bogus)
    with pytest.raises(WSOLError, match="not a `wsol train` checkpoint"):
        load_checkpoint_model(bogus)


def test_config_errors(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(WSOLError, match=r"unknown key 'optim\.lrr'.*valid keys under optim: name, lr"):
        load_config(None, ["optim.lrr=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: resnet18\n  poool: gap\n")
    with pytest.raises(WSOLError, match=r"bad\.yaml: config: unknown key 'model\.poool'"):
        load_config(bad)
    with pytest.raises(WSOLError, match=r"override optim\.lr=fast: expected a number"):
        load_config(None, ["optim.lr=fast"])
    config = load_config(None, tiny_overrides(synth, tmp_path / "x", **{"data.root": tmp_path}))
    missing = r"00_checker_h000_0000\.png: image file not found \(id .* in .*image_ids\.txt\)"
    with pytest.raises(WSOLError, match=missing):
        train(config, quiet=True)


@pytest.mark.slow
def test_cli_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "train", "trainer.epochz=3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'trainer.epochz'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("fcam_")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path, ["data.root=/data", "data.metadata=/data/metadata"])
    config.check()
    if not path.name.startswith("synth_"):
        assert config.reported, f"{path.name} must state the number the paper reports"


class _CrashingTrainer:
    """Stands in for a ddp_spawn trainer whose rank 1 aborts; rank 0 may have written the results first."""

    def __init__(self, results: dict | None) -> None:
        self.results = results

    def test(self, module, **_kwargs) -> None:
        if self.results is not None and module.results_path:
            write_json(module.results_path, self.results)
        raise torch.multiprocessing.ProcessExitedException("process 1 terminated with signal SIGABRT",
                                                           error_index=1, error_pid=1, exit_code=-6)


def test_rank_crash_after_results_keeps_them_crash_before_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    module = SimpleNamespace(results={})
    kept = evaluate_module(None, module, None, None, trainer=_CrashingTrainer({"cam": {"MaxBoxAcc": 12.5}}),
                           json_out=out)
    assert kept == {"cam": {"MaxBoxAcc": 12.5}}
    # the file left by an earlier run is not this run's: the crash is reported
    os.utime(out, (time.time() - 60, time.time() - 60))
    with pytest.raises(torch.multiprocessing.ProcessExitedException):
        evaluate_module(None, module, None, None, trainer=_CrashingTrainer(None), json_out=out)
    with pytest.raises(torch.multiprocessing.ProcessExitedException):
        evaluate_module(None, module, None, None, trainer=_CrashingTrainer({"x": 1}), json_out=None)
