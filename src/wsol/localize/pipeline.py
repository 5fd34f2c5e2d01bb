"""The localize job's shared pipeline: a model over batches of decoded images, on the device, with the
per-image post-processing of each batch in a thread pool; and what both modes of ``wsol localize``
(:mod:`wsol.localize.folder`, :mod:`wsol.localize.split`) and the reports share: the model and its
preprocessing, the device, the target class, progress, the run's summary and its folder's settings record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wsol.cams import compute_cams
from wsol.data.transforms import normalize_batch
from wsol.errors import WSOLError
from wsol.files import write_text


@dataclass
class BatchResult:
    """What the model produced for one batch, on the CPU: raw maps (B, h, w), probabilities (B, K), targets."""

    batch: dict[str, Any]
    maps: np.ndarray
    probs: Tensor
    targets: Tensor
    logits: Tensor


Writer = Callable[[BatchResult], Any]  # called in a worker thread; returns records or None


def preprocessing(model: nn.Module) -> dict[str, Any]:
    """The model's input size, interpolation, mean and std (its ``data_config``; mean = std = 0.5 and 224
    bicubic when it has none)."""
    cfg = getattr(model, "data_config", None) or {}
    prep = {"size": int(cfg.get("input_size", (3, 224, 224))[-1]),
            "interpolation": str(cfg.get("interpolation", "bicubic")),
            "mean": tuple(cfg.get("mean", (0.5,) * 3)), "std": tuple(cfg.get("std", (0.5,) * 3))}
    if prep["size"] < 1 or len(prep["mean"]) != 3 or len(prep["std"]) != 3 or min(prep["std"]) <= 0:
        raise WSOLError(f"model {getattr(model, 'name', '')!r}: unusable preprocessing in its data_config "
                        f"(input size {prep['size']}, mean {prep['mean']}, std {prep['std']})")
    return prep


def run_model(model: nn.Module, batch: dict[str, Any], method: str, targets: Any, device: torch.device,
              method_options: dict[str, Any] | None = None) -> BatchResult:
    """CAMs of one collated batch (uint8 images, normalised here on ``device`` with the model's mean and
    std); ``targets`` as for :func:`wsol.cams.compute_cams`."""
    prep = preprocessing(model)
    images = normalize_batch(batch["images"].to(device, non_blocking=True), prep["mean"], prep["std"])
    out = compute_cams(model, images, targets, method, **(method_options or {}))
    probs = out.logits.float().softmax(1)
    return BatchResult(batch, out.maps.float().cpu().numpy(), probs.cpu(), out.targets.cpu(), out.logits.cpu())


def localize_loader(model: nn.Module, loader: Iterable[dict[str, Any]], writer: Writer, *, method: str = "cam",
                    targets: Callable[[dict[str, Any]], Any] | Any = None, device: str | torch.device = "cpu",
                    method_options: dict[str, Any] | None = None, threads: int = 2,
                    on_batch: Callable[[int, list[tuple[int, str]], Any], None] | None = None) -> None:
    """Run ``model`` over ``loader`` (batches from :func:`~wsol.data.datasets.collate_images`) and hand each
    result to ``writer``.

    ``writer(result)`` runs in a thread pool while the next batch goes through the model; ``on_batch(n_good,
    errors, writer_return)`` is then called in this thread, in batch order (append records, advance a
    progress bar). ``targets`` is a fixed value or a function of the batch (e.g. its GT labels).
    """
    device = torch.device(device)
    pending: list[tuple[Future, dict[str, Any]]] = []

    def finish(fut: Future, batch: dict[str, Any]) -> None:
        value = fut.result()
        if on_batch is not None:
            on_batch(len(batch["indices"]), batch["errors"], value)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for batch in loader:
            if batch["images"] is None:
                pending.append((pool.submit(lambda: None), batch))
            else:
                tgt = targets(batch) if callable(targets) else targets
                result = run_model(model, batch, method, tgt, device, method_options)
                pending.append((pool.submit(writer, result), batch))
            while len(pending) > 1:  # keep one batch in post-processing while the model runs the next
                finish(*pending.pop(0))
        while pending:
            finish(*pending.pop(0))


def check_batching(batch_size: int, workers: int | None) -> None:
    if batch_size < 1:
        raise WSOLError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise WSOLError(f"--workers must be >= 0, got {workers}")


def resolve_device(device: str) -> torch.device:
    """'auto' = CUDA when available, else CPU; anything else must be a valid, available torch device."""
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise WSOLError(f"--device {device!r} is not a device (try cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WSOLError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WSOLError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise WSOLError(f"--device {device}: Apple's MPS is not available on this machine")
    elif dev.type != "cpu":
        raise WSOLError(f"--device {device}: not supported here (use cpu, cuda, cuda:N or mps)")
    return dev


def class_names_of(model: nn.Module) -> list[str]:
    """The model's class names, or ``class <i>``."""
    names = getattr(model, "class_names", None)
    k = int(model.num_classes)
    return list(names) if names and len(names) == k else [f"class {i}" for i in range(k)]


