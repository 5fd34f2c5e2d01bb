"""How far CAM Back Again's own procedures (``--as-published``) are from wsol's corrected ``cam`` / ``pc1``.

    .venv/bin/python benchmarks/published_vs_corrected.py [PHOTOS...] [--checkpoint F] [--out results.md]

Default: the sample photos (``wsol samples``) and the embedded EfficientNet-Lite0. With the authors' weights,
e.g. ``--checkpoint replknet_31B1K384_CUB.pth`` and a few CUB photos, it measures the difference on the models
the paper published. Per photo and method: the mean absolute difference of the two 224 x 224 score maps (the
protocol's path: bicubic resize, min-max), the IoU of their boxes at the CAM paper's threshold 0.2, and for
PC1 whether the two frame tests chose a different orientation.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from wsol.cams import compute_cams
from wsol.data.images import find_images, load_image
from wsol.localize.pipeline import load_model, preprocessing
from wsol.maps.boxes import box_iou, boxes_from_map
from wsol.maps.normalize import to_score_maps
from wsol.samples import write_samples


def prepare(path: Path, model: torch.nn.Module) -> torch.Tensor:
    prep = preprocessing(model)
    image = load_image(path).convert("RGB").resize((prep["size"], prep["size"]), resample=2)  # bilinear
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(prep["mean"]).view(3, 1, 1), torch.tensor(prep["std"]).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def compare(model: torch.nn.Module, x: torch.Tensor, method: str) -> dict[str, float]:
    ours = compute_cams(model, x, None, method)
    theirs = compute_cams(model, x, ours.targets, method, as_published=True)
    a, b = to_score_maps(ours.maps)[0], to_score_maps(theirs.maps)[0]
    boxes_a, boxes_b = boxes_from_map(a, 0.2, components="largest"), boxes_from_map(b, 0.2, components="largest")
    iou = float(box_iou(boxes_a, boxes_b)[0, 0])
    row = {"mean_abs": float(np.abs(a - b).mean()), "box_iou": iou}
    if method == "pc1":  # the two differ only in the frame test: same first component, maybe opposite flips
        row["flip_differs"] = float(np.abs(a + b - 1).max() < 1e-4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(None, args.checkpoint).eval()
    with tempfile.TemporaryDirectory() as tmp:
        photos = find_images(args.photos) if args.photos else write_samples(tmp)
        lines = ["| photo | CAM mean abs diff | CAM box IoU | PC1 mean abs diff | PC1 box IoU | PC1 flip differs |",
                 "|---|---|---|---|---|---|"]
        for path in photos:
            x = prepare(path, model)
            cam, pc1 = compare(model, x, "cam"), compare(model, x, "pc1")
            lines.append(f"| {path.name} | {cam['mean_abs']:.3f} | {cam['box_iou']:.2f} | {pc1['mean_abs']:.3f} | "
                         f"{pc1['box_iou']:.2f} | {'yes' if pc1['flip_differs'] else 'no'} |")
    name = args.checkpoint.name if args.checkpoint else "the embedded EfficientNet-Lite0"
    text = f"Model: {name}\n\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
