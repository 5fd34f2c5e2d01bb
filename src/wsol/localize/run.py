"""``wsol localize``: maps, boxes, overlays and a report for folders of images, and score maps for WSOL splits.

Library entry points, used by the CLI and reusable elsewhere:

- :class:`ImageSource`: a Dataset that decodes any image robustly (grayscale, RGBA, palette, 16-bit, CMYK,
  EXIF rotation, huge JPEGs through draft decoding) and returns an error item instead of raising;
  :func:`collate_images` batches the good items and passes the failures through.
- :func:`localize_loader`: model + DataLoader + writers; the CAMs run batched on the device while the
  per-image post-processing (score maps, boxes, overlays, ``.npy`` files) runs in a thread pool
  (OpenCV and numpy release the GIL) and the DataLoader workers decode the next batches.
- :func:`localize_images` (folders -> ``results.jsonl``, overlays, maps, ``index.html``, resumable) and
  :func:`localize_split` (a WSOL metadata split -> ``<image_id>.npy`` score maps and/or metrics).

Boxes: the target class's raw map is resized bicubically to the display size (the image's aspect, longest
side at most 512 px, never above the original), min-max normalised, thresholded with
:func:`wsol.localize.boxes.boxes_from_map` (``threshold`` x the ``percentile``-th value of the map), and
scaled to original pixels. A box's ``score`` is the MEAN map value inside it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize

from wsol.cams import compute_cams
from wsol.data.images import find_image_files, read_image
from wsol.data.transforms import normalize_batch
from wsol.errors import WSOLError
from wsol.files import json_text, save_npy, write_text
from wsol.localize.boxes import contour_boxes, mask_from_map
from wsol.localize.crf import crf_refine
from wsol.localize.maps import minmax_normalize, resize_map, to_score_maps
from wsol.localize.variants import MapVariant, pas_normalize
from wsol.models.inference import inference_copy

DISPLAY_SIZE = 512  # longest side of overlays and of the map boxes are traced on
SCOREMAPS_RECORD = "scoremaps.json"  # in a --scoremaps folder: the settings its maps were made with


def display_shape(width: int, height: int, limit: int = DISPLAY_SIZE) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most ``limit`` (never enlarged)."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class ImageSource(Dataset):
    """Decodes images for localization: each item is a dict with ``index``, the model input ``image`` as an
    (S, S, 3) uint8 tensor (the whole image resized to S x S, no crop, so maps cover the whole image; batches
    are normalised on the device by :func:`wsol.data.transforms.normalize_batch`), the original
    ``width``/``height``, a ``display`` RGB uint8 array (longest side <= ``display_size``; None when
    ``display_size`` is 0) and ``note``; or ``{"index", "error"}`` when the file cannot be used.

    ``exact=True`` reproduces the WSOL reference's preprocessing bit for bit (a full decode and PIL's
    resize, as :func:`wsol.data.transforms.eval_transform` at ``image_size``): used for score maps that get
    evaluated.
    ``exact=False`` is for browsing photos: large JPEGs decode at a reduced DCT scale and both resizes are
    torchvision's antialiased uint8 kernels (vectorised; PIL's filters up to the rounding of a few grey
    levels), about 2.5x cheaper per image.
    """

    def __init__(self, files: Sequence[str | Path], image_size: int = 224, interpolation: str = "bicubic",
                 display_size: int = DISPLAY_SIZE, exact: bool = False) -> None:
        self.files = [Path(f) for f in files]
        self.image_size = int(image_size)
        if interpolation not in _PIL_RESAMPLE:
            raise WSOLError(f"interpolation must be one of {sorted(_PIL_RESAMPLE)}, got {interpolation!r}")
        self.interpolation = interpolation
        self.display_size = int(display_size)
        self.exact = exact

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            draft = None if self.exact else max(self.image_size, self.display_size)
            image, width, height, note = read_image(path, draft_size=draft)
            s = self.image_size
            pixels = torch.from_numpy(np.array(image)) if self.display_size or not self.exact else None
            if self.exact:
                model_in = torch.from_numpy(np.array(image.resize((s, s), _PIL_RESAMPLE[self.interpolation])))
            else:
                model_in = _resize_uint8(pixels, (s, s), self.interpolation)
            display = None
            if self.display_size:
                shape = display_shape(width, height, self.display_size)
                display = _resize_uint8(pixels, shape, "bilinear").numpy()
        except WSOLError as exc:
            return {"index": index, "error": str(exc).removeprefix(f"{path}: ")}
        except Exception as exc:  # noqa: BLE001 - never kill a long run for one file
            return {"index": index, "error": f"{type(exc).__name__}: {exc}"}
        return {"index": index, "image": model_in.contiguous(), "width": width,
                "height": height, "display": display, "note": note}


_PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def _resize_uint8(image: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    """An (H, W, 3) uint8 image resized to ``size = (width, height)`` with torchvision's antialiased uint8
    kernels (lanczos, which they lack, falls back to bicubic); the image itself when the size matches."""
    w, h = size
    if tuple(image.shape[:2]) == (h, w):
        return image
    mode = {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}.get(
        interpolation, InterpolationMode.BICUBIC)
    return resize(image.permute(2, 0, 1), [h, w], interpolation=mode, antialias=True).permute(1, 2, 0)


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; failures go to ``errors`` as ``(index, reason)``; ``images`` is None if none."""
    good = [it for it in items if "error" not in it]
    return {
        "images": torch.stack([it["image"] for it in good]) if good else None,
        "indices": [it["index"] for it in good],
        "widths": [it["width"] for it in good],
        "heights": [it["height"] for it in good],
        "displays": [it["display"] for it in good],
        "notes": [it["note"] for it in good],
        "errors": [(it["index"], it["error"]) for it in items if "error" in it],
    }


