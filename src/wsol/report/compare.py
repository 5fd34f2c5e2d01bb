"""``wsol report``: several map methods of one or more models on a WSOL split, side by side on one HTML page.

For every (model, method) pair the GT-known score maps of the split are taken from an earlier ``wsol localize
--metadata --scoremaps`` run when its ``scoremaps.json`` records the same model, checkpoint, method, CRF and
image size and it holds a map for every image; otherwise they are computed by
:func:`wsol.localize.split.localize_split` into ``DIR/scoremaps/<model>/<method>/`` (resumable). The logits of
each model (for Top-1/Top-5 Loc and classification) come from one pass of the model's own map method, cached
in ``DIR/scoremaps/<model>/logits.npz``.

The maps are then evaluated as ``localize_split(..., evaluate=True)`` evaluates them (the same counters:
:func:`wsol.metrics.counts.box_hits`, ``box_result``, ``pixel_result``), for the split and per class, and
each map's box at its method's MaxBoxAcc threshold is scored against the GT
(:func:`~wsol.maps.boxes.boxes_from_map`, :func:`~wsol.maps.boxes.box_iou`) for the gallery and the
disagreement ranking (the spread of these IoUs across methods).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsol.errors import WSOLError
from wsol.files import plain, write_json

LOGITS_FILE = "logits.npz"
DEFAULT_GALLERY = 40


@dataclass
class ModelSpec:
    """One model of the report: a label, the loaded network and the checkpoint it came from (None: built)."""

    label: str
    net: Any
    checkpoint: str | None = None


@dataclass
class Entry:
    """One (model, method) column of the report."""

    key: str
    model: ModelSpec
    method: str
    scoremaps: Path | None = None
    reused: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    per_class: dict[int, dict[str, Any]] = field(default_factory=dict)
    box_state: dict[str, np.ndarray] | None = None
    pixel_state: dict[str, np.ndarray] | None = None
    ious: dict[str, float] = field(default_factory=dict)  # image id -> IoU of the box at the best threshold
    boxes: dict[str, list[int]] = field(default_factory=dict)  # image id -> that box (224 x 224 frame)


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``.+-_``)."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", text).strip("._") or "x"


def scoremap_config(model: ModelSpec, method: str, image_size: int) -> dict[str, Any]:
    """What ``localize_split`` records in ``scoremaps.json`` for these settings (CRF off)."""
    from wsol.localize.pipeline import checkpoint_id

    return {"model": getattr(model.net, "name", type(model.net).__name__),
            "checkpoint": checkpoint_id(model.checkpoint), "method": method, "crf": False,
            "image_size": int(image_size)}


def find_reusable(roots: Sequence[Path], config: dict[str, Any], ids: Sequence[str],
                  log: Callable[[str], None] = lambda _: None) -> Path | None:
    """The first folder under ``roots`` (each a ``--scoremaps`` folder or a folder holding some) whose
    ``scoremaps.json`` equals ``config`` and that has ``<id>.npy`` for every id; None if there is none."""
    from wsol.localize.split import SCOREMAPS_RECORD

    for root in roots:
        records = [root / SCOREMAPS_RECORD] if (root / SCOREMAPS_RECORD).is_file() else sorted(
            root.rglob(SCOREMAPS_RECORD))
        for record in records:
            try:
                old = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(old, dict) or any(old.get(k) != v for k, v in config.items()):
                continue
            missing = [i for i in ids if not (record.parent / f"{i}.npy").is_file()]
            if missing:
                log(f"{record.parent}: same settings but {len(missing)} score maps missing; not reused")
                continue
            return record.parent
    return None


def _split_loader(ids: Sequence[str], root: Path, image_size: int, batch_size: int, workers: int | None,
                  dev: Any) -> Any:
    from wsol.data.datasets import ImageSource, default_workers, image_loader

    dataset = ImageSource([root / i for i in ids], image_size, "bilinear", display_size=0, exact=True)
    return image_loader(dataset, batch_size, default_workers(dev) if workers is None else workers, dev)


def model_logits(model: ModelSpec, ids: Sequence[str], labels: Sequence[int], root: Path, folder: Path,
                 image_size: int, batch_size: int, device: str, workers: int | None) -> np.ndarray:
    """Logits (N, K) of the split's images, as ``localize_split`` feeds them to the metrics (the model's
    own map method, the reference's preprocessing); cached in ``folder/logits.npz`` with its settings."""
    import torch

    from wsol.localize.pipeline import default_map_method, localize_loader, resolve_device

    config = {**scoremap_config(model, default_map_method(model.net), image_size), "ids": list(ids)}
    cache = folder / LOGITS_FILE
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                if json.loads(str(data["config"])) == config:
                    return np.asarray(data["logits"])
        except (OSError, ValueError, KeyError):
            pass
    from wsol.maps.variants import MapVariant

    variant = MapVariant.parse(config["method"])
    dev = resolve_device(device)
    net = model.net.to(dev).eval()
    out: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    targets = torch.tensor(list(labels), dtype=torch.long)

    def write(result: Any) -> None:
        for row, index in enumerate(result.batch["indices"]):
            out[index] = result.logits[row].float().numpy()

    localize_loader(net, _split_loader(ids, root, image_size, batch_size, workers, dev), write,
                    method=variant.method, method_options=variant.options, targets=lambda b: targets[b["indices"]],
                    device=dev, threads=1, on_batch=lambda _n, errors, _v: failed.extend(errors))
    if failed:
        raise WSOLError(f"{ids[failed[0][0]]}: unreadable ({failed[0][1]}); the protocol needs every image")
    logits = np.stack([out[i] for i in range(len(ids))]).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    from wsol.files import replacing

    with replacing(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, logits=logits, config=np.array(json.dumps(config)))
    return logits


