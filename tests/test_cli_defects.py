"""Issue 14, items 2 and 3: the CLI's rough edges, one test each (each failed before its fix)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import wsol.localize.folder as folder_module
import wsol.localize.pipeline as pipeline_module
from wsol.cli import app
from wsol.errors import Interrupted, WSOLError, WSOLWarning

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _wsol(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


# ------------------------------------------------------------------------------------------ localize input walk
@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    from wsol.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet10t", num_classes=3).eval()
    monkeypatch.setattr(pipeline_module, "load_model", lambda name=None, checkpoint=None, **_: net)
    return net


def _photos(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / name)
    return root


def _lines(out: Path) -> int:
    return len((out / "results.jsonl").read_text().splitlines())


@pytest.mark.parametrize("inside", ["out", "."])
def test_localize_does_not_read_its_own_output_back(tiny_model: torch.nn.Module, tmp_path: Path,
                                                    inside: str) -> None:
    photos = _photos(tmp_path / "photos")
    out = photos / inside
    for _ in range(3):  # `wsol localize photos --out photos/out` (or --out photos), again and again
        result = runner.invoke(app, ["localize", str(photos), "--out", str(out), "--image-size", "64", "-q"])
        assert result.exit_code == 0, result.output
        assert _lines(out) == 2


def test_image_walk_skips_folders_written_by_wsol(tmp_path: Path) -> None:
    from wsol.data.images import find_image_files

    photos = _photos(tmp_path / "photos")
    for marker in ("results.jsonl", "scoremaps.json"):
        old = _photos(photos / f"old_{marker.split('.')[0]}")
        (old / marker).write_text("")
    _photos(photos / "out" / "overlays")
    found = find_image_files([photos], exclude=[photos / "out"])
    assert found.keys == ["a.png", "b.jpg"]


# ------------------------------------------------------------------------------------------ the report page
def test_report_json_stays_valid_inside_script() -> None:
    from wsol.report.html import render_html

    record = {"id": "<!--/x.png", "path": "a</script><!--b.png", "width": 4, "height": 4, "overlay": "o.jpg",
              "target": {"class": 0, "name": "n&<b>", "prob": 0.5}, "top5": [], "boxes": []}
    page = render_html([record])
    text = re.search(r'<script type="application/json" id="wsol-data">(.*?)</script>', page, re.S).group(1)
    assert "<!--" not in text and "</" not in text and "<" not in text
    assert json.loads(text)["records"][0]["id"] == "<!--/x.png"
    assert json.loads(text)["records"][0]["path"] == "a</script><!--b.png"


# ------------------------------------------------------------------------------------------ help, flags, values
def _help(args: list[str]) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [[], ["localize"], ["train"], ["data"], ["data", "synth"], ["fcam"],
                                     ["fcam", "train"], ["analyze"], ["evaluate"], ["tune"], ["configs"]])
def test_h_is_help_everywhere(command: list[str]) -> None:
    assert "Usage:" in _help([*command, "-h"])


def test_help_shows_no_value_for_flags_and_repeat_for_lists() -> None:
    text = _help(["localize", "--help"])
    assert "<bool>" not in text and "<list[" not in text
    assert re.search(r"--save-maps\s+Also write", text), text
    synth = _help(["data", "synth", "--help"])
    assert "<list[str]>" not in synth and "<bool>" not in synth
    assert re.search(r"--set\s+KEY=VALUE", synth) and "repeat" in synth


def test_flag_given_a_value_says_flags_take_none(tiny_model: torch.nn.Module, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    wide = {"COLUMNS": "300"}
    result = runner.invoke(app, ["localize", str(photos), "--out", str(tmp_path / "o"), "--save-maps", "true"],
                           env=wide)
    assert result.exit_code == 2, result.output  # before: 'true' was taken as an input PATH
    assert "'--save-maps': a flag takes no value" in result.output
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "s"), "--no-overwrite", "false"], env=wide)
    assert result.exit_code == 2 and "'--no-overwrite': a flag takes no value" in result.output


def test_head_cue_accepts_colour(tmp_path: Path) -> None:
    from wsol.data.synth_config import SynthConfig

    assert SynthConfig(head_cue="colour").head_cue == "color"
    assert SynthConfig(body_colour="head").body_colour == "head"
    with pytest.raises(WSOLError, match="head_cue='hue'"):
        SynthConfig(head_cue="hue")


# ------------------------------------------------------------------------------------------ checkpoints
def test_model_contradicting_an_fcam_checkpoint_is_refused(tmp_path: Path) -> None:
    from wsol.fcam import FCAM, save_fcam
    from wsol.localize.pipeline import load_model
    from wsol.models import build_model

    path = save_fcam(FCAM(build_model("resnet10t", num_classes=3)), tmp_path / "fcam.pt")
    with pytest.raises(WSOLError, match="model 'vgg16' contradicts .*fcam.pt"):
        load_model("vgg16", path)
    assert load_model("resnet10t", path) is not None


@pytest.mark.parametrize("kind, message", [("folder", "is a folder"), ("text", "a text file, neither"),
                                           ("yaml", "a text file, neither")])
def test_checkpoint_that_is_a_folder_or_text(tmp_path: Path, kind: str, message: str) -> None:
    from wsol.files import read_checkpoint
    from wsol.train.run import load_checkpoint_model

    path = tmp_path / "x.ckpt"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_text("hello world\n" if kind == "text" else "epochs: 3\n")
    for read in (read_checkpoint, load_checkpoint_model):
        with pytest.raises(WSOLError, match=message):
            read(path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert isinstance(result.exception, WSOLError) and message in str(result.exception)


def test_fcam_classifier_that_is_a_folder(tmp_path: Path) -> None:
    from wsol.fcam.train import FCAMSettings

    with pytest.raises(WSOLError, match="fcam.classifier=.*is a folder"):
        FCAMSettings(classifier=str(tmp_path)).check()


# ------------------------------------------------------------------------------------------ config errors
def test_bad_override_is_blamed_on_the_override_not_the_file(tmp_path: Path) -> None:
    from wsol.train.config import load_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(WSOLError) as info:
        load_config(recipe, ["optim.lr=abc"])
    assert str(info.value).startswith("override optim.lr=abc: "), info.value
    assert "recipe.yaml" not in str(info.value)
    with pytest.raises(WSOLError, match=r"^override optim.lrr=1: unknown key 'optim.lrr'"):
        load_config(recipe, ["optim.lrr=1"])
    recipe.write_text("optim:\n  lr: fast\n")
    with pytest.raises(WSOLError, match=r"recipe.yaml: config optim.lr='fast'"):  # the file's own mistake
        load_config(recipe, ["optim.momentum=0.5"])


def test_a_section_given_a_value_says_what_to_write() -> None:
    from wsol.train.config import load_config

    with pytest.raises(WSOLError) as info:
        load_config(None, ["model=3"])
    text = str(info.value)
    assert "model." not in text.split(":")[0] and "model is a section" in text and "model.name=" in text, text


# ------------------------------------------------------------------------------------------ metadata
def _mask_split(tmp_path: Path, mask_size: tuple[int, int]) -> tuple[Path, Path]:
    split = tmp_path / "metadata" / "test"
    split.mkdir(parents=True)
    (split / "image_ids.txt").write_text("a.png\n")
    (split / "class_labels.txt").write_text("a.png,0\n")
    (split / "image_sizes.txt").write_text("a.png,317,173\n")
    (split / "localization.txt").write_text("a.png,m/a.png,\n")
    masks = tmp_path / "masks"
    (masks / "m").mkdir(parents=True)
    Image.fromarray(np.full(mask_size[::-1], 255, np.uint8)).save(masks / "m" / "a.png")
    return split, masks


def test_mask_of_another_size_than_its_image_is_warned_once(tmp_path: Path) -> None:
    from wsol.data.metadata import Metadata

    split, masks = _mask_split(tmp_path, (10, 10))
    meta = Metadata.load(split, mask_root=masks)
    with pytest.warns(WSOLWarning, match=r"a.png: mask is 10 x 10 .* 317 x 173") as caught:
        meta.load_mask("a.png", masks)
        meta.load_mask("a.png", masks)
    assert len([w for w in caught if issubclass(w.category, WSOLWarning)]) == 1


def test_mask_of_its_image_size_is_silent(tmp_path: Path) -> None:
    from wsol.data.metadata import Metadata

    split, masks = _mask_split(tmp_path, (317, 173))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Metadata.load(split, mask_root=masks).load_mask("a.png", masks)


def test_metadata_root_instead_of_a_split(tmp_path: Path) -> None:
    from wsol.data.metadata import Metadata

    split, _ = _mask_split(tmp_path, (10, 10))
    with pytest.raises(WSOLError, match=r"looks like a metadata root: give one split folder, e.g\. .*test"):
        Metadata.load(split.parent)


# ------------------------------------------------------------------------------------------ shipped configs
def test_configs_found_by_name_and_listed(tmp_path: Path) -> None:
    from wsol.configs import config_dir, find_config, list_configs
    from wsol.train.config import load_config

    assert find_config("synth_gap") == config_dir() / "synth_gap.yaml"
    assert find_config("spaces/has") == config_dir() / "spaces" / "has.yaml"
    config = load_config("synth_gap", ["data.root=/d", "data.metadata=/d/m"])  # from any folder
    assert config.model.name == "resnet10t"
    listed = dict(list_configs())
    assert listed["synth_gap"].startswith("CAM on the synthetic benchmark")
    result = runner.invoke(app, ["configs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "synth_gap" in result.output and "methods/cub_resnet50_acol" in result.output
    with pytest.raises(WSOLError, match="synth_gapp: no such config file nor shipped config.*wsol configs"):
        load_config("synth_gapp")


def test_configs_are_package_data() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert "configs/*.yaml" in text and "configs/methods/*.yaml" in text and "configs/spaces/*.yaml" in text


# ------------------------------------------------------------------------------------------ interrupts
def test_ctrl_c_exits_130_with_a_resume_hint(tiny_model: torch.nn.Module, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from wsol import cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(folder_module, "localize_images", interrupted)
    monkeypatch.setattr(sys, "argv", ["wsol", "localize", str(_photos(tmp_path / "p")), "--out", str(tmp_path / "o")])
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.run()
        assert exit_info.value.code == 130
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a second Ctrl-C while exiting: no traceback
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert "interrupted" in err and "rerun" in err and "Traceback" not in err


def test_training_interrupted_is_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from wsol import cli
    from wsol.train import run as train_run

    assert issubclass(train_run.TrainingInterrupted, Interrupted)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise train_run.TrainingInterrupted("training interrupted at epoch 0; continue with --resume")

    monkeypatch.setattr(train_run, "train", interrupted)
    monkeypatch.setattr(sys, "argv", ["wsol", "train", "trainer.epochs=1"])
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_info.value.code == 130
    assert "--resume" in capsys.readouterr().err


def test_tune_interrupted_is_an_interruption() -> None:
    source = (ROOT / "src" / "wsol" / "tune" / "study.py").read_text()
    assert "raise Interrupted(f\"study" in source


# ------------------------------------------------------------------------------------------ training output
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    from wsol.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("train")
    generate(SynthConfig(num_classes=3, train_per_class=4, val_per_class=1, test_per_class=2, min_side=64,
                         max_side=80, distractors=1), root / "tiny")
    overrides = ["model.name=resnet10t", "model.pretrained=false", "data.root=tiny/images",
                 "data.metadata=tiny/metadata", "data.resize_size=72", "data.crop_size=64", "data.batch_size=4",
                 "data.num_workers=0", "eval.cam_curve_interval=0.01", "trainer.accelerator=cpu",
                 "trainer.devices=1", "trainer.tensorboard=false"]
    first = _wsol("train", *overrides, "trainer.epochs=2", "--out", "run", cwd=root)
    return root, overrides, first


@pytest.mark.slow
def test_train_prints_our_lines_only(tiny_run: tuple[Path, list[str], subprocess.CompletedProcess]) -> None:
    _, _, first = tiny_run
    assert first.returncode == 0, first.stderr
    text = first.stdout + first.stderr
    for noise in ("GPU available", "TPU available", "Tip:", "litlogger", "Total FLOPs", "limit_train_batches",
                  "limit_val_batches", "`Trainer.fit` stopped", "Warning"):
        assert noise not in text, noise
    assert "metrics: run/test_metrics.json" in text


@pytest.mark.slow
def test_resume_with_fewer_epochs_is_one_line(tiny_run: tuple[Path, list[str], subprocess.CompletedProcess]) -> None:
    root, overrides, _ = tiny_run
    proc = _wsol("train", *overrides, "trainer.epochs=1", "--out", "run", "--resume", cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "already has 2 epochs" in proc.stderr and "trainer.epochs" in proc.stderr


@pytest.mark.slow
def test_quiet_resume_says_where_the_results_are_and_nothing_else(
        tiny_run: tuple[Path, list[str], subprocess.CompletedProcess]) -> None:
    root, overrides, _ = tiny_run
    proc = _wsol("train", *overrides, "trainer.epochs=3", "--out", "run", "--resume", "-q", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == ["metrics: run/test_metrics.json"], lines


def test_readme_documents_exit_codes() -> None:
    text = (ROOT / "README.md").read_text()
    assert re.search(r"0.*done.*1.*nothing.*2.*usage.*130.*interrupt", text, re.S | re.I)
    assert "wsol train --config synth_gap" in text
