"""``wsol train``: fit with per-epoch localization validation, checkpoint selection, test, JSON of every metric.

Output folder (``trainer.out_dir``)::

    config.yaml                  the resolved recipe
    checkpoints/last.ckpt        every epoch end (and on Ctrl-C): resume with --resume
    checkpoints/best.ckpt        best val metric (eval.select; MaxBoxAccV2 / PxAP as the protocol does)
    logs/version_N/metrics.csv   CSV log; tb/ TensorBoard log
    val_history.jsonl            the val metrics of every epoch
    test_metrics.json            every test metric of the selected checkpoint (written atomically)

Checkpoints are Lightning checkpoints holding plain data only (``torch.load(weights_only=True)`` reads
them) plus ``checkpoint["wsol"]`` with the model's name, classes and pooling: :func:`load_checkpoint_model`
rebuilds the classifier from the file alone.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar

from wsol.errors import Interrupted, WSOLError
from wsol.files import plain, read_checkpoint, write_json
from wsol.locks import FolderLock
from wsol.models import WSOLClassifier
from wsol.train.config import TrainConfig, parse_devices
from wsol.train.data import WSOLDataModule
from wsol.train.module import WSOLModule, check_selectable, flat_metrics, select_metric

LAST, BEST = "last", "best"
log = logging.getLogger(__name__)


class TrainingInterrupted(Interrupted):
    """Raised after a Ctrl-C: the run stopped at a batch boundary and saved a resumable checkpoint."""


class _Stop(Exception):  # noqa: N818
    """Ends ``trainer.fit`` right after the interrupt checkpoint is written."""


class GracefulInterrupt(Callback):
    """First Ctrl-C: finish the current batch, save ``last.ckpt`` and stop. A second Ctrl-C aborts (Lightning
    then still calls ``on_exception``, which saves what it can)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requested = False
        self.saved = False
        self._previous: Any = None

    def request(self) -> None:
        self.requested = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._previous = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stop = self.requested
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not self.saved:
            trainer.save_checkpoint(self.path)
            self.saved = True
            raise _Stop  # not should_stop: that would run a validation and checkpoint callbacks mid-epoch

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, KeyboardInterrupt) and not self.saved:
            trainer.save_checkpoint(self.path)
            self.saved = True

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class CloseSpawnedProcessGroup(Callback):
    """Ends the process group in ranks started by ``ddp_spawn`` / ``ddp_fork``, which exit right after the run.

    Without it each rank exits with its Gloo/NCCL connections open, and a rank that is still shutting down
    when its peer's sockets close can abort (SIGABRT) even though the run itself succeeded. The barrier
    makes every rank finish its last collective before any of them closes a connection."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dist = torch.distributed
        if multiprocessing.parent_process() is None or not (dist.is_available() and dist.is_initialized()):
            return  # not a spawned rank: the process group (if any) outlives this run
        dist.barrier()
        dist.destroy_process_group()


class ValHistory(Callback):
    """Appends each epoch's val metrics to ``val_history.jsonl`` (rank 0)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer: L.Trainer, pl_module: WSOLModule) -> None:  # after the module's hooks
        if trainer.sanity_checking or not trainer.is_global_zero or "val" not in pl_module.results:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               **flat_metrics(pl_module.results["val"], pl_module.val_variant.spec)}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def _precision(config: TrainConfig, accelerator: str) -> str:
    if config.trainer.precision != "auto":
        return config.trainer.precision
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def make_trainer(config: TrainConfig, out: Path, *, callbacks: Sequence[Callback] = (), monitor: str | None = None,
                 quiet: bool = False, loggers: bool = True) -> tuple[L.Trainer, ModelCheckpoint | None]:
    """A Lightning trainer for this recipe (checkpoints, CSV/TensorBoard logs, progress bar, DDP)."""
    t = config.trainer
    cbs: list[Callback] = [*callbacks, CloseSpawnedProcessGroup()]
    ckpt = None
    if loggers:
        # two callbacks: Lightning's save_last only refreshes last.ckpt when a top-k checkpoint was saved
        cbs.append(ModelCheckpoint(dirpath=out / "checkpoints", filename=LAST, monitor=None, save_top_k=1,
                                   enable_version_counter=False, auto_insert_metric_name=False))
        if monitor:
            ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename=BEST, monitor=f"val/{monitor}", mode="max",
                                   save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
            cbs.append(ckpt)
    if t.progress_bar and not quiet:
        try:
            cbs.append(RichProgressBar())
        except ModuleNotFoundError:
            cbs.append(TQDMProgressBar())
    logger: Any = False
    if loggers:
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        logger = [CSVLogger(out, name="logs")]
        if t.tensorboard:
            logger.append(TensorBoardLogger(out, name="tb", default_hp_metric=False))
    if quiet:  # Lightning's info lines (devices, tips, batch limits, "fit stopped") go too, for the process
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    strategy: Any = t.strategy
    devices = parse_devices(t.devices)
    if strategy == "auto" and ((isinstance(devices, int) and devices > 1) or isinstance(devices, list)
                               or t.num_nodes > 1):
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    trainer = _trainer(
        accelerator=t.accelerator, devices=devices, num_nodes=t.num_nodes, strategy=strategy,
        precision=_precision(config, t.accelerator), max_epochs=t.epochs, max_steps=t.max_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        check_val_every_n_epoch=config.eval.every_n_epochs, num_sanity_val_steps=0,
        deterministic=t.deterministic, log_every_n_steps=t.log_every_n_steps, logger=logger, callbacks=cbs,
        enable_progress_bar=t.progress_bar and not quiet,
        # the model summary is Lightning's output too: shown with `--verbose` (its info lines enabled) only
        enable_model_summary=not quiet and logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO),
        enable_checkpointing=loggers, use_distributed_sampler=False, inference_mode=False,
        default_root_dir=str(out),
    )
    return trainer, ckpt


