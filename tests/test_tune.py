"""wsol tune: search-space files and their one-line errors, a tiny study's outputs, resume after a kill, two
processes on one study, pruning from the per-epoch val metric."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from wsol.data.synth import SynthConfig, generate
from wsol.errors import WSOLError
from wsol.train.config import TrainConfig, load_config
from wsol.train.run import train
from wsol.tune.pruning import PruningCallback
from wsol.tune.space import load_space, override
from wsol.tune.study import TuneSettings, load_recipe, run_study

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "configs" / "spaces"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(SynthConfig(num_classes=3, train_per_class=6, val_per_class=2, test_per_class=3, min_side=64,
                                max_side=96, distractors=1), tmp_path_factory.mktemp("synth") / "tiny")


def tiny_config(synth: Path, path: Path, **trainer: object) -> Path:
    """A recipe that trains in about a second: resnet10t from scratch, 64 px, 2 batches an epoch."""
    recipe = {"model": {"name": "resnet10t", "pretrained": False},
              "data": {"root": str(synth / "images"), "metadata": str(synth / "metadata"),
                       "mask_root": str(synth / "masks"), "resize_size": 72, "crop_size": 64, "batch_size": 4,
                       "num_workers": 0},
              "optim": {"lr": 0.01}, "eval": {"cam_curve_interval": 0.01},
              "trainer": {"epochs": 1, "limit_train_batches": 2, "accelerator": "cpu", "devices": 1,
                          "progress_bar": False, "tensorboard": False, **trainer}}
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def val_history(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "val_history.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ spaces
def test_space_parsing_sampling_and_grid(tmp_path: Path) -> None:
    space = load_space(write(tmp_path / "s.yaml", """
optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
optim.lr_decay_epochs: {type: int, low: 10, high: 30, step: 10}
model.pool: {type: categorical, choices: [gap, tap]}
optim.momentum: {type: float, low: 0.5, high: 0.9}
optim.weight_decay: {type: float, low: optim.momentum, high: 1.0}
trainer.epochs: 3
"""))
    assert space.keys == ["optim.lr", "optim.lr_decay_epochs", "model.pool", "optim.momentum", "optim.weight_decay"]
    assert space.fixed == {"trainer.epochs": 3}
    lr = space.params[0]
    assert (lr.type, lr.low, lr.high, lr.log, lr.step) == ("float", 1e-5, 1e-2, True, None)
    assert space.params[1].step == 10 and space.params[2].choices == ("gap", "tap")

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        values = space.suggest(study.ask())
        assert 1e-5 <= values["optim.lr"] <= 1e-2
        assert values["optim.lr_decay_epochs"] in (10, 20, 30)
        assert values["model.pool"] in ("gap", "tap")
        assert values["optim.momentum"] <= values["optim.weight_decay"] <= 1.0  # a bound naming an earlier key
    # the values reach the config exactly (1e-05 is a float, not the string YAML would read)
    config = load_config(ROOT / "configs" / "synth_gap.yaml", space.overrides({"optim.lr": 1e-5, "model.pool": "tap"}))
    assert config.optim.lr == 1e-5 and config.model.pool == "tap" and config.trainer.epochs == 3
    assert [override("k", v) for v in (1e-5, 2.0, True, None, "tap", 7)] == [
        "k=1.0e-05", "k=2.0", "k=true", "k=null", 'k="tap"', "k=7"]

    grid = load_space(write(tmp_path / "g.yaml", "optim.lr: {type: categorical, choices: [0.1, 0.01]}\n"
                                                 "trainer.epochs: {type: int, low: 1, high: 5, step: 2}\n")).grid()
    assert grid == [{"optim.lr": lr, "trainer.epochs": e} for lr in (0.1, 0.01) for e in (1, 3, 5)]
    with pytest.raises(WSOLError, match="optim.lr: a grid needs choices or a step"):
        space.grid()


@pytest.mark.parametrize(("text", "problem"), [
    ("optim.lr: {type: floaty, low: 1, high: 2}", "optim.lr: unknown type 'floaty' (expected float, int, categ"),
    ("optim.lr: {low: 1, high: 2}", "optim.lr: no type"),
    ("optim.lr: {type: float, low: 0.1, high: 0.01}", "optim.lr: low=0.1 >= high=0.01"),
    ("optim.lr: {type: float, low: 0.0, high: 1.0, log: true}", "optim.lr: a log range needs low > 0"),
    ("optim.lr: {type: float, low: 0.1, hi: 1.0}", "optim.lr: unknown field 'hi' for type float"),
    ("optim.lr: {type: float, high: 1.0}", "optim.lr: low is required"),
    ("trainer.epochs: {type: int, low: 1.5, high: 4}", "trainer.epochs: low=1.5: expected an integer"),
    ("optim.lr: {type: categorical, choices: []}", "optim.lr: choices must be a non-empty list"),
    ("optim.lr: {type: categorical, choices: [1, 1]}", "optim.lr: choices repeat a value"),
    ("optim.lr: {type: float, low: 0.0, high: 1.0, step: 0.3}", "optim.lr: high - low = 1 is not a multiple of"),
    ("optim.momentum: {type: float, low: optim.lr, high: 1.0}", "optim.momentum: low='optim.lr': not a number, nor"),
    ("trainer.out_dir: {type: categorical, choices: [a, b]}", "trainer.out_dir: set by wsol tune itself"),
    ("optim.lr: {type: float", "not valid YAML"),
    ("trainer.epochs: 3", "no distribution to search"),
])
def test_space_file_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "bad_space.yaml", text + "\n")
    with pytest.raises(WSOLError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and problem in message


@pytest.mark.parametrize(("text", "problem"), [
    ("optim.lrr: {type: float, low: 0.1, high: 1.0}",
     "optim.lrr: {config} has no such key (keys under optim: name, lr, classifier_lr_mult"),
    ("optim: {type: float, low: 0.1, high: 1.0}", "optim: a section of {config}, not a value"),
    ("optim.lr.x: {type: float, low: 0.1, high: 1.0}", "optim.lr.x: optim.lr is a single value in {config}"),
    ("optim.lr: {type: float, low: -1.0, high: 1.0}", "optim.lr=-1.0 does not fit {config}: "),
    ("model.pretrained: {type: categorical, choices: [true, maybe]}",
     "model.pretrained='maybe' does not fit {config}: "),
    ("optim.lr: {type: float, low: 0.1, high: 1.0}\nmodel.pool: hat", "model.pool='hat' does not fit {config}"),
])
def test_space_checked_against_the_config(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "space.yaml", text + "\n")
    recipe = ROOT / "configs" / "synth_gap.yaml"
    with pytest.raises(WSOLError) as info:
        load_space(path).validate(lambda extra: load_config(recipe, list(extra)), str(recipe))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and problem.format(config=recipe) in message


def test_shipped_spaces(tmp_path: Path) -> None:
    names = sorted(p.stem for p in SPACES.glob("*.yaml"))
    assert names == ["acol", "adl", "cutmix", "fcam", "has", "protocol", "spg"]
    spaces = {name: load_space(SPACES / f"{name}.yaml") for name in names}
    lr = spaces["protocol"].params[0]
    assert (lr.key, lr.low, lr.high, lr.log) == ("optim.lr", 1e-5, 1.0, True)
    for method in ("has", "acol", "spg", "adl", "cutmix"):
        assert spaces[method].fixed == {"method.name": method}
        assert spaces[method].params[:2] == spaces["protocol"].params
    assert [p.key.rsplit("_", 1)[1] for p in spaces["spg"].params[2:]] == ["1l", "1h", "2l", "2h", "3l", "3h"]
    assert {p.key for p in spaces["fcam"].params} == {"fcam.n_neg", "fcam.alpha", "fcam.lambda_crf", "fcam.sigma_rgb",
                                                      "fcam.lambda_size", "optim.lr"}
    n_neg = spaces["fcam"].params[0]
    assert (n_neg.low, n_neg.high, n_neg.step) == (0.1, 0.7, 0.1)  # F-CAM's paper: [0.1, 0.7], step 0.1

    recipe = ROOT / "configs" / "synth_gap.yaml"
    spaces["protocol"].validate(lambda extra: load_recipe(recipe, extra), str(recipe))
    classifier = write(tmp_path / "classifier.ckpt", "")  # check() only needs the file to exist
    fcam = ROOT / "configs" / "fcam_synth_cpu.yaml"
    spaces["fcam"].validate(lambda extra: load_recipe(fcam, [f"fcam.classifier={classifier}", *extra]), str(fcam))
    if "method" in {f for f in TrainConfig.__dataclass_fields__}:  # the methods' keys, once the config has them
        for method in ("has", "acol", "spg", "adl", "cutmix"):
            spaces[method].validate(lambda extra: load_recipe(recipe, extra), str(recipe))


# ------------------------------------------------------------------------------------------------ pruning
class StandInTrial:
    """A trial whose pruner always says prune; records what it is told."""

    def __init__(self, prune: bool = True) -> None:
        self.prune = prune
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


@pytest.mark.slow
def test_pruning_callback_stops_the_run(synth: Path, tmp_path: Path) -> None:
    trial = StandInTrial()
    callback = PruningCallback(trial)
    config = load_config(tiny_config(synth, tmp_path / "c.yaml", epochs=3),
                         [f"trainer.out_dir={tmp_path / 'run'}", "data.test_split=null"])
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 0: val MaxBoxAccV2"):
        train(config, callbacks=[callback], quiet=True)
    history = val_history(tmp_path / "run")
    assert len(history) == 1  # stopped right after the first validation
    assert trial.reports == [(pytest.approx(history[0]["MaxBoxAccV2"]), 0)]
    assert callback.pruned_epoch == 0 and callback.metric == "MaxBoxAccV2"

    # the last epoch is never pruned (a finished run is a complete trial); best so far is what is reported
    trial = StandInTrial()
    callback = PruningCallback(trial)
    config = load_config(tiny_config(synth, tmp_path / "c.yaml", epochs=1), [f"trainer.out_dir={tmp_path / 'b'}"])
    summary = train(config, callbacks=[callback], quiet=True)
    assert callback.pruned_epoch is None and len(trial.reports) == 1
    assert callback.value == pytest.approx(summary["best_val"])


def test_pruning_callback_needs_a_val_metric() -> None:
    trainer = SimpleNamespace(callbacks=[])
    with pytest.raises(WSOLError, match="scores trials on the val split"):
        PruningCallback(StandInTrial()).on_fit_start(trainer, None)  # type: ignore[arg-type]
    # best=False reports each epoch's value, best=True the best so far
    for best, expected in ((True, [50.0, 50.0]), (False, [50.0, 40.0])):
        trial = StandInTrial(prune=False)
        callback = PruningCallback(trial, best=best)
        callback.monitor = "val/PxAP"
        for epoch, value in enumerate((50.0, 40.0)):
            state = SimpleNamespace(sanity_checking=False, callback_metrics={"val/PxAP": value}, current_epoch=epoch,
                                    max_epochs=3)
            callback.on_validation_end(state, None)  # type: ignore[arg-type]
        assert [v for v, _ in trial.reports] == expected and callback.value == expected[-1]


# ------------------------------------------------------------------------------------------------ studies
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.slow
def test_tiny_study_writes_outputs_and_trains_the_best(synth: Path, tmp_path: Path) -> None:
    recipe = tiny_config(synth, tmp_path / "tiny.yaml")
    space = write(tmp_path / "lr.yaml", "optim.lr: {type: categorical, choices: [0.01, 0.0005]}\n")
    out = tmp_path / "study"
    settings = TuneSettings(config=recipe, space=space, trials=2, sampler="grid", out=out, quiet=True)
    summary = run_study(settings)

    trials = load_trials(f"sqlite:///{out / 'study.db'}", "tiny-lr")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["optim.lr"] for t in trials) == [0.0005, 0.01]
    for t in trials:  # scored by the best epoch's val MaxBoxAccV2, test stage off, checkpoints removed
        run = out / "trials" / str(t.number)
        assert t.value == pytest.approx(max(row["MaxBoxAccV2"] for row in val_history(run)))
        assert not (run / "test_metrics.json").exists() and not (run / "checkpoints").exists()
    rows = read_csv(out / "trials.csv")
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]
    assert [float(r["value"]) for r in rows] == pytest.approx([t.value for t in trials])
    assert [float(r["optim.lr"]) for r in rows] == [t.params["optim.lr"] for t in trials]
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = max(trials, key=lambda t: (t.value, -t.number))
    assert (summary["best_trial"], summary["best_value"], summary["metric"]) == (best.number, best.value, "MaxBoxAccV2")
    config = load_config(out / "best.yaml")  # a plain `wsol train` recipe
    assert config.optim.lr == best.params["optim.lr"]
    assert config.trainer.out_dir == str(out / "best") and config.data.test_split == "test"
    base = load_config(recipe).to_dict()
    tuned = config.to_dict()
    assert {k: v for k, v in tuned.items() if k not in ("optim", "trainer")} == \
        {k: v for k, v in base.items() if k not in ("optim", "trainer")}
    final = json.loads((out / "best" / "test_metrics.json").read_text())
    assert final["test"]["cam"]["MaxBoxAccV2"] == pytest.approx(summary["final"]["test"]["cam"]["MaxBoxAccV2"])

    # the same command again: a finished study runs nothing more and keeps the final run
    again = run_study(settings)
    assert [t.datetime_complete for t in load_trials(f"sqlite:///{out / 'study.db'}", "tiny-lr")] == \
        [t.datetime_complete for t in trials]
    assert again["final"]["test"]["cam"] == final["test"]["cam"]
    with pytest.raises(WSOLError, match="searches another space"):
        run_study(TuneSettings(config=recipe, space=write(tmp_path / "lr.yaml", "optim.lr: {type: categorical, "
                                                          "choices: [0.01, 0.002]}\n"), trials=2, out=out, quiet=True))


class FakeFit:
    """Stands in for training: each learning rate gives fixed per-epoch val values (or diverges, or is
    interrupted), reported through the trial's real PruningCallback."""

    def __init__(self, curves: dict[float, list[float] | str]) -> None:
        self.curves = curves
        self.calls: list[float] = []

    def __call__(self, config: TrainConfig, *, callbacks: list[PruningCallback], **_: object) -> dict[str, object]:
        from wsol.train.run import TrainingInterrupted

        lr = config.optim.lr
        self.calls.append(lr)
        assert config.data.test_split is None and config.trainer.devices == "1"  # no test stage, one process
        curve = self.curves[lr]
        if curve == "diverge":
            raise WSOLError("training diverged: the loss is nan at epoch 0, step 3; lower optim.lr or check the data")
        if curve == "interrupt":
            raise TrainingInterrupted("training interrupted at epoch 0 step 1; resumable checkpoint x")
        callback = callbacks[0]
        callback.monitor = "val/MaxBoxAccV2"
        for epoch, value in enumerate(curve):
            trainer = SimpleNamespace(sanity_checking=False, callback_metrics={callback.monitor: value},
                                      current_epoch=epoch, max_epochs=len(curve))
            callback.on_validation_end(trainer, None)  # type: ignore[arg-type]
        return {}


