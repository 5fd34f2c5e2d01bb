"""Synthetic WSOL baseline: generate the benchmark, train the CPU recipes (GAP and TAP heads), print the table.

    .venv/bin/python benchmarks/synth_baseline.py [--data data/synth] [--out runs/synth_baseline]

For each recipe (configs/synth_*.yaml) it trains with `wsol.train.run.train`, tests the selected checkpoint on
the test split with CAM, CAM+NWC, CAM with PaS, PC1 and Grad-CAM (GT-known score maps at 224), prints a
markdown table (classification top-1, MaxBoxAcc, MaxBoxAccV2, PxAP), writes it with the command that made it
to ``benchmarks/results/synth_baseline.md`` (unless ``--no-save``) and writes overlays of plain CAM with the GT
boxes (green) and the MaxBoxAcc box at the best threshold (red) to ``<out>/overlay_<recipe>.png``.
A recipe whose ``test_metrics.json`` exists is not trained again. The dataset is (re)generated with the
default ``SynthConfig`` when ``--data`` holds none or one made with other knobs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch

from wsol.data.metadata import Metadata
from wsol.data.synth import SynthConfig, generate, is_current
from wsol.maps.boxes import boxes_from_map
from wsol.maps.variants import MapVariant
from wsol.train.config import load_config
from wsol.train.data import build_transforms
from wsol.train.run import load_checkpoint_model, train

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["cam", "cam+nwc", "cam+pas", "pc1", "gradcam"]
LABELS = {"cam": "CAM", "cam+nwc": "CAM+NWC", "cam+pas": "CAM, PaS", "pc1": "PC1", "gradcam": "Grad-CAM"}


def overlay(run: Path, data: Path, config_path: Path, out_png: Path, count: int = 8) -> None:
    """CAM heatmaps of the first test images of each class, GT boxes green, the best-threshold box red."""
    result = json.loads((run / "test_metrics.json").read_text())
    tau = result["test"]["cam"].get("MaxBoxAcc_threshold", 0.2)
    model = load_checkpoint_model(result["tested_checkpoint"])
    config = load_config(config_path, [f"data.root={data / 'images'}", f"data.metadata={data / 'metadata'}"])
    _, tf = build_transforms(config, model.data_config["mean"], model.data_config["std"])
    meta = Metadata.load(data / "metadata" / "test")
    boxes = meta.resized_boxes()
    per_class = max(len(meta) // max(meta.num_classes, 1), 1)
    ids = meta.image_ids[:: max(per_class // 2, 1)][:count]
    from PIL import Image

    images = torch.stack([tf(Image.open(data / "images" / i).convert("RGB")) for i in ids])
    labels = torch.tensor([meta.labels[i] for i in ids])
    variant = MapVariant.parse("cam")
    raw, _ = variant.raw_maps(model, images, labels)
    maps = variant.score_maps(raw)
    tiles = []
    for image_id, score in zip(ids, maps):
        rgb = cv2.resize(np.asarray(Image.open(data / "images" / image_id).convert("RGB")), (224, 224))
        heat = cv2.applyColorMap((score * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        tile = (0.5 * rgb + 0.5 * heat).astype(np.uint8)
        for x0, y0, x1, y1 in boxes[image_id]:
            cv2.rectangle(tile, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
        for x0, y0, x1, y1 in boxes_from_map(score, tau, components="largest"):
            cv2.rectangle(tile, (int(x0), int(y0)), (int(x1), int(y1)), (255, 0, 0), 2)
        tiles.append(np.concatenate([rgb, tile], axis=0))
    grid = np.concatenate(tiles, axis=1)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), grid[..., ::-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synth")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "synth_baseline")
    parser.add_argument("--configs", nargs="+", type=Path,
                        default=[ROOT / "configs" / "synth_gap.yaml", ROOT / "configs" / "synth_tap.yaml"])
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/synth_baseline.md")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = parser.parse_args()
    started = time.time()
    if not is_current(args.data, SynthConfig()):
        t = time.time()
        generate(SynthConfig(), args.data, overwrite=True)
        print(f"generated {args.data} in {time.time() - t:.0f}s")
        for config_path in args.configs:  # runs trained on the former data are stale
            shutil.rmtree(args.out / config_path.stem, ignore_errors=True)
    rows = []
    seconds = {}
    for config_path in args.configs:
        name = config_path.stem
        run = args.out / name
        if not (run / "test_metrics.json").is_file():
            config = load_config(config_path, [
                f"data.root={args.data / 'images'}", f"data.metadata={args.data / 'metadata'}",
                f"data.mask_root={args.data / 'masks'}", f"trainer.out_dir={run}", "trainer.progress_bar=false",
                *args.overrides])
            t = time.time()
            last = run / "checkpoints" / "last.ckpt"
            train(config, resume=last.is_file(), test_methods=METHODS, quiet=True)
            seconds[name] = time.time() - t
            print(f"{name}: trained and tested in {seconds[name]:.0f}s")
        result = json.loads((run / "test_metrics.json").read_text())
        overlay(run, args.data, config_path, args.out / f"overlay_{name}.png")
        top1 = result["test"]["classification"]["top1_cls"]
        for spec in METHODS:
            entry = result["test"][spec]
            rows.append((name, LABELS[spec], top1, entry["MaxBoxAcc"], entry["MaxBoxAccV2"], entry["PxAP"]))
        rows.append((name, "(fit time, s)", result["fit_seconds"], float("nan"), float("nan"), float("nan")))
    lines = ["| recipe | map | top-1 cls | MaxBoxAcc | MaxBoxAccV2 | PxAP |", "|---|---|---|---|---|---|"]
    for name, label, top1, acc, v2, pxap in rows:
        if label.startswith("("):
            total = f", fit + test {seconds[name]:.0f} s" if name in seconds else ""
            lines.append(f"| {name} | fit time | {top1:.0f} s{total} | | | |")
        else:
            lines.append(f"| {name} | {label} | {top1:.1f} | {acc:.1f} | {v2:.1f} | {pxap:.1f} |")
    table = "\n".join(lines)
    test = Metadata.load(args.data / "metadata" / "test")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/synth_baseline.py", *sys.argv[1:]])
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(SynthConfig()).items())
    note = (f"\nSynthetic benchmark (`wsol data synth`, default knobs: {knobs}); test split, {len(test)} images, "
            "GT-known score maps at 224 x 224, MaxBoxAcc at IoU 50, MaxBoxAccV2 = mean over IoU 30/50/70, "
            "threshold step 0.01; the checkpoint of each recipe is chosen on the val split by MaxBoxAccV2. "
            f"CPU ({torch.get_num_threads()} threads); whole script {time.time() - started:.0f} s.\n\n"
            f"Command: `{command}`\n")
    print("\n" + table + "\n" + note)
    if not args.no_save:
        out_md = ROOT / "benchmarks" / "results" / "synth_baseline.md"
        out_md.parent.mkdir(parents=True, exist_ok=True)
        old = out_md.read_text(encoding="utf-8") if out_md.is_file() else ""
        kept = old[old.index("\n## Notes"):] if "\n## Notes" in old else ""  # hand-written analysis stays
        out_md.write_text("# CAM baselines on the synthetic benchmark\n\n" + table + "\n" + note + kept,
                          encoding="utf-8")


if __name__ == "__main__":
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    main()
