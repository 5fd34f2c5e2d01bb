"""``wsol tune``: an Optuna study whose trials are ``wsol train`` (or ``wsol fcam train``) runs.

- Each trial trains the recipe plus the trial's sampled values (dotted ``key=value`` overrides) with the
  test stage off (``data.test_split: null``), in ``<out>/trials/<number>/``, and is scored by the val metric
  training selects checkpoints by (``eval.select``: MaxBoxAccV2 with boxes, PxAP with masks), the best epoch's
  (or the last's, with ``eval.test_checkpoint: last``). Nothing is read from the test split.
- A :class:`~wsol.tune.pruning.PruningCallback` reports every epoch's value; the pruner (median by
  default) stops bad trials early. A diverged run (non-finite loss) is a pruned trial too.
- The study lives in an Optuna RDB storage (default ``sqlite:///<out>/study.db``). Every running trial
  beats a heartbeat; a trial whose process died (killed, machine lost) is failed once its heartbeat is
  ``2 x --heartbeat`` seconds old and re-queued with the same values. Rerunning the same command resumes:
  completed trials are kept, ``--trials N`` counts the completed trials of the whole study.
- Several processes (``--jobs J``, or other machines on the same storage) share the study: the storage
  hands each trial to one process; no process starts a trial once completed + running trials reach N.
- ``--sampler grid`` enqueues every point of the space once (categorical choices, int / stepped ranges);
  the processes pop them from the storage, so no point runs twice.
- Outputs (written atomically): ``trials.csv``, ``trials.png``, ``best.yaml`` (the recipe with the best
  values, for ``wsol train --config``), then the best recipe trained and tested in ``<out>/best/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from wsol.errors import Interrupted, WSOLError
from wsol.train.config import TrainConfig, load_config, parse_devices, parse_override
from wsol.tune.pruning import PruningCallback
from wsol.tune.space import SearchSpace, load_space, override

SAMPLERS = ("random", "tpe", "grid")
PRUNERS = ("median", "none")
# config keys that may differ between the processes / machines of one study (paths, devices, logging)
_LOCAL_KEYS = ("data.root", "data.metadata", "data.mask_root", "data.num_workers", "model.weights", "fcam.classifier",
               "trainer.out_dir", "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
               "trainer.precision", "trainer.progress_bar", "trainer.tensorboard", "trainer.log_every_n_steps",
               "reported", "notes")


@dataclass
class TuneSettings:
    """Everything ``wsol tune`` is given (picklable: it travels to the worker processes)."""

    config: Path
    space: Path
    trials: int
    overrides: list[str] = field(default_factory=list)
    timeout: float | None = None  # seconds after which no process starts a new trial
    sampler: str = "random"
    pruner: str = "median"
    storage: str | None = None  # default: sqlite:///<out>/study.db
    study: str | None = None  # default: <config stem>-<space stem>
    jobs: int = 1
    out: Path | None = None  # default: runs/tune/<study>
    seed: int | None = None
    final: bool = True
    keep_checkpoints: bool = False
    heartbeat: int = 60
    quiet: bool = False

    def resolved(self) -> TuneSettings:
        """With the defaults filled in and the options checked (one-line errors)."""
        if self.trials < 1:
            raise WSOLError(f"--trials {self.trials}: must be >= 1")
        if self.jobs < 1:
            raise WSOLError(f"--jobs {self.jobs}: must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise WSOLError(f"--timeout {self.timeout}: must be > 0 seconds")
        if self.heartbeat < 1:
            raise WSOLError(f"--heartbeat {self.heartbeat}: must be >= 1 second")
        if self.sampler not in SAMPLERS:
            raise WSOLError(f"--sampler {self.sampler}: must be one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise WSOLError(f"--pruner {self.pruner}: must be one of {', '.join(PRUNERS)}")
        study = self.study or f"{Path(self.config).stem}-{Path(self.space).stem}"
        out = Path(self.out) if self.out is not None else Path("runs") / "tune" / study
        storage = self.storage or f"sqlite:///{(out / 'study.db').resolve()}"
        return replace(self, config=Path(self.config), space=Path(self.space), study=study, out=out, storage=storage,
                       overrides=list(self.overrides))


# ----------------------------------------------------------------------------------------------- recipes
def is_fcam_recipe(path: Path, overrides: Sequence[str] = ()) -> bool:
    """An F-CAM recipe has an ``fcam`` section (in the file or in an override)."""
    if any(parse_override(text)[0][0] == "fcam" for text in overrides if "=" in text):
        return True
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # load_config reports it
    return isinstance(data, dict) and "fcam" in data


def load_recipe(path: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The recipe (``wsol train`` or ``wsol fcam train``) with ``overrides`` applied, not yet checked."""
    if is_fcam_recipe(path, overrides):
        from wsol.fcam.train import load_fcam_config

        return load_fcam_config(path, list(overrides))
    return load_config(path, list(overrides))


