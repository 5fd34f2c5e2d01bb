"""Throughput (images/s) of every wsol.cams method against a plain forward pass, pytorch-grad-cam and
torch-cam on the same model, batch and target layer, in one run.

    .venv/bin/python benchmarks/bench_cams.py --model resnet50 --batch 16 --size 224 --repeats 5

Targets are the top-1 predictions throughout. Times are the best of ``--repeats``; the plain forward is
re-measured next to every method, and ``t/fwd`` is the method's time over the best forward time.
pytorch-grad-cam's call always min-max normalises and resizes its maps to the input size in numpy (its
API cannot skip that), so that cost is part of its figure; torch-cam is called with ``normalized=False``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from wsol.cams import METHODS, compute_cams
from wsol.models import build_model

PGC = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
       "layercam": "LayerCAM", "eigencam": "EigenCAM"}
TORCHCAM = {"cam": "CAM", "gradcam": "GradCAM", "gradcampp": "GradCAMpp", "smoothgradcampp": "SmoothGradCAMpp",
            "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


def _time(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)  # best of N: the least disturbed by other load on a shared machine


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    # fcam needs a trained decoder: benchmarks/fcam_synth.py times it next to CAM
    p.add_argument("--methods", default=",".join(m for m in METHODS if m != "fcam"))
    p.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam and torch-cam")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        top1 = model(x).argmax(1).tolist()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    base = _time(forward, args.repeats, args.warmup, sync)
    ips = args.batch / base
    print(f"model={args.model} batch={args.batch} size={args.size} device={device} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'method':<16}{'wsol img/s':>12}{'t/fwd':>9}{'pgc img/s':>12}{'wsol/pgc':>10}"
          f"{'tcam img/s':>12}{'wsol/tcam':>11}", flush=True)
    print(f"{'forward':<16}{ips:>12.2f}{1.0:>9.2f}")
    results: dict[str, dict[str, float]] = {"forward": {"wsol": ips}}
    for name in args.methods.split(","):
        t = _time(lambda name=name: compute_cams(model, x, method=name), args.repeats, args.warmup, sync)
        base = min(base, _time(forward, args.repeats, 0, sync))
        row = {"wsol": args.batch / t, "time_over_forward": t / base}
        if not args.no_reference and name in PGC:
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            targets = [ClassifierOutputTarget(k) for k in top1]
            with getattr(pytorch_grad_cam, PGC[name])(model, [model.feature_layer]) as ext:
                tp = _time(lambda ext=ext, targets=targets: ext(x, targets), args.repeats, args.warmup, sync)
            model.zero_grad(set_to_none=True)
            row["pgc"] = args.batch / tp
        if not args.no_reference and name in TORCHCAM:
            import torchcam.methods as tcm

            kw = {"fc_layer": "head.fc"} if name == "cam" else {}
            with getattr(tcm, TORCHCAM[name])(model, "feature_layer", **kw) as ext:
                def run(ext=ext, name=name) -> None:
                    if name == "cam":
                        with torch.no_grad():
                            model(x)
                        ext(top1, normalized=False)
                    elif name == "smoothgradcampp":
                        model(x)
                        ext(top1, normalized=False)
                    else:
                        ext(top1, model(x), normalized=False)

                tt = _time(run, args.repeats, args.warmup, sync)
            model.zero_grad(set_to_none=True)
            row["tcam"] = args.batch / tt
        results[name] = row
        pgc = f"{row['pgc']:>12.2f}{row['wsol'] / row['pgc']:>10.2f}" if "pgc" in row else " " * 22
        tc = f"{row['tcam']:>12.2f}{row['wsol'] / row['tcam']:>11.2f}" if "tcam" in row else ""
        print(f"{name:<16}{row['wsol']:>12.2f}{t / base:>9.2f}{pgc}{tc}", flush=True)
    print(f"{'forward (best)':<16}{args.batch / base:>12.2f}")
    return results


if __name__ == "__main__":
    main()