@pytest.mark.slow
def test_study_bookkeeping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Diverged runs are pruned trials, a grid point enqueued twice runs once, a Ctrl-C re-queues the trial."""
    import wsol.tune.study as study_module

    recipe = tiny_config(tmp_path / "no-data", tmp_path / "tiny.yaml")  # the trials never read the data here
    space = write(tmp_path / "lr.yaml", "optim.lr: {type: categorical, choices: [0.1, 0.01, 0.001]}\n")
    out = tmp_path / "study"
    settings = TuneSettings(config=recipe, space=space, trials=3, sampler="grid", out=out, final=False, quiet=True)
    study, _ = study_module.prepare(settings.resolved())
    study.enqueue_trial({"optim.lr": 0.01}, user_attrs={"grid": 1})  # as a second process starting at once might
    fake = FakeFit({0.1: "diverge", 0.01: [5.0, 10.0], 0.001: [1.0, 2.0]})
    monkeypatch.setattr(study_module, "fit", fake)
    summary = run_study(settings)
    assert fake.calls == [0.1, 0.01, 0.001]
    rows = read_csv(out / "trials.csv")
    assert [(r["number"], r["state"], r["optim.lr"]) for r in rows] == [
        ("0", "PRUNED", "0.1"), ("1", "COMPLETE", "0.01"), ("2", "COMPLETE", "0.001"), ("3", "PRUNED", "")]
    assert rows[0]["note"].startswith("training diverged") and rows[3]["note"] == "not run: grid point 1 already " \
        "done or running"
    assert [float(r["value"]) for r in rows[1:3]] == [10.0, 2.0] and [r["epochs"] for r in rows[1:3]] == ["2", "2"]
    assert (summary["completed"], summary["pruned"], summary["best_trial"]) == (2, 2, 1)
    assert load_config(out / "best.yaml").optim.lr == 0.01

    # Ctrl-C during a trial: the study stops with a one-line error and the trial's values wait in the queue
    out = tmp_path / "interrupted"
    settings = TuneSettings(config=recipe, space=space, trials=2, sampler="grid", out=out, final=False, quiet=True)
    monkeypatch.setattr(study_module, "fit", FakeFit({0.1: "interrupt", 0.01: [3.0], 0.001: [4.0]}))
    with pytest.raises(WSOLError, match="interrupted with 0 of 2 trials completed; run the same command again"):
        run_study(settings)
    trials = load_trials(f"sqlite:///{out / 'study.db'}", "tiny-lr")
    assert [(t.state, t.user_attrs.get("grid")) for t in trials] == [
        (TrialState.FAIL, 0), (TrialState.WAITING, 1), (TrialState.WAITING, 2), (TrialState.WAITING, 0)]
    monkeypatch.setattr(study_module, "fit", FakeFit({0.1: [1.0], 0.01: [3.0], 0.001: [4.0]}))
    run_study(replace(settings, trials=3))
    done = [t for t in load_trials(f"sqlite:///{out / 'study.db'}", "tiny-lr") if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optim.lr"] for t in done) == [0.001, 0.01, 0.1]  # the interrupted point ran later


def tune_command(recipe: Path, space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from wsol.cli import run; run()", "tune", "--config", str(recipe), "--space",
            str(space), "--trials", str(trials), "--out", str(out), "--sampler", "grid", "--heartbeat", "1",
            "--no-final", "--quiet", *extra]


@pytest.mark.slow
def test_killed_study_resumes(synth: Path, tmp_path: Path) -> None:
    # `wsol tune` in a subprocess: trial 0 trains 1 epoch, trial 1 trains 4; the process is killed (SIGKILL) once
    # trial 1 has validated its first epoch
    recipe = tiny_config(synth, tmp_path / "tiny.yaml", limit_train_batches=1)
    space = write(tmp_path / "epochs.yaml", "trainer.epochs: {type: categorical, choices: [1, 4]}\n")
    out = tmp_path / "study"
    storage = f"sqlite:///{out / 'study.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(tune_command(recipe, space, out, 2), env=env, stderr=subprocess.PIPE, text=True)
    history = out / "trials" / "1" / "val_history.jsonl"
    deadline = time.monotonic() + 120
    while not (history.is_file() and history.read_text().strip()):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "trial 1 never validated"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = load_trials(storage, "tiny-epochs")
    assert [(t.number, t.state) for t in before] == [(0, TrialState.COMPLETE), (1, TrialState.RUNNING)]

    # the same study again (here in this process): it waits for the dead trial's heartbeat to go stale
    run_study(TuneSettings(config=recipe, space=space, trials=2, sampler="grid", heartbeat=1, out=out, final=False,
                           quiet=True))
    after = load_trials(storage, "tiny-epochs")
    # trial 0 kept as it was; the killed trial 1 failed and re-queued with its values as trial 2
    assert [(t.number, t.state) for t in after] == [(0, TrialState.COMPLETE), (1, TrialState.FAIL),
                                                    (2, TrialState.COMPLETE)]
    assert (after[0].value, after[0].datetime_complete) == (before[0].value, before[0].datetime_complete)
    assert after[0].params == {"trainer.epochs": 1} and after[2].params == after[1].params == {"trainer.epochs": 4}
    assert len(val_history(out / "trials" / "0")) == 1 and len(val_history(out / "trials" / "2")) == 4
    rows = read_csv(out / "trials.csv")
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "FAIL"), ("2", "COMPLETE")]


@pytest.mark.slow
def test_two_processes_share_a_study(synth: Path, tmp_path: Path) -> None:
    recipe = tiny_config(synth, tmp_path / "tiny.yaml", epochs=2)
    space = write(tmp_path / "lr.yaml", "optim.lr: {type: categorical, choices: [0.02, 0.01, 0.005, 0.002]}\n")
    out = tmp_path / "study"
    summary = run_study(TuneSettings(config=recipe, space=space, trials=4, sampler="grid", jobs=2, out=out,
                                     final=False, quiet=True))
    trials = load_trials(f"sqlite:///{out / 'study.db'}", "tiny-lr")
    assert summary["completed"] == 4 and [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert sorted(t.params["optim.lr"] for t in trials) == [0.002, 0.005, 0.01, 0.02]  # every point once
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2", "3"]