# ---------------------------------------------------------------------------------------------- pipeline
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
    """Run ``model`` over ``loader`` (batches from :func:`collate_images`) and hand each result to ``writer``.

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


# ---------------------------------------------------------------------------------------------- folders
@dataclass
class LocalizeOptions:
    """Options of :func:`localize_images` (the CLI's flags)."""

    method: str = "cam"
    target: str = "top1"
    threshold: float = 0.2
    percentile: float = 100.0
    boxes: str = "largest"
    image_size: int | None = None
    batch_size: int = 32
    device: str = "auto"
    save_maps: bool = False
    workers: int | None = None
    crf: bool = False  # refine each map against its image with a dense CRF (Bae et al.) before the boxes

    def check(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise WSOLError(f"--threshold must lie in [0, 1], got {self.threshold}")
        if not 0 < self.percentile <= 100:
            raise WSOLError(f"--percentile must lie in (0, 100], got {self.percentile}")
        if self.boxes not in ("largest", "all"):
            raise WSOLError(f"--boxes must be 'largest' or 'all', got {self.boxes!r}")
        check_batching(self.batch_size, self.workers)
        if self.image_size is not None and not 32 <= self.image_size <= 4096:
            raise WSOLError(f"--image-size must lie in [32, 4096], got {self.image_size}")
        if MapVariant.parse(self.method).pas:  # raises for an unknown method or modifier
            raise WSOLError(f"--method {self.method}: here PaS is --percentile 90 --threshold 0.35 (the boxes' "
                            "threshold relative to the map's 90th percentile); +pas is for --metadata")


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


class ResultsLog:
    """``results.jsonl``: one JSON record per image, appended per batch with flush + fsync (resumable).

    A torn last line (an interrupted write) is dropped on open and the file rewritten atomically.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            good, torn = [], False
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    torn = True
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    good.append(rec)
            self.records = good
            if torn:
                write_text(self.path, "".join(json.dumps(r) + "\n" for r in good))
        self.done = {r["id"] for r in self.records}
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self._handle.write("".join(json_text(r) + "\n" for r in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.extend(records)
        self.done.update(r["id"] for r in records)

    def close(self) -> None:
        self._handle.close()


def scale_boxes(boxes: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Inclusive boxes from a ``src = (w, h)`` pixel grid to ``dst = (W, H)``: pixel ``[x0, x1]`` covers
    ``[x0 * W / w, (x1 + 1) * W / w)`` in the destination."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.stack([np.floor(b[:, 0] * sx), np.floor(b[:, 1] * sy),
                    np.ceil((b[:, 2] + 1) * sx) - 1, np.ceil((b[:, 3] + 1) * sy) - 1], 1)
    out = np.clip(out, 0, [dst[0] - 1, dst[1] - 1, dst[0] - 1, dst[1] - 1])
    return out.astype(np.int64)


def boxes_with_scores(score_map: np.ndarray, threshold: float, percentile: float, components: str,
                      size: tuple[int, int]) -> list[dict[str, Any]]:
    """Boxes of ``score_map`` in the pixels of an image of ``size = (W, H)``, each with the mean map value
    inside it, largest first; an empty foreground gives no box (not the protocol's ``(0, 0, 0, 0)``)."""
    foreground = mask_from_map(score_map, threshold, percentile)
    if not foreground.any():
        return []
    boxes = contour_boxes(foreground.view(np.uint8), components)  # type: ignore[arg-type]
    h, w = score_map.shape
    out = []
    for (x0, y0, x1, y1), big in zip(boxes, scale_boxes(boxes, (w, h), size)):
        score = float(score_map[y0:y1 + 1, x0:x1 + 1].mean())
        out.append({"box": [int(v) for v in big], "score": round(score, 4)})
    out.sort(key=lambda r: -(r["box"][2] - r["box"][0] + 1) * (r["box"][3] - r["box"][1] + 1))  # largest first
    return out


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


def default_workers(device: torch.device, cpus: int | None = None) -> int:
    """Decoding workers when none are asked for. On a GPU: CPUs - 1, at most 4. On the CPU the model's
    forward pass already keeps every core busy, and a worker process that takes a core from it stalls its
    threads at every synchronisation: on 2 cores, 1 worker ran 20 % slower than decoding between batches
    in the main process (``benchmarks/bench_localize.py --workers``). So none up to 3 CPUs, then one per 4."""
    if cpus is None:  # the CPUs this process may run on (affinity, cgroup cpusets), not the machine's
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    if device.type == "cpu":
        return 0 if cpus < 4 else min(4, cpus // 4)
    return max(1, min(4, cpus - 1))


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_images, pin_memory=device.type == "cuda", **kwargs)


def _checkpoint_id(checkpoint: str | Path | None) -> str | None:
    """The checkpoint as recorded in run.json / scoremaps.json: absolute, so that another spelling matches."""
    return None if checkpoint is None else str(Path(checkpoint).resolve())


def _run_config(options: LocalizeOptions, model: nn.Module, checkpoint: str | None) -> dict[str, Any]:
    return {"model": getattr(model, "name", type(model).__name__), "checkpoint": _checkpoint_id(checkpoint),
            "method": options.method, "target": str(options.target), "threshold": options.threshold,
            "crf": options.crf, "save_maps": options.save_maps,
            "percentile": options.percentile, "boxes": options.boxes, "image_size": options.image_size}


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


def localize_images(paths: Sequence[str | Path], out_dir: str | Path, model: nn.Module,
                    options: LocalizeOptions | None = None, *, quiet: bool = False,
                    checkpoint: str | None = None, log: Callable[[str], None] | None = None,
                    shard: tuple[int, int] | None = None) -> Summary:
    """Localize every image under ``paths`` into ``out_dir`` (see the module docstring); resumes a previous
    run with the same options. ``shard = (K, N)`` takes only the images of shard K of N
    (:mod:`wsol.localize.shards`). The folder is owned by this process while it runs (:mod:`wsol.locks`).
    Returns a :class:`Summary`."""
    from wsol.locks import FolderLock

    options = options or LocalizeOptions()
    options.check()
    with FolderLock(out_dir, "--out"):
        return _localize_images(paths, out_dir, model, options, quiet=quiet, log=log, checkpoint=checkpoint,
                                shard=shard)


def _localize_images(paths: Sequence[str | Path], out_dir: str | Path, model: nn.Module, options: LocalizeOptions,
                     *, quiet: bool, checkpoint: str | None, log: Callable[[str], None] | None,
                     shard: tuple[int, int] | None) -> Summary:
    from wsol.localize.shards import select_found, write_shard_record

    device = resolve_device(options.device)
    names = class_names_of(model)
    target = resolve_target(options.target, names)
    found = find_image_files(paths, exclude=[out_dir])  # its own output is never input
    everything = len(found.files) + len(found.ignored)
    shard_order = select_found(found, shard)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WSOLError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    prep = preprocessing(model)
    size = options.image_size or prep["size"]
    options.image_size = size
    from wsol.memory import fit_batch_size

    memory_notes: list[str] = []  # a batch that does not fit is shrunk (or the size refused) before it runs
    options.batch_size = fit_batch_size(model, size, options.batch_size, device, memory_notes)
    results_path = out / "results.jsonl"
    has_results = False
    if results_path.is_file():
        with results_path.open(encoding="utf-8", errors="replace") as lines:
            has_results = any(line.strip() for line in lines)
    config = _run_config(options, model, checkpoint)
    claim_folder(out / "run.json", config, has_results, "--out")
    if shard is not None:
        if not everything:
            raise WSOLError(f"no image found under {', '.join(map(str, paths))}")
        write_shard_record(out, shard, "images", shard_order)
    results = ResultsLog(results_path)
    summary = Summary(out_dir=out, ignored=[str(p) for p in found.ignored], notes=memory_notes)
    # done = the same key, or the same file under another key (the list of PATHs changed between runs)
    done_files = {os.path.realpath(r["path"]) for r in results.records if isinstance(r.get("path"), str)}
    todo = [i for i, k in enumerate(found.keys)
            if k not in results.done and os.path.realpath(found.files[i]) not in done_files]
    summary.resumed = len(found.keys) - len(todo)
    files = [found.files[i] for i in todo]
    keys = [found.keys[i] for i in todo]
    dataset = ImageSource(files, size, prep["interpolation"], DISPLAY_SIZE)
    workers = default_workers(device) if options.workers is None else options.workers
    model = inference_copy(model, device)  # batch norms folded, channels-last on the CPU; the caller's is kept
    from wsol.report.overlay import OVERLAY_SUFFIX, label_text, write_overlay

    def write(result: BatchResult) -> list[dict[str, Any]]:
        batch = result.batch
        top_p, top_i = result.probs.topk(min(5, result.probs.shape[1]), dim=1)
        records = []
        for row, index in enumerate(batch["indices"]):
            width, height = batch["widths"][row], batch["heights"][row]
            display = batch["displays"][row]
            dh, dw = display.shape[:2]
            raw = result.maps[row]
            score = minmax_normalize(resize_map(raw, (dw, dh)))
            if options.crf:
                score = crf_on_images(torch.from_numpy(display)[None], score[None])[0]
            boxes = boxes_with_scores(score, options.threshold, options.percentile, options.boxes, (width, height))
            k = int(result.targets[row])
            prob = float(result.probs[row, k])
            key = keys[index]
            rec: dict[str, Any] = {
                # the path absolute: a resume may start from another folder
                "id": key, "path": os.path.abspath(files[index]), "width": width, "height": height,
                "display_width": dw, "display_height": dh,
                "top5": [{"class": int(c), "name": names[int(c)], "prob": round(float(p), 5)}
                         for p, c in zip(top_p[row], top_i[row])],
                "target": {"class": k, "name": names[k], "prob": round(prob, 5)},
                "boxes": boxes, "box_score": "mean", "threshold": options.threshold,
                "percentile": options.percentile, "method": options.method,
            }
            if batch["notes"][row]:
                rec["converted_from"] = batch["notes"][row]
            overlay_rel = f"overlays/{key}{OVERLAY_SUFFIX}"
            disp_boxes = scale_boxes([b["box"] for b in boxes], (width, height), (dw, dh)) if boxes else None
            write_overlay(out / overlay_rel, display, score, disp_boxes, label_text(names[k], prob))
            rec["overlay"] = overlay_rel
            if options.save_maps:
                map_rel = f"maps/{key}.npy"
                if options.crf:  # the refined map the boxes were drawn from, brought to the original size
                    full = score.astype(np.float32)
                    if (dw, dh) != (width, height):  # bilinear: a probability stays in [0, 1]
                        full = F.interpolate(torch.from_numpy(full)[None, None], size=(height, width),
                                             mode="bilinear", align_corners=False)[0, 0].numpy()
                else:
                    full = minmax_normalize(resize_map(raw, (width, height))).astype(np.float32)
                save_npy(out / map_rel, full)
                rec["map"] = map_rel
            records.append(rec)
        return records

    progress = Progress(len(files), quiet)

    def on_batch(n: int, errors: list[tuple[int, str]], records: Any) -> None:
        if records:
            results.append(records)
        summary.processed += n
        summary.skipped.extend((str(files[i]), reason) for i, reason in errors)
        progress.advance(n + len(errors))

    start = time.perf_counter()
    try:
        if files:
            variant = MapVariant.parse(options.method)
            localize_loader(model, _loader(dataset, options.batch_size, workers, device), write,
                            method=variant.method, method_options=variant.options, targets=target, device=device,
                            on_batch=on_batch, threads=2)
    finally:
        summary.seconds = time.perf_counter() - start
        progress.close()
        results.close()
        order = {k: i for i, k in enumerate(found.keys)}
        records = sorted(results.records, key=lambda r: order.get(r["id"], len(order)))
        skipped = [{"path": p, "reason": r} for p, r in summary.skipped]
        skipped += [{"path": p, "reason": "not an image file (by extension); ignored"} for p in summary.ignored]
        write_text(out / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))
        from wsol.report.html import write_html

        write_html(out / "index.html", records, title=f"wsol localize: {config['model']} / {options.method}",
                   summary=f"{len(records)} images, threshold {options.threshold} x p{options.percentile:g}")
    return summary


# ---------------------------------------------------------------------------------------------- WSOL splits
def crf_on_images(images: Tensor, maps: np.ndarray) -> np.ndarray:
    """:func:`crf_refine` of score maps (B, h, w) against their uint8 images (B, H, W, 3), the images resized
    (bilinear, antialiased) to the maps' size."""
    rgb = images.permute(0, 3, 1, 2).float()
    if tuple(rgb.shape[-2:]) != tuple(maps.shape[-2:]):
        rgb = F.interpolate(rgb, size=tuple(maps.shape[-2:]), mode="bilinear", antialias=True, align_corners=False)
    return crf_refine(rgb, torch.from_numpy(maps)).numpy()


def localize_split(split_dir: str | Path, data_root: str | Path, model: nn.Module, *, method: str = "cam",
                   scoremap_dir: str | Path | None = None, evaluate: bool = False,
                   mask_root: str | Path | None = None, batch_size: int = 32, device: str = "auto",
                   workers: int | None = None, image_size: int = 224, cam_curve_interval: float = 0.001,
                   iou_thresholds: Sequence[int] = (30, 50, 70), crf: bool = False, checkpoint: str | None = None,
                   quiet: bool = False, shard: tuple[int, int] | None = None,
                   shard_dir: str | Path | None = None) -> Summary:
    """GT-known score maps (224 x 224, bicubic + min-max) of every image of a WSOL split, written as
    ``<scoremap_dir>/<image_id>.npy`` (existing ones are kept: resume; ``scoremaps.json`` records the model,
    checkpoint, method and settings, and a folder holding maps of other settings is refused) and/or
    evaluated in the same pass.
    With ``crf``, each map is first refined by a dense CRF against the image at 224 x 224 (Bae et al.).
    ``shard = (K, N)`` takes only the images of shard K of N into ``shard_dir`` (its maps in
    ``shard_dir/scoremaps`` unless ``scoremap_dir`` is given, and with ``evaluate`` the metrics' summed states,
    which ``wsol localize merge`` adds up: :mod:`wsol.localize.shards`). The folders written are owned by this
    process while it runs (:mod:`wsol.locks`)."""
    from contextlib import ExitStack

    from wsol.locks import FolderLock

    if shard is not None:
        if shard_dir is None:
            raise WSOLError("--shard with --metadata needs --out DIR (the shard's folder: maps, metric states)")
        scoremap_dir = Path(shard_dir) / "scoremaps" if scoremap_dir is None else scoremap_dir
    with ExitStack() as locks:
        for folder, option in ((shard_dir, "--out"), (scoremap_dir, "--scoremaps")):
            if folder is not None and (option == "--out" or Path(folder).resolve() != Path(shard_dir or "").resolve()):
                locks.enter_context(FolderLock(folder, option))
        return _localize_split(split_dir, data_root, model, method=method, scoremap_dir=scoremap_dir,
                               evaluate=evaluate, mask_root=mask_root, batch_size=batch_size, device=device,
                               workers=workers, image_size=image_size, cam_curve_interval=cam_curve_interval,
                               iou_thresholds=iou_thresholds, crf=crf, checkpoint=checkpoint, quiet=quiet,
                               shard=shard, shard_dir=shard_dir)


def _localize_split(split_dir: str | Path, data_root: str | Path, model: nn.Module, *, method: str,
                    scoremap_dir: str | Path | None, evaluate: bool, mask_root: str | Path | None, batch_size: int,
                    device: str, workers: int | None, image_size: int, cam_curve_interval: float,
                    iou_thresholds: Sequence[int], crf: bool, checkpoint: str | None, quiet: bool,
                    shard: tuple[int, int] | None, shard_dir: str | Path | None) -> Summary:
    from wsol.data.metadata import Metadata
    from wsol.localize.shards import STATE_FILE, in_shard, save_states, write_shard_record
    from wsol.metrics import BoxAccuracy, PixelAP
    from wsol.metrics.box_accuracy import threshold_list

    if scoremap_dir is None and not evaluate:
        raise WSOLError("--metadata needs --scoremaps DIR and/or --evaluate")
    variant = MapVariant.parse(method)  # cam, gradcam, ... and cam+nwc, cam+pas as `wsol train` evaluates them
    threshold_list(cam_curve_interval)  # a bad interval fails before anything is written
    check_batching(batch_size, workers)
    dev = resolve_device(device)
    meta = Metadata.load(split_dir, mask_root)
    root = Path(data_root)
    if not root.is_dir():
        raise WSOLError(f"--data-root {root}: folder not found")
    k = int(model.num_classes)
    bad = [i for i in meta.image_ids if meta.labels[i] >= k]
    if bad:
        raise WSOLError(f"{meta.split_dir}: label {meta.labels[bad[0]]} of {bad[0]!r} >= the model's {k} classes")
    use_masks = evaluate and meta.has_masks and mask_root is not None
    if evaluate and not meta.has_boxes and not use_masks:
        raise WSOLError(f"{meta.split_dir}: has no boxes; give --mask-root to evaluate its masks")
    notes: list[str] = []
    from wsol.memory import fit_batch_size

    batch_size = fit_batch_size(model, image_size, batch_size, dev, notes)
    if evaluate and meta.has_masks and not use_masks:
        notes.append(f"{meta.split_dir} has masks: give --mask-root to evaluate PxAP too")
    ids = [meta.image_ids[i] for i in in_shard(meta.image_ids, shard)]
    shard_ids = list(ids)
    if scoremap_dir is not None:
        maps_dir = Path(scoremap_dir)
        if maps_dir.exists() and not maps_dir.is_dir():
            raise WSOLError(f"--scoremaps {maps_dir}: exists and is not a folder")
        has_maps = maps_dir.is_dir() and next(maps_dir.rglob("*.npy"), None) is not None
        config = {"model": getattr(model, "name", type(model).__name__), "checkpoint": _checkpoint_id(checkpoint),
                  "method": method, "crf": crf, "image_size": image_size}
        claim_folder(maps_dir / SCOREMAPS_RECORD, config, has_maps, "--scoremaps")
        if not evaluate:
            ids = [i for i in ids if not (maps_dir / f"{i}.npy").is_file()]
    summary = Summary(resumed=len(shard_ids) - len(ids), notes=notes)
    # the reference's eval pipeline, bit for bit: full decode, PIL bilinear to (S, S), ToTensor, Normalize
    dataset = ImageSource([root / i for i in ids], image_size, "bilinear", display_size=0, exact=True)
    labels = torch.tensor([meta.labels[i] for i in ids], dtype=torch.long)
    gt_boxes = meta.resized_boxes(224) if (evaluate and meta.has_boxes) else None
    box_metric = BoxAccuracy(cam_curve_interval, iou_thresholds) if gt_boxes is not None else None
    pixel_metric = PixelAP(cam_curve_interval) if use_masks else None
    model = model.to(dev).eval()  # not the folded inference copy: the model exactly as `wsol train` evaluates it

    def write(result: BatchResult) -> None:
        batch_ids = [ids[i] for i in result.batch["indices"]]
        maps = to_score_maps(result.maps, (224, 224)).astype(np.float32)
        if crf:
            maps = crf_on_images(result.batch["images"], maps)
        if variant.pas:
            maps = pas_normalize(maps)
        if scoremap_dir is not None:
            for image_id, m in zip(batch_ids, maps):
                save_npy(Path(scoremap_dir) / f"{image_id}.npy", m)
        if box_metric is not None:
            box_metric.update(maps, [gt_boxes[i] for i in batch_ids], logits=result.logits,
                              labels=result.targets, names=batch_ids)
        if pixel_metric is not None:
            pairs = [meta.load_mask(i, mask_root) for i in batch_ids]
            pixel_metric.update(maps, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]),
                                names=batch_ids)

    progress = Progress(len(ids), quiet, "score maps")

    def on_batch(n: int, errors: list[tuple[int, str]], _value: Any) -> None:
        summary.processed += n
        summary.skipped.extend((ids[i], reason) for i, reason in errors)
        progress.advance(n + len(errors))

    start = time.perf_counter()
    try:
        if ids:
            # one writer thread: metric updates are not thread-safe
            localize_loader(model, _loader(dataset, batch_size, default_workers(dev) if workers is None else workers,
                                           dev), write, method=variant.method, method_options=variant.options,
                            targets=lambda b: labels[b["indices"]], device=dev, on_batch=on_batch, threads=1)
    finally:
        summary.seconds = time.perf_counter() - start
        progress.close()
    if summary.skipped and evaluate:
        first = summary.skipped[0]
        raise WSOLError(f"{first[0]}: unreadable ({first[1]}); the protocol needs every image of the split"
                        + (f" ({len(summary.skipped)} unreadable)" if len(summary.skipped) > 1 else ""))
    if evaluate:
        metrics: dict[str, Any] = {"split": str(meta.split_dir), "method": method, "crf": crf,
                                   "model": getattr(model, "name", ""), "num_images": len(ids)}
        if box_metric is not None:
            metrics["boxes"] = box_metric.compute()
        if pixel_metric is not None:
            metrics["masks"] = pixel_metric.compute()
        summary.metrics = metrics
    if shard is not None and shard_dir is not None:
        states = {name: metric.state_arrays() for name, metric in (("boxes", box_metric), ("masks", pixel_metric))
                  if metric is not None}
        if evaluate:
            save_states(Path(shard_dir) / STATE_FILE, states)
        position = {image_id: i for i, image_id in enumerate(meta.image_ids)}
        write_shard_record(Path(shard_dir), shard, "split", {i: position[i] for i in shard_ids},
                           split=str(meta.split_dir), method=method, crf=crf, model=getattr(model, "name", ""),
                           evaluate=evaluate, cam_curve_interval=cam_curve_interval,
                           iou_thresholds=list(iou_thresholds), num_images=len(shard_ids))
    return summary


__all__ = [
    "BatchResult", "ImageSource", "LocalizeOptions", "ResultsLog", "Summary", "boxes_with_scores",
    "collate_images", "load_model", "localize_images", "localize_loader",
    "localize_split", "preprocessing", "resolve_device", "resolve_target", "run_model", "scale_boxes",
]