def _trainer(**kwargs: Any) -> L.Trainer:
    """``L.Trainer``, with what this machine cannot do (a GPU on a CPU-only box, devices it lacks) as one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as exc:  # e.g. devices=0,1 on the CPU
        raise WSOLError(f"trainer: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _quiet_warnings() -> None:
    for pattern in (".*does not have many workers.*", ".*The number of training batches.*",
                    ".*sync_dist=True.*", ".*LeafSpec.*", ".*isinstance.*treespec.*",
                    ".*module\\(s\\) in eval mode.*",  # F-CAM's frozen classifier stays in eval mode
                    ".*exists and is not empty.*"):  # the run folder of a --resume holds the run, of course
        warnings.filterwarnings("ignore", message=pattern)


ModuleFactory = Callable[[TrainConfig, WSOLDataModule, bool], WSOLModule]


def train(config: TrainConfig, *, resume: bool | str | Path = False, callbacks: Sequence[Callback] = (),
          test_methods: Sequence[str] | None = None, quiet: bool = False,
          make_module: ModuleFactory | None = None,
          finalize: Callable[[dict[str, Any], str], None] | None = None) -> dict[str, Any]:
    """Fit, select the checkpoint, test it, write ``test_metrics.json``; return the summary.

    ``resume=True`` continues from ``<out_dir>/checkpoints/last.ckpt``; a path resumes from that file.
    A Ctrl-C stops at the next batch boundary with a resumable ``last.ckpt`` and raises
    :class:`TrainingInterrupted`. Other trainings on this machinery (F-CAM) pass ``make_module(config,
    datamodule, resuming)`` and ``finalize(summary, tested_checkpoint)`` (run on rank 0 before the JSON).
    """
    config.check()
    _quiet_warnings()
    out = Path(config.trainer.out_dir)
    last = out / "checkpoints" / f"{LAST}.ckpt"
    ckpt_path: str | None = None
    if resume:
        ckpt_path = str(last if resume is True else resume)
        if not Path(ckpt_path).is_file():
            raise WSOLError(f"--resume: {ckpt_path} not found (nothing to resume in {out})")
    elif last.exists():
        raise WSOLError(f"{out}: already holds a run ({last}); pass --resume to continue it, "
                        "or set trainer.out_dir to a new folder")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    datamodule = WSOLDataModule(config)
    val_meta = datamodule.splits["val"].metadata if datamodule.splits.get("val") else None
    has_masks = config.data.mask_root is not None
    monitor = select_metric(config, val_meta, has_masks) if datamodule.splits.get("val") else None
    if monitor:
        check_selectable(monitor, val_meta, has_masks)
    if make_module is None:
        num_classes = config.model.num_classes or datamodule.num_classes
        if num_classes < datamodule.num_classes:
            raise WSOLError(f"config model.num_classes={num_classes}: the labels go up to "
                            f"{datamodule.num_classes - 1}")
        module = WSOLModule(config.to_dict(), num_classes, datamodule.class_names, list(test_methods or []) or None,
                            build_pretrained=ckpt_path is None)
    else:
        module = make_module(config, datamodule, ckpt_path is not None)
    if ckpt_path is not None:
        _check_resumable(Path(ckpt_path), module, out, config.trainer.epochs)  # before the run folder changes
    _attach(module, datamodule)
    datamodule.set_normalization(module.model.data_config["mean"], module.model.data_config["std"])
    module.model.data_config.update(datamodule.eval_preprocessing())  # saved in the checkpoints
    lock = _own_run_folder(out)
    if not resume and last.exists():  # a run that finished between the check above and the lock
        lock.release()
        raise WSOLError(f"{out}: already holds a run ({last}); pass --resume to continue it, "
                        "or set trainer.out_dir to a new folder")
    try:
        return _fit_and_test(config, out, last, ckpt_path, module, datamodule, monitor, callbacks, quiet, finalize)
    finally:
        lock.release()


def _own_run_folder(out: Path) -> FolderLock:
    """The run folder, owned by this training (:mod:`wsol.locks`): by the launching process only, as the DDP
    ranks that Lightning or a scheduler starts (RANK, LOCAL_RANK, SLURM_PROCID > 0) share rank 0's folder."""
    lock = FolderLock(out, "trainer.out_dir")
    ranks = [os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID")]
    if any(rank not in (None, "", "0") for rank in ranks):
        out.mkdir(parents=True, exist_ok=True)
        return lock  # released without having been acquired: a no-op
    return lock.acquire()


def _fit_and_test(config: TrainConfig, out: Path, last: Path, ckpt_path: str | None, module: WSOLModule,
                  datamodule: WSOLDataModule, monitor: str | None, callbacks: Sequence[Callback], quiet: bool,
                  finalize: Callable[[dict[str, Any], str], None] | None) -> dict[str, Any]:
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    interrupt = GracefulInterrupt(last)
    # the interrupt callback goes last, so every other batch-end hook has run when it saves and stops
    trainer, ckpt = make_trainer(config, out, callbacks=[ValHistory(out / "val_history.jsonl"), *callbacks,
                                                         interrupt], monitor=monitor, quiet=quiet)
    started = time.time()
    previous = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except _Stop:
        pass
    except SystemExit:  # a second Ctrl-C: Lightning saved what it could (on_exception) and exits with 1
        if not interrupt.requested:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupt.saved or interrupt.requested:
        raise TrainingInterrupted(f"training interrupted at epoch {trainer.current_epoch} step {trainer.global_step}; "
                                  f"resumable checkpoint {last}; continue with --resume")
    fit_seconds = time.time() - started
    summary: dict[str, Any] = {"out_dir": str(out), "fit_seconds": fit_seconds, "select_metric": monitor,
                               "last_checkpoint": str(last.resolve())}
    best = ckpt.best_model_path if ckpt is not None and monitor else ""
    summary["best_checkpoint"] = best or None
    if monitor and ckpt is not None and ckpt.best_model_score is not None:
        summary["best_val"] = float(ckpt.best_model_score)
    chosen = best if config.eval.test_checkpoint == BEST and best else str(last.resolve())
    summary["tested_checkpoint"] = chosen
    if datamodule.splits.get("test") is not None:
        handover = out / ".test_results.json"  # how ranks started by ddp_spawn hand rank 0's results back
        summary["test"] = evaluate_module(config, module, datamodule, chosen, trainer=trainer, json_out=handover)
        handover.unlink(missing_ok=True)
    if trainer.is_global_zero:
        if finalize is not None:
            finalize(summary, chosen)
        if "test" in summary:
            write_json(out / "test_metrics.json", {**summary, "config": config.to_dict()})
    return summary


def _attach(module: WSOLModule, datamodule: WSOLDataModule) -> None:
    for stage in ("val", "test"):
        split = datamodule.splits.get(stage)
        module.eval_splits[stage] = split.metadata if split is not None else None


def evaluate_module(config: TrainConfig, module: WSOLModule, datamodule: WSOLDataModule, checkpoint: str | None,
                    trainer: L.Trainer | None = None, quiet: bool = True,
                    json_out: str | Path | None = None) -> dict[str, Any]:
    """Run the test stage (all ``module.test_variants``) with the weights of ``checkpoint``.

    With ``json_out``, rank 0 also writes the results there (the way back from spawned DDP processes)."""
    if checkpoint:
        state = read_checkpoint(checkpoint)
        module.load_state_dict(state["state_dict"])
    if trainer is None:
        trainer, _ = make_trainer(config, Path(config.trainer.out_dir), quiet=quiet, loggers=False)
    module.results_path = str(json_out) if json_out is not None else None
    module.results.pop("test", None)
    started = time.time()
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)
    except torch.multiprocessing.ProcessExitedException as error:
        # A spawned rank died. Rank 0 writes the results only after gathering every rank's states, so if it
        # wrote them during this run they are complete and the crash came later, in the processes' shutdown.
        if json_out is None or not Path(json_out).is_file() or Path(json_out).stat().st_mtime < started:
            raise
        log.warning("%s after rank 0 had written complete results to %s; keeping them", error, json_out)
    if "test" not in module.results and json_out is not None and Path(json_out).is_file():
        return json.loads(Path(json_out).read_text(encoding="utf-8"))  # ran in spawned processes
    # the same plain JSON types (string keys) whether the results come from this process or from rank 0's file
    return plain(module.results.get("test", {}))