def fit(config: TrainConfig, *, callbacks: Sequence[Any] = (), quiet: bool = True,
        resume: bool = False) -> dict[str, Any]:
    """Train (and test, when the recipe has a test split) with the runner the recipe belongs to."""
    from wsol.fcam.train import FCAMConfig, train_fcam
    from wsol.train.run import train

    if isinstance(config, FCAMConfig):
        return train_fcam(config, quiet=quiet, resume=resume, callbacks=callbacks)
    return train(config, quiet=quiet, resume=resume, callbacks=callbacks)


def _trial_overrides(settings: TuneSettings, config: TrainConfig) -> list[str]:
    """What every trial adds: its folder comes later; no test stage; one process (parallel trials: --jobs)."""
    extra = ["data.test_split=null", "trainer.progress_bar=false"]
    devices = parse_devices(config.trainer.devices)
    if devices == "auto":
        extra.append("trainer.devices=1")
    elif not (devices == 1 or (isinstance(devices, list) and len(devices) == 1)) or config.trainer.num_nodes > 1:
        raise WSOLError(f"config trainer.devices={config.trainer.devices} / num_nodes={config.trainer.num_nodes}: "
                        "wsol tune runs each trial in one process on one device; run trials in parallel with --jobs")
    return extra


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "reported":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _comparable(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in _flat(config.to_dict()).items() if not k.startswith(_LOCAL_KEYS)}


# ----------------------------------------------------------------------------------------------- the study
def _storage(settings: TuneSettings) -> optuna.storages.RDBStorage:
    url = str(settings.storage)
    if url.startswith("sqlite:///"):
        database = url[len("sqlite:///"):]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
                heartbeat_interval=settings.heartbeat, grace_period=2 * settings.heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy / driver errors of a bad URL: one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WSOLError(f"--storage {url}: cannot open the study storage ({reason[:200]})") from None


def _sampler(settings: TuneSettings, worker: int, offset: int) -> optuna.samplers.BaseSampler:
    # a distinct seed per process and per (re)start, so that processes never draw the same sequence
    seed = None if settings.seed is None else settings.seed + 1000 * worker + offset
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: only enqueued trials run


def _pruner(settings: TuneSettings) -> optuna.pruners.BasePruner:
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def _quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


def open_study(settings: TuneSettings, *, worker: int = 0, create: bool = False) -> optuna.Study:
    """Load (``create``: create or load) the study, with this process's sampler and the pruner."""
    storage = _storage(settings)
    offset = 0
    if not create:
        study = optuna.load_study(study_name=settings.study, storage=storage)
        offset = len(study.trials)
        return optuna.load_study(study_name=settings.study, storage=storage,
                                 sampler=_sampler(settings, worker, offset), pruner=_pruner(settings))
    return optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                               load_if_exists=True, sampler=_sampler(settings, worker, offset),
                               pruner=_pruner(settings))


def prepare(settings: TuneSettings) -> tuple[optuna.Study, SearchSpace]:
    """Validate the space against the recipe (before any trial), then create or resume the study."""
    space = load_space(settings.space)

    def load(extra: Sequence[str]) -> TrainConfig:
        return load_recipe(settings.config, [*settings.overrides, *extra])

    space.validate(load, str(settings.config))
    base = load(space.overrides())
    base.check()
    if not base.data.val_split:
        raise WSOLError(f"{settings.config}: wsol tune scores trials on the val split, and data.val_split is null")
    _trial_overrides(settings, base)
    grid = space.grid() if settings.sampler == "grid" else None
    study = open_study(settings, create=True)
    recorded = study.user_attrs
    mine = {"space": space.spec(), "config": _comparable(base)}
    if "space" in recorded:
        if recorded["space"] != mine["space"]:
            differ = sorted(set(recorded["space"]) ^ set(mine["space"])) or [
                k for k in mine["space"] if recorded["space"][k] != mine["space"][k]]
            raise WSOLError(f"study {settings.study!r} in {settings.storage} searches another space (first "
                            f"difference: {differ[0]}); resume it with the same --space, or name a new --study")
        theirs = recorded.get("config", {})
        differ = sorted(k for k in set(theirs) | set(mine["config"]) if theirs.get(k) != mine["config"].get(k))
        if differ:
            raise WSOLError(f"study {settings.study!r} in {settings.storage} was started from another recipe "
                            f"({differ[0]}={theirs.get(differ[0])!r}, now {mine['config'].get(differ[0])!r}); "
                            "resume it with the same config, or name a new --study")
    else:
        for key, value in mine.items():
            study.set_user_attr(key, value)
    if grid is not None and not any("grid" in t.user_attrs for t in study.get_trials(deepcopy=False)):
        for i, point in enumerate(grid):
            study.enqueue_trial(point, user_attrs={"grid": i})
    return study, space


