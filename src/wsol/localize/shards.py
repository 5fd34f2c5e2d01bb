"""``wsol localize --shard K/N`` and ``wsol localize merge``: one localization split across processes, GPUs
or machines, and joined back into exactly what one run writes.

A shard takes the inputs whose key (an image's path relative to the folder given, or a split's image id)
hashes to K modulo N (SHA-1 of the key's UTF-8 bytes): the same split on any machine, whatever the order
the files are found in, and about 1/N of the inputs each. Each shard writes its own output folder and a
``shard.json``; ``merge`` checks that the shards are K = 0..N-1 of one run with the same settings and joins
them: ``results.jsonl`` in the single run's order, ``overlays/``, ``maps/``, ``skipped.jsonl`` and the page
for folders; the score maps and the summed metric states (the metrics' counters add up) for WSOL splits.
Files are hard-linked into the merged folder when the file system allows it, else copied.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsol.errors import WSOLError
from wsol.files import json_text, plain, write_bytes, write_text
from wsol.locks import FolderLock

SHARD_RECORD = "shard.json"
STATE_FILE = "metric_state.npz"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (0 <= K < N) -> ``(K, N)``; None stays None."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    try:
        index, count = int(k), int(n)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise WSOLError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4 (K is 0-based, as "
                        "$SLURM_ARRAY_TASK_ID from --array=0-3 or torchrun's $RANK)")
    return index, count


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of an input key: a hash of its bytes, the same on every machine and run."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(keys: Sequence[str], shard: tuple[int, int] | None) -> list[int]:
    """Positions of the keys that belong to ``shard`` (all of them without one)."""
    if shard is None:
        return list(range(len(keys)))
    return [i for i, key in enumerate(keys) if shard_of(key, shard[1]) == shard[0]]


def select_found(found: Any, shard: tuple[int, int] | None) -> dict[str, int]:
    """Keep only ``shard``'s files of a :class:`wsol.data.images.Discovered` (in place; the ignored files
    too, by their path), and return each kept key's position among all the files found."""
    keep = in_shard(found.keys, shard)
    order = {found.keys[i]: i for i in keep}
    if shard is not None:
        found.files = [found.files[i] for i in keep]
        found.keys = [found.keys[i] for i in keep]
        found.ignored = [p for p in found.ignored if shard_of(str(p), shard[1]) == shard[0]]
    return order


def write_shard_record(out: Path, shard: tuple[int, int], mode: str, order: dict[str, int],
                       **extra: Any) -> None:
    """``shard.json``: which shard of how many, the mode (images or split), and each of its inputs' position
    in the whole run (so that merge restores the single run's order)."""
    write_text(out / SHARD_RECORD, json_text(plain({"shard": shard[0], "of": shard[1], "mode": mode,
                                                    "order": order, **extra})) + "\n")


