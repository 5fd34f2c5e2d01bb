"""Issue 12's hand-made bugs, each planted in a scratch copy of the tree: do the tests of the code it touches fail?

Each bug is one text substitution in one source file (it must match as often as the bug says, so that a
refactor that moves the code makes this script say so instead of passing silently), and the test files that
cover that code. For each, the script copies ``src/`` and ``tests/`` to a scratch folder, plants the bug, runs
those tests with ``-x`` and records whether they failed (caught) and which test failed first. Not part of
CI (about 2 min in all).

Usage: ``.venv/bin/python scripts/seeded_bugs.py [NAME...] [--out benchmarks/results/seeded_bugs.md]``
(``--list`` names the bugs). Exit code 1 if any bug was not caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    what: str  # the bug, as a user would meet it
    file: str  # under src/wsol/
    old: str
    new: str
    tests: tuple[str, ...]
    count: int = 1  # how many times ``old`` occurs (all are replaced)


BUGS = [
    Bug("boxes-display-frame", "wsol localize writes boxes in the display frame, not in original pixels",
        "localize/folder.py", "options.boxes, (width, height))", "options.boxes, (dw, dh))",
        ("tests/test_pinned_localize.py", "tests/test_mutants_folder.py")),
    Bug("boxes-all-as-largest", "--boxes all gives only the largest box",
        "maps/boxes.py", 'if components == "largest" else boxes', "if components else boxes",
        ("tests/test_pinned_localize.py", "tests/test_mutants_boxes.py")),
    Bug("box-score-max", "a box is scored by the max of the map inside it, not the mean",
        "maps/boxes.py", "score = float(score_map[y0:y1 + 1, x0:x1 + 1].mean())",
        "score = float(score_map[y0:y1 + 1, x0:x1 + 1].max())",
        ("tests/test_pinned_localize.py", "tests/test_mutants_boxes.py")),
    Bug("resize-bilinear", "score maps resized bilinearly, not bicubically as the reference",
        "maps/normalize.py", "interpolation=cv2.INTER_CUBIC", "interpolation=cv2.INTER_LINEAR",
        ("tests/test_pinned_maps.py", "tests/test_mutants_maps.py")),
    Bug("pas-p80", "PaS divides by the 80th percentile instead of Bae et al.'s 90th",
        "maps/normalize.py", "PAS_PERCENTILE = 90.0", "PAS_PERCENTILE = 80.0",
        ("tests/test_pinned_maps.py", "tests/test_mutants_maps.py")),
    Bug("fcam-loss-no-alpha", "F-CAM's total loss ignores alpha",
        "fcam/losses.py", 'w.alpha * terms["pce"]', 'terms["pce"]',
        ("tests/test_pinned_fcam.py", "tests/test_fcam_losses.py")),
    Bug("fcam-size-by-crf-weight", "F-CAM's size term weighted by the CRF weight",
        "fcam/losses.py", 'w.lambda_size * terms["size"]', 'w.lambda_crf * terms["size"]',
        ("tests/test_pinned_fcam.py", "tests/test_fcam_losses.py")),
    Bug("top5-as-top1", "Top-5 Loc counts only the top-1 class",
        "metrics/counts.py", "(top == truth).any(1).cpu().numpy()", "(top[:, :1] == truth).any(1).cpu().numpy()",
        ("tests/test_pinned_metrics.py", "tests/test_metrics.py")),
    Bug("xgradcam-as-gradcam", "XGrad-CAM's weights are Grad-CAM's (the mean gradient)",
        "cams/xgradcam.py", "return (grad * act).sum(dim=(2, 3)) / (act.sum(dim=(2, 3)) + self.eps)",
        "return grad.mean(dim=(2, 3))", ("tests/test_cams_references.py",)),
    Bug("layercam-no-relu", "LayerCAM keeps the negative gradients (same as Grad-CAM's at a GAP head)",
        "cams/layercam.py", "(grad.clamp_min(0) * act)", "(grad * act)", ("tests/test_cams_references.py",)),
    Bug("crf-grid-positions", "the downsampled CRF measures positions in grid cells, not input pixels",
        "maps/crf.py", "dtype=img.dtype) * s + (s - 1) / 2)", "dtype=img.dtype) + (s - 1) / 2)",
        ("tests/test_pinned_crf.py", "tests/test_crf.py"), count=2),
    Bug("crf-ignore-downsample", "the CRF's appearance kernel pools the image at s = 1 while the map is pooled",
        "maps/crf.py", "appearance = bilateral_features(images.float(), sigma_rgb, sigma_xy, s)",
        "appearance = bilateral_features(F.interpolate(images.float(), size=(gh, gw)), sigma_rgb, sigma_xy, 1)",
        ("tests/test_pinned_crf.py", "tests/test_crf.py")),
    Bug("save-maps-unrefined", "--save-maps with --crf saves the unrefined map, not the one the boxes came from",
        "localize/folder.py", "if options.crf:  # the refined map", "if False:  # the refined map",
        ("tests/test_pinned_localize.py", "tests/test_mutants_folder.py")),
    Bug("pc1-sign-flipped", "PC1's sign rule flipped (the largest entry made negative)",
        "cams/pc1.py", "return v * torch.where(sign == 0, torch.ones_like(sign), sign)",
        "return -v * torch.where(sign == 0, torch.ones_like(sign), sign)",
        ("tests/test_cams_references.py", "tests/test_cams.py")),
]


def plant(bug: Bug, scratch: Path) -> None:
    """Copy src/ and tests/ (and pyproject.toml, for pytest's settings) to ``scratch`` and plant ``bug``."""
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, scratch / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", scratch)
    path = scratch / "src" / "wsol" / bug.file
    text = path.read_text(encoding="utf-8")
    if text.count(bug.old) != bug.count:
        raise SystemExit(f"{bug.name}: {bug.old!r} occurs {text.count(bug.old)} times in src/wsol/{bug.file}, "
                         f"not {bug.count}: update this script")
    path.write_text(text.replace(bug.old, bug.new), encoding="utf-8")


def run(bug: Bug) -> tuple[bool, str, float]:
    """(caught, the first failing test or the tail of pytest's output, seconds)."""
    with tempfile.TemporaryDirectory(prefix=f"wsol-bug-{bug.name}-") as tmp:
        scratch = Path(tmp)
        plant(bug, scratch)
        env = {**os.environ, "PYTHONPATH": str(scratch / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        where = subprocess.run([sys.executable, "-c", "import wsol; print(wsol.__file__)"], cwd=scratch, env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).is_relative_to(scratch):  # the copy, not the installed tree, must be what runs
            raise SystemExit(f"{bug.name}: the tests would import {where}, not the planted copy")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--rootdir",
                               str(scratch), *bug.tests], cwd=scratch, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode not in (0, 1):
            tail = (done.stdout + done.stderr)[-3000:]
            raise SystemExit(f"{bug.name}: pytest exited {done.returncode}:\n{tail}")
        failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
        return done.returncode == 1, (failed[0] if failed else done.stdout.strip().splitlines()[-1]), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="bugs to plant (default: all)")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here")
    parser.add_argument("--list", action="store_true", help="name the bugs and exit")
    args = parser.parse_args()
    if args.list:
        for bug in BUGS:
            print(f"{bug.name:26s} {bug.what}")
        return 0
    unknown = set(args.names) - {b.name for b in BUGS}
    if unknown:
        parser.error(f"unknown bug(s): {', '.join(sorted(unknown))} (see --list)")
    chosen = [b for b in BUGS if not args.names or b.name in args.names]
    rows = []
    for bug in chosen:
        caught, detail, seconds = run(bug)
        print(f"{bug.name:26s} {'caught' if caught else 'MISSED'} {seconds:6.1f} s  {detail}", flush=True)
        rows.append((bug, caught, detail, seconds))
    if args.out:
        lines = ["# Issue 12's hand-made bugs, planted one at a time", "",
                 f"`{' '.join(['python', 'scripts/seeded_bugs.py', *sys.argv[1:]])}` on {time.strftime('%Y-%m-%d')}: "
                 "each bug in a scratch copy of `src/`, then `pytest -x` on the test files listed for it in the "
                 "script; 'caught' = they failed. The 2-core machine; seconds include pytest's start.", "",
                 "| bug | planted in | caught | first failing test | s |", "|---|---|---|---|---|"]
        lines += [f"| {b.what} (`{b.name}`) | `{b.file}` | {'yes' if c else '**no**'} | `{d}` | {s:.0f} |"
                  for b, c, d, s in rows]
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if all(c for _, c, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
