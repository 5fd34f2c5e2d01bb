"""wsol fcam train on the Lightning machinery: tiny synthetic data, classifier frozen bit for bit, test JSON
with CAM and F-CAM, fcam.pt, resume, config errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wsol.cams import compute_cams
from wsol.data.synth import SynthConfig, generate
from wsol.errors import WSOLError
from wsol.fcam import FCAM, load_fcam
from wsol.fcam.train import load_fcam_config, train_fcam
from wsol.train.config import load_config
from wsol.train.run import load_checkpoint_model, train

ROOT = Path(__file__).resolve().parents[1]


def _common(synth: Path, out: Path) -> dict[str, object]:
    return {"data.root": synth / "images", "data.metadata": synth / "metadata", "data.mask_root": synth / "masks",
            "data.resize_size": 72, "data.crop_size": 64, "data.batch_size": 4, "data.num_workers": 0,
            "eval.cam_curve_interval": 0.01, "trainer.out_dir": out, "trainer.epochs": 1,
            "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.progress_bar": False,
            "trainer.tensorboard": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic dataset, classifier best.ckpt) from one short `wsol train` run."""
    root = tmp_path_factory.mktemp("fcam")
    synth = generate(SynthConfig(num_classes=2, train_per_class=4, val_per_class=2, test_per_class=2, min_side=64,
                                 max_side=80, distractors=1), root / "synth")
    values = {**_common(synth, root / "clf"), "model.name": "resnet10t", "model.pretrained": False}
    summary = train(load_config(None, [f"{k}={v}" for k, v in values.items()]), quiet=True)
    return synth, Path(summary["best_checkpoint"] or summary["last_checkpoint"])


def _fcam_overrides(synth: Path, clf: Path, out: Path, **extra: object) -> list[str]:
    values = {**_common(synth, out), "fcam.classifier": clf, "fcam.erosion": 3, "fcam.lambda_crf": 1e-6,
              "fcam.decoder_channels": "[32, 16, 16, 8, 8]", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_train_fcam_end_to_end(trained: tuple[Path, Path], tmp_path: Path) -> None:
    synth, clf = trained
    classifier = load_checkpoint_model(clf)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    summary = train_fcam(load_fcam_config(None, _fcam_overrides(synth, clf, tmp_path / "f", **{"trainer.epochs": 2})),
                         quiet=True)
    out = tmp_path / "f"
    test = json.loads((out / "test_metrics.json").read_text())["test"]
    for spec in ("cam", "fcam"):
        assert {"MaxBoxAcc", "MaxBoxAccV2", "PxAP"} <= set(test[spec])
    assert summary["select_metric"] == "MaxBoxAccV2"
    model = load_fcam(out / "fcam.pt")
    assert isinstance(model, FCAM)
    # the classifier inside every F-CAM checkpoint is bit-identical to the one it started from
    for path in (out / "fcam.pt", out / "checkpoints" / "last.ckpt"):
        after = load_fcam(path).classifier.state_dict()
        for k, v in before.items():
            assert torch.equal(v, after[k]), (path.name, k)
    x = torch.randn(2, 3, 64, 64)
    maps = compute_cams(model, x, [0, 1], "fcam").maps
    assert maps.shape == (2, 64, 64)
    # resume continues the run: one more epoch from last.ckpt
    config = load_fcam_config(None, _fcam_overrides(synth, clf, out, **{"trainer.epochs": 3}))
    train_fcam(config, resume=True, quiet=True)
    history = [json.loads(line) for line in (out / "val_history.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 2
    # an F-CAM checkpoint where a classifier's is expected (fcam.classifier, localize --model) says so
    for path in (out / "fcam.pt", out / "checkpoints" / "last.ckpt"):
        with pytest.raises(WSOLError, match="an F-CAM checkpoint"):
            load_checkpoint_model(path)
    # resuming the classifier's run folder with the F-CAM recipe: one line, the folder untouched
    run = clf.parent.parent
    saved = (run / "config.yaml").read_text()
    with pytest.raises(WSOLError, match="--resume .*first difference"):
        train_fcam(load_fcam_config(None, _fcam_overrides(synth, clf, run)), resume=True, quiet=True)
    assert (run / "config.yaml").read_text() == saved


def test_config_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    synth, clf = trained
    with pytest.raises(WSOLError, match="fcam.n_neg"):
        train_fcam(load_fcam_config(None, _fcam_overrides(synth, clf, tmp_path / "e", **{"fcam.n_neg": 1.5})))
    with pytest.raises(WSOLError, match="unknown key 'fcam.bogus'"):
        load_fcam_config(None, _fcam_overrides(synth, clf, tmp_path / "e", **{"fcam.bogus": 1}))
    with pytest.raises(WSOLError, match="fcam.classifier"):
        train_fcam(load_fcam_config(None, _fcam_overrides(synth, clf, tmp_path / "e", **{"fcam.classifier": "''"})))
    with pytest.raises(WSOLError, match="fcam.classifier=.*not found"):
        train_fcam(load_fcam_config(None, _fcam_overrides(synth, clf, tmp_path / "e", **{"fcam.classifier": "x.ckpt"})))


def test_shipped_configs_load(tmp_path: Path) -> None:
    (tmp_path / "clf.ckpt").write_bytes(b"")
    paths = sorted((ROOT / "configs").glob("fcam_*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        config = load_fcam_config(path, [f"fcam.classifier={tmp_path / 'clf.ckpt'}"])
        assert config.eval.method == "fcam", path
        config.fcam.check()


def test_cli(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from wsol.cli import app

    synth, clf = trained
    result = CliRunner().invoke(app, ["fcam", "train", "-q", *_fcam_overrides(synth, clf, tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "fcam.pt").is_file()
    # plain `wsol localize` recognises the F-CAM checkpoint
    result = CliRunner().invoke(app, ["localize", "--checkpoint", str(tmp_path / "c" / "fcam.pt"),
                                      "--method", "fcam", "--metadata", str(synth / "metadata" / "test"),
                                      "--data-root",
                                      str(synth / "images"), "--evaluate", "--image-size", "64", "-q",
                                      "--cam-curve-interval", "0.01"])
    assert result.exit_code == 0, result.output
    assert '"method": "fcam"' in result.output
