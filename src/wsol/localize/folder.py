"""``wsol localize PATH...``: maps, boxes, overlays and an HTML page for folders of images (resumable).

Boxes: the target class's raw map is resized bicubically to the display size (the image's aspect, longest
side at most 512 px, never above the original), min-max normalised, thresholded with
:func:`wsol.maps.boxes.boxes_from_map` (``threshold`` x the ``percentile``-th value of the map), and
scaled to original pixels. A box's ``score`` is the MEAN map value inside it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsol.data.datasets import DISPLAY_SIZE, ImageSource, default_workers, image_loader
from wsol.data.images import find_image_files
from wsol.errors import WSOLError
from wsol.files import json_text, save_npy, write_text
from wsol.localize.pipeline import (
    BatchResult,
    Progress,
    Summary,
    check_batching,
    checkpoint_id,
    claim_folder,
    class_names_of,
    localize_loader,
    preprocessing,
    resolve_device,
    resolve_target,
)
from wsol.maps.boxes import boxes_with_scores, scale_boxes
from wsol.maps.crf import crf_on_images
from wsol.maps.normalize import minmax_normalize, resize_map
from wsol.maps.variants import MapVariant
from wsol.models.inference import inference_copy


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


def run_config(options: LocalizeOptions, model: nn.Module, checkpoint: str | None) -> dict[str, Any]:
    return {"model": getattr(model, "name", type(model).__name__), "checkpoint": checkpoint_id(checkpoint),
            "method": options.method, "target": str(options.target), "threshold": options.threshold,
            "crf": options.crf, "save_maps": options.save_maps,
            "percentile": options.percentile, "boxes": options.boxes, "image_size": options.image_size}


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
    out = Path(out_dir)  # made (or refused when not a folder) by the caller's FolderLock
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
    config = run_config(options, model, checkpoint)
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
            localize_loader(model, image_loader(dataset, options.batch_size, workers, device), write,
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
