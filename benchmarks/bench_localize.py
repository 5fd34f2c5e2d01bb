"""End-to-end images/s of ``wsol localize`` against a plain timm forward pass over the same images, in one run.

    .venv/bin/python benchmarks/bench_localize.py --images 192 --batch 32 [--repeats 3] [--device cuda] [--workers 2]

A folder of JPEG photos (the scikit-image samples, re-encoded at their sizes with small crops so every file
differs) is written to a temporary folder. The baselines decode them all first (outside the timing) and time
only forward passes under ``torch.inference_mode`` on the decoded, normalised batches:

- ``forward_untuned_malloc``: ``timm.create_model('tf_efficientnet_lite0')`` before
  :func:`wsol.runtime.tune_cpu_allocator`, i.e. what plain timm code gets in a default Python process;
- ``forward`` (the baseline of ``ratio``, the issue's "plain timm forward pass"): the same model after the
  tuning, which every ``wsol`` command applies first and which from then on speeds up every forward pass in
  the process, both sides alike;
- ``forward_as_wsol_runs_it``: the embedded model (the same architecture) as ``wsol localize`` runs it,
  :func:`wsol.models.inference.inference_copy` (norms folded, channels-last): the baseline of
  ``ratio_to_wsol_forward``, i.e. how much of the end-to-end time is the model itself.

``wsol localize`` is timed from the first image read to ``index.html`` written: decoding (in the main process
on a CPU with fewer than 4 cores, else DataLoader workers; ``--workers`` overrides), the CAM pass, boxes,
JPEG overlays, results.jsonl and the page; models are built before timing. The sides are timed alternately,
``--repeats`` times each, and the best time of each is kept (other load on a shared machine hits all alike).
Goal: ratio >= 0.8 on the CPU. On a GPU the forward pass outruns JPEG decoding, so there the ratios measure
the decoding workers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from wsol.data.datasets import ImageSource
from wsol.data.transforms import normalize_batch
from wsol.localize.folder import LocalizeOptions, localize_images
from wsol.models import EMBEDDED_MODEL, build_model
from wsol.models.inference import inference_copy
from wsol.runtime import tune_cpu_allocator
from wsol.samples import SAMPLES


def make_folder(root: Path, count: int) -> list[Path]:
    """``count`` distinct JPEGs cut from the sample photos."""
    photos = [np.asarray(load()) for load in SAMPLES.values()]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        cut = i // len(photos) % 20
        crop = photo[cut: photo.shape[0] - cut, cut: photo.shape[1] - cut]
        path = root / f"{i:05d}.jpg"
        Image.fromarray(crop).convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def timed_forward(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds of one timm forward pass over pre-decoded, preprocessed batches."""
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in batches:
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed_localize(model: torch.nn.Module, folder: Path, out: Path, options: LocalizeOptions, count: int) -> float:
    """Seconds of :func:`localize_images` end to end into a fresh ``out`` folder."""
    t0 = time.perf_counter()
    summary = localize_images([folder], out, model, options, quiet=True)
    seconds = time.perf_counter() - t0
    assert summary.processed == count, summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: wsol's)")
    parser.add_argument("--method", default="cam")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        paths = make_folder(root / "images", args.images)
        device = torch.device(args.device)
        source = ImageSource(paths, 224, "bicubic", display_size=0)
        images = normalize_batch(torch.stack([source[i]["image"] for i in range(len(source))]), (0.5,) * 3, (0.5,) * 3)
        batches = [images[i:i + args.batch].to(device) for i in range(0, len(images), args.batch)]
        plain = timm.create_model("tf_efficientnet_lite0", pretrained=False).to(device).eval()
        timed_forward(plain, batches[:1], device)  # warm-up
        untuned = len(paths) / min(timed_forward(plain, batches, device) for _ in range(args.repeats))
        tuned = tune_cpu_allocator()  # what every `wsol` command does first; from here on both sides have it
        model = build_model(EMBEDDED_MODEL, pretrained=True)
        # the forward pass as wsol runs it: batch norms folded, channels-last on the CPU
        fast = inference_copy(model, device)
        options = LocalizeOptions(method=args.method, batch_size=args.batch, device=args.device,
                                  workers=args.workers)
        timed_forward(plain, batches[:1], device)
        timed_forward(fast, batches[:1], device)
        # interleaved, best of N each: other load on a shared machine hits all sides alike
        fwd, fwd_wsol, loc = [], [], []
        for r in range(args.repeats):
            fwd.append(timed_forward(plain, batches, device))
            fwd_wsol.append(timed_forward(fast, batches, device))
            loc.append(timed_localize(model, root / "images", root / f"out{r}", options, len(paths)))
        n = len(paths)
        forward, forward_wsol, end_to_end = n / min(fwd), n / min(fwd_wsol), n / min(loc)
    result = {"images": args.images, "batch": args.batch, "device": args.device, "method": args.method,
              "threads": torch.get_num_threads(), "malloc_tuned": tuned,
              "forward_untuned_malloc_images_per_s": round(untuned, 2),
              "forward_images_per_s": round(forward, 2),
              "forward_as_wsol_runs_it_images_per_s": round(forward_wsol, 2),
              "localize_images_per_s": round(end_to_end, 2),
              "ratio": round(end_to_end / forward, 3),
              "ratio_to_wsol_forward": round(end_to_end / forward_wsol, 3)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
