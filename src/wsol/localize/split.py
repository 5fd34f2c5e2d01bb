"""``wsol localize --metadata SPLIT``: the GT-known score maps of a WSOL split, saved under the reference
naming and/or evaluated in the same pass (resumable, shardable)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsol.data.datasets import ImageSource, default_workers, image_loader
from wsol.errors import WSOLError
from wsol.files import save_npy
from wsol.localize.pipeline import (
    BatchResult,
    Progress,
    Summary,
    check_batching,
    checkpoint_id,
    claim_folder,
    localize_loader,
    open_split,
    resolve_device,
)
from wsol.maps.crf import crf_on_images
from wsol.maps.normalize import pas_normalize, to_score_maps
from wsol.maps.variants import MapVariant

SCOREMAPS_RECORD = "scoremaps.json"  # in a --scoremaps folder: the settings its maps were made with


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
    from wsol.localize.shards import STATE_FILE, in_shard, save_states, write_shard_record
    from wsol.metrics.counts import threshold_list
    from wsol.metrics.split import SplitEvaluator

    if scoremap_dir is None and not evaluate:
        raise WSOLError("--metadata needs --scoremaps DIR and/or --evaluate")
    variant = MapVariant.parse(method)  # cam, gradcam, ... and cam+nwc, cam+pas as `wsol train` evaluates them
    threshold_list(cam_curve_interval)  # a bad interval fails before anything is written
    check_batching(batch_size, workers)
    dev = resolve_device(device)
    meta, root = open_split(split_dir, data_root, mask_root)
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
        maps_dir = Path(scoremap_dir)  # made (or refused when not a folder) by the caller's FolderLock
        has_maps = maps_dir.is_dir() and next(maps_dir.rglob("*.npy"), None) is not None
        config = {"model": getattr(model, "name", type(model).__name__), "checkpoint": checkpoint_id(checkpoint),
                  "method": method, "crf": crf, "image_size": image_size}
        claim_folder(maps_dir / SCOREMAPS_RECORD, config, has_maps, "--scoremaps")
        if not evaluate:
            ids = [i for i in ids if not (maps_dir / f"{i}.npy").is_file()]
    summary = Summary(resumed=len(shard_ids) - len(ids), notes=notes)
    # the reference's eval pipeline, bit for bit: full decode, PIL bilinear to (S, S), ToTensor, Normalize
    dataset = ImageSource([root / i for i in ids], image_size, "bilinear", display_size=0, exact=True)
    labels = torch.tensor([meta.labels[i] for i in ids], dtype=torch.long)
    evaluator = (SplitEvaluator(meta, mask_root, cam_curve_interval=cam_curve_interval,
                                iou_thresholds=iou_thresholds) if evaluate else None)
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
        if evaluator is not None:
            evaluator.update(batch_ids, maps, result.logits, result.targets)

    progress = Progress(len(ids), quiet, "score maps")

    def on_batch(n: int, errors: list[tuple[int, str]], _value: Any) -> None:
        summary.processed += n
        summary.skipped.extend((ids[i], reason) for i, reason in errors)
        progress.advance(n + len(errors))

    start = time.perf_counter()
    try:
        if ids:
            # one writer thread: metric updates are not thread-safe
            loader = image_loader(dataset, batch_size, default_workers(dev) if workers is None else workers, dev)
            localize_loader(model, loader, write, method=variant.method, method_options=variant.options,
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
        metrics.update(evaluator.compute())  # type: ignore[union-attr]
        summary.metrics = metrics
    if shard is not None and shard_dir is not None:
        states = {name: metric.state_arrays() for name, metric in evaluator.metrics.items()} if evaluator else {}
        if evaluate:
            save_states(Path(shard_dir) / STATE_FILE, states)
        position = {image_id: i for i, image_id in enumerate(meta.image_ids)}
        write_shard_record(Path(shard_dir), shard, "split", {i: position[i] for i in shard_ids},
                           split=str(meta.split_dir), method=method, crf=crf, model=getattr(model, "name", ""),
                           evaluate=evaluate, cam_curve_interval=cam_curve_interval,
                           iou_thresholds=list(iou_thresholds), num_images=len(shard_ids))
    return summary