def _add(state: dict[str, np.ndarray], inc: dict[str, np.ndarray]) -> None:
    for name, value in inc.items():
        state[name] = state[name] + value


def evaluate_entry(entry: Entry, meta: Any, ids: Sequence[str], logits: np.ndarray, mask_root: Path | None,
                   cam_curve_interval: float, iou_thresholds: Sequence[int], batch_size: int = 64) -> None:
    """Metrics of the entry's saved maps (split and per class), then each image's box at the MaxBoxAcc
    threshold and its IoU with the GT (best over the GT boxes)."""
    from wsol.maps.boxes import box_iou, boxes_from_map
    from wsol.metrics.counts import (
        box_hits,
        box_increments,
        box_result,
        check_iou_thresholds,
        default_threads,
        empty_box_state,
        empty_pixel_state,
        pixel_counts,
        pixel_edges,
        pixel_result,
        threshold_list,
        topk_hits,
    )
    from wsol.metrics.scoremaps import load_score_map

    thresholds = threshold_list(cam_curve_interval)
    ious = check_iou_thresholds(iou_thresholds)
    edges = pixel_edges(thresholds)
    labels = np.array([meta.labels[i] for i in ids])
    top1, top5 = topk_hits(logits, labels)
    gt = meta.resized_boxes() if meta.has_boxes else None
    use_masks = meta.has_masks and mask_root is not None
    classes = sorted(set(labels.tolist()))
    box_states = {c: empty_box_state(len(thresholds), len(ious)) for c in [-1, *classes]} if gt else {}
    pixel_states = ({c: empty_pixel_state(len(edges) - 1) for c in [-1, *classes]} if use_masks else {})
    threads = default_threads()
    assert entry.scoremaps is not None
    for start in range(0, len(ids), batch_size):
        batch = list(ids[start:start + batch_size])
        rows = np.arange(start, start + len(batch))
        names = [str(entry.scoremaps / f"{i}.npy") for i in batch]
        maps = np.stack([load_score_map(Path(n)) for n in names])
        if gt is not None:
            largest, every = box_hits(maps, [gt[i] for i in batch], thresholds, ious, threads, names)
            for c in [-1, *classes]:
                sel = np.ones(len(batch), bool) if c == -1 else labels[rows] == c
                if sel.any():
                    _add(box_states[c], box_increments(largest[sel], every[sel], top1[rows][sel], top5[rows][sel]))
        if use_masks:
            pairs = [meta.load_mask(i, mask_root) for i in batch]
            fg, ign = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            for c in [-1, *classes]:
                sel = np.ones(len(batch), bool) if c == -1 else labels[rows] == c
                if sel.any():
                    counts = pixel_counts(maps[sel], fg[sel], ign[sel], edges, cam_curve_interval,
                                          [n for n, s in zip(names, sel) if s])
                    _add(pixel_states[c], {"fg_hist": counts[0], "bg_hist": counts[1],
                                           "num_images": np.int64(int(sel.sum()))})

    def result(c: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if gt is not None:
            out.update(box_result(box_states[c], thresholds, ious, cam_curve_interval))
        if use_masks:
            try:
                out.update(pixel_result(pixel_states[c], edges, cam_curve_interval))
            except WSOLError:  # a class whose masks hold no foreground: PxAP is undefined there
                if c == -1:
                    raise
        return out

    entry.metrics = result(-1)
    entry.per_class = {c: result(c) for c in classes}
    entry.box_state = box_states.get(-1)
    entry.pixel_state = pixel_states.get(-1)
    if gt is None:
        return
    best = float(entry.metrics["MaxBoxAcc_threshold"])
    for image_id in ids:
        score_map = load_score_map(entry.scoremaps / f"{image_id}.npy")
        box = boxes_from_map(np.asarray(score_map), best, components="largest")[:1]
        entry.boxes[image_id] = [int(v) for v in box[0]]
        entry.ious[image_id] = float(box_iou(box, np.asarray(gt[image_id])).max())


def default_methods(net: Any) -> list[str]:
    """cam, cam+pas and gradcam for a CAM model; the checkpoint's own map method otherwise (ACoL, SPG)."""
    from wsol.localize.pipeline import default_map_method

    method = default_map_method(net)
    return ["cam", "cam+pas", "gradcam"] if method == "cam" else [method]


def compare(split_dir: str | Path, data_root: str | Path, models: Sequence[ModelSpec],
            methods: Sequence[str] | None, out: str | Path, *, mask_root: str | Path | None = None,
            reuse: Sequence[str | Path] = (), image_size: int | None = None, batch_size: int = 32,
            device: str = "auto", workers: int | None = None, cam_curve_interval: float = 0.001,
            iou_thresholds: Sequence[int] = (30, 50, 70), gallery: int = DEFAULT_GALLERY, quiet: bool = True,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Write the report page ``out`` (``index.html``; a folder means ``folder/index.html``) and its images,
    plots, ``report.json`` and computed score maps beside it. Returns the report's record."""
    from wsol.data.metadata import Metadata
    from wsol.localize.pipeline import preprocessing
    from wsol.localize.split import localize_split
    from wsol.maps.variants import MapVariant
    from wsol.metrics.counts import threshold_list

    page = Path(out)
    page = page / "index.html" if page.is_dir() or not page.suffix else page
    if page.suffix.lower() not in (".html", ".htm"):
        raise WSOLError(f"--out {page}: the report is an .html file (or a folder for its index.html)")
    folder = page.parent
    if methods is not None:
        if not methods:
            raise WSOLError("--methods: no method given")
        for m in methods:
            MapVariant.parse(m)  # one line for an unknown method before anything runs
    threshold_list(cam_curve_interval)
    if gallery < 0:
        raise WSOLError(f"--gallery must be >= 0, got {gallery}")
    if not models:
        raise WSOLError("no model to report on")
    meta = Metadata.load(split_dir, mask_root)
    root = Path(data_root)
    if not root.is_dir():
        raise WSOLError(f"--data-root {root}: folder not found")
    if not meta.has_boxes and not (meta.has_masks and mask_root is not None):
        raise WSOLError(f"{meta.split_dir}: has no boxes; give --mask-root to evaluate its masks")
    if meta.has_masks and mask_root is not None:
        meta.check_mask_files(mask_root)
    reuse_roots = [Path(r) for r in reuse]
    for r in reuse_roots:
        if not r.is_dir():
            raise WSOLError(f"--scoremaps {r}: folder not found")
    ids = list(meta.image_ids)
    labels = [meta.labels[i] for i in ids]
    labels_seen: set[str] = set()
    entries: list[Entry] = []
    logits: dict[str, np.ndarray] = {}
    for spec in models:
        base, n = spec.label, 2
        while spec.label in labels_seen:
            spec.label, n = f"{base}-{n}", n + 1
        labels_seen.add(spec.label)
        k = int(spec.net.num_classes)
        if max(labels) >= k:
            bad = next(i for i in ids if meta.labels[i] >= k)
            raise WSOLError(f"{meta.split_dir}: label {meta.labels[bad]} of {bad!r} >= the {k} classes of model "
                            f"{spec.label!r}")
        size = int(image_size or preprocessing(spec.net)["size"])
        model_dir = folder / "scoremaps" / slug(spec.label)
        for method in (methods or default_methods(spec.net)):
            key = method if len(models) == 1 else f"{spec.label} / {method}"
            entry = Entry(key=key, model=spec, method=method)
            config = scoremap_config(spec, method, size)
            found = find_reusable(reuse_roots + [folder / "scoremaps"], config, ids, log)
            if found is not None:
                entry.scoremaps, entry.reused = found, True
                log(f"{key}: reusing the score maps in {found}")
            else:
                entry.scoremaps = model_dir / slug(method)
                log(f"{key}: computing score maps into {entry.scoremaps}")
                localize_split(split_dir, root, spec.net, method=method, scoremap_dir=entry.scoremaps,
                               batch_size=batch_size, device=device, workers=workers, image_size=size,
                               checkpoint=spec.checkpoint, quiet=quiet)
            entries.append(entry)
        logits[spec.label] = model_logits(spec, ids, labels, root, model_dir, size, batch_size, device, workers)
    for entry in entries:
        evaluate_entry(entry, meta, ids, logits[entry.model.label], Path(mask_root) if mask_root else None,
                       cam_curve_interval, iou_thresholds)
    from wsol.report.compare_page import write_report

    record = write_report(page, meta, root, entries, logits, gallery=gallery, class_names=_class_names(meta, models),
                          cam_curve_interval=cam_curve_interval, iou_thresholds=list(iou_thresholds))
    write_json(folder / "report.json", plain(record))
    return record


def _class_names(meta: Any, models: Sequence[ModelSpec]) -> list[str]:
    """Names of the split's classes: its ``class_names.txt``, else the first model's, else ``class <i>``."""
    from wsol.data.metadata import read_class_names

    k = max(meta.labels.values()) + 1
    names = read_class_names(Path(meta.split_dir).parent / "class_names.txt")
    names = names or getattr(models[0].net, "class_names", None)
    return list(names) if names and len(names) >= k else [f"class {i}" for i in range(k)]


__all__ = ["Entry", "ModelSpec", "compare", "default_methods", "evaluate_entry", "find_reusable", "model_logits",
           "scoremap_config"]
