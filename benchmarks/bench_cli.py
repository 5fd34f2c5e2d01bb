"""Start-up of the ``wsol`` command: what a user waits for before anything happens, timed in subprocesses.

    .venv/bin/python benchmarks/bench_cli.py [--runs 7] [--maps 120]

Times (median of ``--runs`` runs, each a fresh process) ``wsol --help``, ``wsol --version``, a bad option,
and ``wsol evaluate`` on generated 224 x 224 score maps. For ``evaluate``, "reaching the first map" is
measured two ways:

- ``evaluate_first_map``: the whole run on a split of ONE map (start, imports, metadata, loading the
  compiled kernels, the map evaluated, the table printed, exit): an upper bound;
- ``evaluate_startup``: the run on ``--maps`` maps less the maps' own time, where the per-map time is the
  difference between the runs on twice as many and on ``--maps`` maps, divided by ``--maps``.

Each figure is given as wall-clock time and as the CPU time (user + system) of the process: on a shared
machine the wall clock grows with the other processes' load, the CPU time much less; on an idle machine
they agree. The goals (issue 13) are 0.5 s for help, version and option errors and 1.5 s for evaluate to
reach its first map. Prints a table and writes ``benchmarks/results/bench_cli.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scoremap_cases import random_gt_boxes, smooth_map  # noqa: E402
from wsol.data.metadata import Record, write_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cli.json"


def wsol_command() -> list[str]:
    """The installed console script beside this interpreter, else the same entry point through ``-c``."""
    script = Path(sys.executable).parent / "wsol"
    found = str(script) if script.is_file() else shutil.which("wsol")
    return [found] if found else [sys.executable, "-c", "from wsol.cli import run; run()"]


def make_split(root: Path, num: int, seed: int = 0) -> tuple[Path, Path]:
    """A split of ``num`` images with boxes, and a 224 x 224 float32 score map for each."""
    rng = np.random.default_rng(seed)
    maps = root / "scoremaps"
    maps.mkdir(parents=True)
    records = []
    for i in range(num):
        image_id = f"img{i:05d}.jpg"
        boxes = [tuple(int(v) for v in box) for box in random_gt_boxes(rng, 224)]
        records.append(Record(image_id, label=0, size=(224, 224), boxes=boxes))
        score_map = smooth_map(rng, 224, grid=int(rng.integers(3, 15)), power=float(rng.uniform(1, 4)))
        np.save(maps / f"{image_id}.npy", score_map.astype(np.float32))
    return write_split(root / "metadata", records), maps


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_time(command: list[str], runs: int, expect: int = 0) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``command`` over ``runs`` fresh processes."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu, start = _children_cpu(), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"})
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(command)}: exit {done.returncode}, expected {expect}\n{done.stderr[-2000:]}")
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (the median is kept)")
    parser.add_argument("--maps", type=int, default=120, help="score maps of the evaluate run (and twice as many)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args()
    wsol = wsol_command()
    figures: dict[str, tuple[float, float]] = {}
    figures["python"] = median_time([sys.executable, "-c", "pass"], args.runs)
    figures["help"] = median_time(wsol + ["--help"], args.runs)
    figures["version"] = median_time(wsol + ["--version"], args.runs)
    figures["bad_option"] = median_time(wsol + ["evaluate", "--no-such-option"], args.runs, expect=2)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for num in (1, args.maps, 2 * args.maps):
            meta, maps = make_split(Path(tmp) / f"n{num}", num)
            command = wsol + ["evaluate", "--metadata", str(meta), "--scoremaps", str(maps), "--quiet"]
            subprocess.run(command, capture_output=True)  # compiles the kernels once if their cache is cold
            runs[num] = median_time(command, args.runs)
    per_map = tuple(max(b - a, 0.0) / args.maps for a, b in zip(runs[args.maps], runs[2 * args.maps]))
    figures["evaluate_first_map"] = runs[1]
    figures["evaluate_total"] = runs[args.maps]
    figures["evaluate_per_map"] = per_map
    figures["evaluate_startup"] = tuple(t - args.maps * m for t, m in zip(runs[args.maps], per_map))
    rows = [("python -c pass (the interpreter alone)", "python"), ("wsol --help", "help"),
            ("wsol --version", "version"), ("wsol evaluate --no-such-option", "bad_option"),
            ("wsol evaluate, a split of 1 map: whole run", "evaluate_first_map"),
            (f"wsol evaluate, {args.maps} maps: whole run", "evaluate_total"),
            ("wsol evaluate: per map", "evaluate_per_map"),
            (f"wsol evaluate: {args.maps} maps less their per-map time", "evaluate_startup")]
    goals = {"help": 0.5, "version": 0.5, "bad_option": 0.5, "evaluate_first_map": 1.5, "evaluate_startup": 1.5}
    print(f"median of {args.runs} runs, {' '.join(wsol)}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'':52s}{'wall s':>9s}{'CPU s':>9s}{'goal':>7s}")
    for label, key in rows:
        goal = f"{goals[key]:.1f}" if key in goals else ""
        print(f"{label:52s}{figures[key][0]:9.3f}{figures[key][1]:9.3f}{goal:>7s}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"runs": args.runs, "maps": args.maps, "load_average": os.getloadavg()[0], "goals_s": goals,
               "wall_s": {k: v[0] for k, v in figures.items()}, "cpu_s": {k: v[1] for k, v in figures.items()}}
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