def evaluate(config: TrainConfig, checkpoint: str | Path, *, split: str = "test",
             methods: Sequence[str] | None = None, quiet: bool = True,
             json_out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a ``wsol train`` checkpoint on ``split`` of the config's dataset with the trainer's devices
    (DDP across ranks gives exactly the single-process numbers). Returns every metric per map variant."""
    config.check()
    _quiet_warnings()
    path = Path(checkpoint)
    meta = read_checkpoint_meta(path)
    config.data.test_split = split
    config.data.val_split = None
    if config.data.format == "wsol":
        config.data.train_split = split  # only the test split is read
    datamodule = WSOLDataModule(config)
    module = WSOLModule(config.to_dict(), int(meta["num_classes"]), meta.get("class_names"),
                        list(methods or []) or None, build_pretrained=False)
    _check_arch(path, meta, module.model)
    _attach(module, datamodule)
    datamodule.set_normalization(module.model.data_config["mean"], module.model.data_config["std"])
    return evaluate_module(config, module, datamodule, str(path), quiet=quiet, json_out=json_out)


# ---------------------------------------------------------------------------- checkpoints
def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """``checkpoint["wsol"]`` of a ``wsol train`` checkpoint; one-line errors for other files."""
    path = Path(path)
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("wsol"), dict) or "state_dict" not in obj:
        raise WSOLError(f"{path}: not a `wsol train` checkpoint (no 'wsol' model record)")
    if obj["wsol"].get("kind") == "fcam":
        raise WSOLError(f"{path}: an F-CAM checkpoint (`wsol fcam train`), not a classifier of `wsol train`; "
                        "give the classifier's own checkpoint here")
    meta = dict(obj["wsol"])
    meta["state_dict"] = obj["state_dict"]
    return meta


def _check_resumable(path: Path, module: L.LightningModule, out: Path, epochs: int = -1) -> None:
    """One line instead of Lightning's traceback when ``path`` was made by another model or already holds
    more than ``epochs`` epochs."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise WSOLError(f"--resume {path}: not a checkpoint of `wsol train` / `wsol fcam train`")
    done = _epochs_done(obj)
    if epochs != -1 and done is not None and done > epochs:
        raise WSOLError(f"--resume {path}: the run already has {done} epochs, more than trainer.epochs={epochs}; "
                        f"to continue it, raise trainer.epochs (e.g. trainer.epochs={done + 1})")
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
    diff = sorted(set(own) ^ set(theirs)) or [k for k in own if own[k] != theirs[k]]
    if diff:
        made_by = obj.get("wsol", {}).get("model", "another model") if isinstance(obj.get("wsol"), dict) else "?"
        raise WSOLError(f"--resume {path}: made by {made_by!r} with other weights than this run's model "
                        f"(first difference: {diff[0]}); resume with the settings of {out / 'config.yaml'}")


def _epochs_done(obj: dict[str, Any]) -> int | None:
    """The epochs a Lightning checkpoint has trained (what Lightning restores as ``current_epoch``: an epoch-end
    checkpoint is saved before its epoch counts as completed, but after it is processed)."""
    try:
        return int(obj["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def _check_arch(path: Path, meta: dict[str, Any], model: WSOLClassifier) -> None:
    own = {f"model.{k}": v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in meta["state_dict"].items()}
    if own.keys() != theirs.keys() or any(own[k] != theirs[k] for k in own):
        diff = sorted(set(own) ^ set(theirs)) or [k for k in own if own[k] != theirs[k]]
        raise WSOLError(f"{path}: checkpoint of model {meta.get('model')!r} does not fit {model.name!r} "
                        f"(first differing key: {diff[0]})")


def load_checkpoint_model(path: str | Path, map_location: str | torch.device = "cpu") -> WSOLClassifier:
    """Rebuild the trained classifier (architecture, pooling, classes, weights) from a ``wsol train``
    checkpoint alone; eval mode. (:func:`wsol.models.load` reads every other format too.)"""
    from wsol.models import load

    read_checkpoint_meta(path)  # one line for a file of another kind (an F-CAM checkpoint, a state dict)
    return load(path, map_location=map_location)