# ----------------------------------------------------------------------------------------------- trials
class Objective:
    """One trial: train the recipe with the trial's values, return its val score."""

    def __init__(self, settings: TuneSettings, space: SearchSpace) -> None:
        self.settings = settings
        self.space = space

    def __call__(self, trial: optuna.Trial) -> float:
        settings = self.settings
        if settings.sampler == "grid" and "grid" not in trial.user_attrs:
            self._surplus(trial, "no grid point left for this process")
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                 if t.number < trial.number]
        if len(ahead) >= settings.trials:  # another process started the last trial meanwhile
            self._surplus(trial, f"{settings.trials} trials were already done or running")
        point = trial.user_attrs.get("grid")
        if point is not None and any(t.user_attrs.get("grid") == point for t in ahead):  # enqueued twice
            self._surplus(trial, f"grid point {point} already done or running")
        values = self.space.suggest(trial)
        out = Path(settings.out) / "trials" / str(trial.number)  # type: ignore[arg-type]
        if out.exists():  # left by a study of the same name whose storage was deleted
            shutil.rmtree(out)
        base = load_recipe(settings.config, [*settings.overrides, *self.space.overrides(values)])
        config = load_recipe(settings.config, [*settings.overrides, *self.space.overrides(values),
                                               *_trial_overrides(settings, base), f"trainer.out_dir={out}"])
        callback = PruningCallback(trial, best=config.eval.test_checkpoint == "best")
        trial.set_user_attr("out_dir", str(out))
        trial.set_user_attr("pid", os.getpid())
        from wsol.train.run import TrainingInterrupted

        try:
            fit(config, callbacks=[callback], quiet=True)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("note", str(exc))
            raise
        except (TrainingInterrupted, KeyboardInterrupt):
            trial.study.enqueue_trial(values, user_attrs={k: v for k, v in trial.user_attrs.items() if k == "grid"})
            raise
        except WSOLError as exc:
            if not str(exc).startswith("training diverged"):
                raise
            trial.set_user_attr("note", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            if callback.metric:
                trial.set_user_attr("metric", callback.metric)
            trial.set_user_attr("epochs", len(callback.values))
            if not settings.keep_checkpoints:  # the best recipe is trained again in <out>/best
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
                (out / "fcam.pt").unlink(missing_ok=True)
        if callback.value is None:
            raise WSOLError(f"trial {trial.number}: no validation ran (eval.every_n_epochs="
                            f"{config.eval.every_n_epochs}, trainer.epochs={config.trainer.epochs})")
        return float(callback.value)

    @staticmethod
    def _surplus(trial: optuna.Trial, why: str) -> None:
        trial.set_user_attr("note", f"not run: {why}")
        raise optuna.TrialPruned(why)


def counts(trials: Sequence[FrozenTrial]) -> Counter[TrialState]:
    return Counter(t.state for t in trials)


def work(settings: TuneSettings, worker: int = 0,
         on_update: Callable[[list[FrozenTrial]], None] | None = None) -> None:
    """One process's share of the study: run trials until the study has ``settings.trials`` completed
    trials, the grid is used up, or ``settings.timeout`` has passed (no trial is started after it)."""
    import torch

    _quiet_libraries()
    space = load_space(settings.space)
    study = open_study(settings, worker=worker)
    objective = Objective(settings, space)
    started = time.monotonic()
    poll = min(2.0, settings.heartbeat / 2)
    while True:
        optuna.storages.fail_stale_trials(study)  # trials of dead processes: failed and re-queued
        trials = study.get_trials(deepcopy=False)
        if on_update is not None:
            on_update(trials)
        n = counts(trials)
        complete, running, waiting = n[TrialState.COMPLETE], n[TrialState.RUNNING], n[TrialState.WAITING]
        if complete >= settings.trials:
            return
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            return
        finished = len(trials) - running - waiting
        if finished >= 5 * settings.trials + 10:
            raise WSOLError(f"study {settings.study!r}: {finished} trials ended, only {complete} completed "
                            f"(pruned {n[TrialState.PRUNED]}, failed {n[TrialState.FAIL]}); see trials.csv")
        grid_left = settings.sampler != "grid" or waiting > 0
        if complete + running >= settings.trials or (not grid_left and running > 0):
            time.sleep(poll)  # the running trials may end the study, or fail and be re-queued
            continue
        if not grid_left:
            return  # every grid point has run
        study.optimize(objective, n_trials=1, catch=(torch.OutOfMemoryError,))


def _worker(settings: TuneSettings, worker: int) -> None:
    """Entry point of a ``--jobs`` process."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.jobs))
    work(settings, worker)


# ----------------------------------------------------------------------------------------------- the command
def run_study(settings: TuneSettings) -> dict[str, Any]:
    """``wsol tune``: validate, create or resume the study, run it (``jobs`` processes), write the outputs,
    then train and test the best recipe (unless ``final=False``). Returns a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wsol.tune.outputs import describe, write_outputs

    settings = settings.resolved()
    _quiet_libraries()
    out = Path(settings.out)  # type: ignore[arg-type]
    study, space = prepare(settings)
    target = settings.trials
    console = Console(stderr=True)
    if settings.sampler == "grid" and len(space.grid()) < target:
        target = len(space.grid())
        settings = replace(settings, trials=target)
        if not settings.quiet:
            console.print(f"note: the grid of {settings.space} has {target} points: the study ends after them",
                          highlight=False)
    seen: dict[int, TrialState] = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    progress = Progress(TextColumn("[bold]tune[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                        disable=settings.quiet)

    def update(trials: list[FrozenTrial]) -> None:
        n = counts(trials)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value or 0.0) if complete else None
        status = (f"best {best.value:.2f} (#{best.number})  " if best is not None else "") + \
            f"running {n[TrialState.RUNNING]}  pruned {n[TrialState.PRUNED]}  failed {n[TrialState.FAIL]}"
        progress.update(task, completed=min(n[TrialState.COMPLETE], target), status=status)
        changed = False
        for t in trials:
            if t.state.is_finished() and seen.get(t.number) != t.state:
                seen[t.number] = t.state
                changed = True
                if not settings.quiet:
                    progress.console.print(describe(t), highlight=False, soft_wrap=True)
        if changed:
            write_outputs(study, settings, space)

    interrupted = False
    with progress:
        task = progress.add_task(str(settings.study), total=target, status="")
        try:
            if settings.jobs == 1:
                work(settings, 0, on_update=update)
            else:
                _run_jobs(settings, lambda: update(study.get_trials(deepcopy=False)))
        except (KeyboardInterrupt, WSOLError) as exc:
            from wsol.train.run import TrainingInterrupted

            if not isinstance(exc, (KeyboardInterrupt, TrainingInterrupted)):
                write_outputs(study, settings, space)
                raise
            interrupted = True
        update(study.get_trials(deepcopy=False))
    summary = write_outputs(study, settings, space)
    n = counts(study.get_trials(deepcopy=False))
    summary.update(study=settings.study, storage=settings.storage, out_dir=str(out),
                   completed=n[TrialState.COMPLETE], pruned=n[TrialState.PRUNED], failed=n[TrialState.FAIL])
    if interrupted:
        raise Interrupted(f"study {settings.study!r} interrupted with {n[TrialState.COMPLETE]} of {target} trials "
                        "completed; run the same command again to resume it")
    if settings.final and summary.get("best_config"):
        summary["final"] = _final(Path(summary["best_config"]), out / "best", settings.quiet)
    return summary


def _run_jobs(settings: TuneSettings, refresh: Callable[[], None]) -> None:
    """``settings.jobs`` worker processes on this machine; the parent shows the progress."""
    with ProcessPoolExecutor(max_workers=settings.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, settings, i) for i in range(settings.jobs)]
        try:
            while True:
                done, pending = wait(futures, timeout=2.0, return_when=FIRST_EXCEPTION)
                refresh()
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                if not pending:
                    return
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _final(best_yaml: Path, out: Path, quiet: bool) -> dict[str, Any]:
    """Train and test the best recipe in ``out`` (resuming an interrupted final run, skipping a done one)."""
    import json

    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    config = load_recipe(best_yaml)
    resume = (out / "checkpoints" / "last.ckpt").is_file()
    return fit(config, quiet=quiet, resume=resume)


__all__ = ["PRUNERS", "SAMPLERS", "Objective", "TuneSettings", "fit", "is_fcam_recipe", "load_recipe",
           "open_study", "override", "prepare", "run_study", "work"]