def resolve_target(target: str | int | None, names: Sequence[str]) -> int | None:
    """'top1' -> None; a class index; or a class name (case-insensitive, exact or one of its synonyms)."""
    if target is None or str(target).lower() in ("top1", "pred", ""):
        return None
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < len(names):
            raise WSOLError(f"--target {k}: class index out of range [0, {len(names)})")
        return k
    low = text.lower()
    exact = [i for i, n in enumerate(names) if n.lower() == low]
    if exact:
        return exact[0]
    synonyms = [i for i, n in enumerate(names) if low in (s.strip().lower() for s in n.split(","))]
    if len(synonyms) == 1:
        return synonyms[0]
    partial = synonyms or [i for i, n in enumerate(names) if low in n.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise WSOLError(f"--target {text!r}: no class of this name (use top1, a class index or a class name)")
    some = "; ".join(f"{i}: {names[i]}" for i in partial[:5])
    raise WSOLError(f"--target {text!r} is ambiguous ({len(partial)} classes: {some}...); use a class index")


def default_map_method(model: nn.Module) -> str:
    """The map the model's training method is evaluated with (ACoL's two branches, SPG's class map), as its
    checkpoint records it; ``cam`` otherwise."""
    from wsol.methods import METHODS

    name = getattr(getattr(model, "checkpoint_info", None), "method", "cam") or "cam"
    method = METHODS.get(str(name))
    return method.map_method if method is not None else "cam"


def load_model(model_name: str | None = None, checkpoint: str | Path | None = None,
               large_feature_map: bool | None = None) -> nn.Module:
    """The embedded default, a named model (pretrained where possible), or any checkpoint
    :func:`wsol.models.load` reads (``model_name`` then overrides the architecture the file names or implies;
    contradicting it is an error)."""
    from wsol.models import EMBEDDED_MODEL, build_model, load

    if checkpoint is None:
        name = model_name or EMBEDDED_MODEL
        try:
            return build_model(name, pretrained=True, **({"large_feature_map": large_feature_map}
                                                         if large_feature_map is not None else {}))
        except WSOLError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise WSOLError(f"--model {name}: cannot be built ({type(exc).__name__}: {exc})") from exc
    return load(checkpoint, model=model_name, large_feature_map=large_feature_map)


@dataclass
class Summary:
    """What a run did."""

    processed: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Path | None = None
    metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # things the user may not have meant

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def total(self) -> int:
        return self.processed + self.resumed


class Progress:
    """A rich progress bar with images/s on stderr (nothing when ``quiet``)."""

    def __init__(self, total: int, quiet: bool, label: str = "localize") -> None:
        self.bar = None
        if quiet or total == 0:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.task = self.bar.add_task(label, total=total, rate="")
        self.start = time.perf_counter()
        self.count = 0
        self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is None:
            return
        self.count += n
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, advance=n, rate=f"{rate:.1f} img/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def checkpoint_id(checkpoint: str | Path | None) -> str | None:
    """The checkpoint as recorded in run.json / scoremaps.json: absolute, so that another spelling matches."""
    return None if checkpoint is None else str(Path(checkpoint).resolve())


def claim_folder(record: Path, config: dict[str, Any], has_results: bool, option: str) -> None:
    """Resume only what the same settings made: refuse a folder whose ``record`` (the settings of the run that
    wrote its results) differs from ``config``, then record ``config``. A folder without results (a run that
    failed before its first batch) is taken over."""
    if has_results and record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise WSOLError(f"{option} {record.parent}: its {record.name} is unreadable; use another folder or "
                            "delete it to start over") from None
        diff = [k for k in config if k in old and old[k] != config[k]]
        if diff:
            k = diff[0]
            raise WSOLError(f"{option} {record.parent}: holds results made with {k}={old[k]!r}, not "
                            f"{config[k]!r}; use another folder or delete it to start over")
    write_text(record, json.dumps(config, indent=1) + "\n")


def open_split(split_dir: str | Path, data_root: str | Path, mask_root: str | Path | None = None) -> tuple[Any, Path]:
    """A WSOL split's metadata and its images' root folder (``--data-root``), checked to exist."""
    from wsol.data.metadata import Metadata

    meta = Metadata.load(split_dir, mask_root)
    root = Path(data_root)
    if not root.is_dir():
        raise WSOLError(f"--data-root {root}: folder not found")
    return meta, root