def save_states(path: Path, states: dict[str, dict[str, np.ndarray]]) -> None:
    """Metric states (``{"boxes": {...}, "masks": {...}}``) as one ``.npz``, atomically."""
    arrays = {f"{metric}/{name}": np.asarray(value)
              for metric, state in states.items() for name, value in state.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def load_states(path: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                metric, _, name = key.partition("/")
                out.setdefault(metric, {})[name] = data[key]
    except (OSError, ValueError) as error:
        raise WSOLError(f"{path}: not a readable metric state ({error})") from None
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WSOLError(f"{path.parent}: not a shard output (no {path.name}; was it written with --shard K/N?)"
                        ) from None
    except (OSError, ValueError) as error:
        raise WSOLError(f"{path}: unreadable ({error})") from None
    if not isinstance(value, dict):
        raise WSOLError(f"{path}: not a JSON object")
    return value


def _link_tree(src: Path, dst: Path) -> int:
    """Hard-link (else copy) every file under ``src`` to the same place under ``dst``; returns the count."""
    count = 0
    for root, _dirs, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.startswith("."):
                continue
            source, dest = Path(root) / name, target / name
            if dest.exists():
                dest.unlink()
            try:
                os.link(source, dest)
            except OSError:
                shutil.copy2(source, dest)
            count += 1
    return count


def _check_shards(outs: Sequence[Path]) -> list[dict[str, Any]]:
    records = [_read_json(Path(out) / SHARD_RECORD) for out in outs]
    counts = {r.get("of") for r in records}
    modes = {r.get("mode") for r in records}
    if len(counts) != 1 or len(modes) != 1:
        raise WSOLError(f"{outs[0]} and the other shards: not shards of one run (shard counts "
                        f"{sorted(map(str, counts))}, modes {sorted(map(str, modes))})")
    count = counts.pop()
    indices = sorted(r.get("shard") for r in records)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        extra = [i for i in set(indices) if indices.count(i) > 1]
        raise WSOLError(f"merge needs shards 0..{count - 1} of {count} once each: "
                        + (f"missing {', '.join(map(str, missing))}" if missing else f"shard {extra[0]} given twice"))
    return records


def _same_settings(outs: Sequence[Path], name: str) -> dict[str, Any]:
    """The settings file ``name`` (run.json, scoremaps.json) of the shards: they must agree."""
    first = _read_json(Path(outs[0]) / name)
    for out in outs[1:]:
        other = _read_json(Path(out) / name)
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise WSOLError(f"{out}: made with {key}={other.get(key)!r}, but {outs[0]} with "
                                f"{first.get(key)!r}: not shards of one run")
    return first


def merge(outs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Join shard outputs into ``out`` (see the module docstring); returns a summary ``{"mode", "images",
    ...}`` (with ``"metrics"`` for an evaluated split)."""
    outs = [Path(o) for o in outs]
    if not outs:
        raise WSOLError("merge: give the shard output folders, e.g. wsol localize merge out/shard-* --out out/all")
    out = Path(out)
    if any(o.resolve() == out.resolve() for o in outs):
        raise WSOLError(f"--out {out}: is one of the shards; merge into a new folder")
    records = _check_shards(outs)
    with FolderLock(out, "--out"):
        locks = [FolderLock(o, "shard").acquire() for o in outs]  # no shard may still be writing
        try:
            if records[0]["mode"] == "split":
                return _merge_split(outs, records, out)
            return _merge_images(outs, records, out)
        finally:
            for lock in locks:
                lock.release()


def _merge_images(outs: list[Path], shards: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    from wsol.report.html import write_html

    config = _same_settings(outs, "run.json")
    order: dict[str, int] = {}
    for shard in shards:
        order.update(shard["order"])
    results: list[dict[str, Any]] = []
    skipped_lines: list[str] = []
    for shard_out in outs:
        path = shard_out / "results.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
                if line.strip():
                    try:
                        results.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise WSOLError(f"{path}: a torn line; rerun that shard to finish it first") from None
        skipped = shard_out / "skipped.jsonl"
        if skipped.is_file():
            skipped_lines += [line for line in skipped.read_text(encoding="utf-8").splitlines() if line.strip()]
        for sub in ("overlays", "maps"):
            if (shard_out / sub).is_dir():
                _link_tree(shard_out / sub, out / sub)
    results.sort(key=lambda r: order.get(r.get("id"), len(order)))
    write_text(out / "results.jsonl", "".join(json_text(r) + "\n" for r in results))
    write_text(out / "skipped.jsonl", "".join(line + "\n" for line in skipped_lines))
    write_text(out / "run.json", json.dumps(config, indent=1) + "\n")
    write_html(out / "index.html", results, title=f"wsol localize: {config['model']} / {config['method']}",
               summary=f"{len(results)} images, threshold {config['threshold']} x p{config['percentile']:g}")
    return {"mode": "images", "images": len(results), "skipped": len(skipped_lines), "out": str(out)}


def _merge_split(outs: list[Path], shards: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    from wsol.metrics.counts import BoxCounts, PixelCounts

    first = shards[0]
    for shard, shard_out in zip(shards[1:], outs[1:]):
        for key in ("split", "method", "crf", "model", "evaluate", "cam_curve_interval", "iou_thresholds"):
            if shard.get(key) != first.get(key):
                raise WSOLError(f"{shard_out}: made with {key}={shard.get(key)!r}, but {outs[0]} with "
                                f"{first.get(key)!r}: not shards of one run")
    maps = 0
    for shard_out in outs:
        if (shard_out / "scoremaps").is_dir():
            maps += _link_tree(shard_out / "scoremaps", out / "scoremaps")
    if maps:
        from wsol.localize.split import SCOREMAPS_RECORD

        config = _same_settings([o / "scoremaps" for o in outs], SCOREMAPS_RECORD)
        write_text(out / "scoremaps" / SCOREMAPS_RECORD, json.dumps(config, indent=1) + "\n")
    summary: dict[str, Any] = {"mode": "split", "images": sum(int(s.get("num_images", 0)) for s in shards),
                               "scoremaps": maps, "out": str(out)}
    if not first.get("evaluate"):
        return summary
    boxes = masks = None
    for shard_out in outs:
        states = load_states(shard_out / STATE_FILE)
        if "boxes" in states:
            boxes = boxes or BoxCounts(first["cam_curve_interval"], first["iou_thresholds"])
            boxes.add(states["boxes"])
        if "masks" in states:
            masks = masks or PixelCounts(first["cam_curve_interval"])
            masks.add(states["masks"])
    metrics: dict[str, Any] = {"split": first["split"], "method": first["method"], "crf": first["crf"],
                               "model": first["model"], "num_images": summary["images"]}
    if boxes is not None:
        metrics["boxes"] = boxes.compute()
    if masks is not None:
        metrics["masks"] = masks.compute()
    save_states(out / STATE_FILE, {k: m.state for k, m in (("boxes", boxes), ("masks", masks)) if m is not None})
    text = json.dumps(plain(metrics), indent=1)
    write_text(out / "metrics.json", text + "\n")
    summary["metrics"] = metrics
    return summary
