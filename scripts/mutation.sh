#!/usr/bin/env bash
# Mutation testing (issue 12) with mutmut: which small bugs in the code behind a published number or a
# user's result do the tests NOT catch? Not part of CI (it is long).
#
# Usage:
#   bash scripts/mutation.sh                      # every module of the map below
#   bash scripts/mutation.sh metrics/box_accuracy maps/crf     # some of them (src/wsol/... paths work too)
#   MUTATION_JOBS=1 MUTATION_DIR=/tmp/mut bash scripts/mutation.sh cams/cam
#
# Each module runs in its own scratch copy ($MUTATION_DIR/<module>, default /tmp/wsol-mutation): mutmut
# mutates only that file, with only the test files that cover it (MODULE_TESTS below; mutmut then runs,
# per mutant, only those of them that call the mutated function). The working tree is never touched.
# Per module it writes $MUTATION_DIR/results/<module>.txt (counts, then every surviving mutant's diff) and
# prints one line: mutants killed survived timeout other kill-rate, where the kill rate
# counts timeouts as killed and does not yet exclude the equivalent mutants. The table with the equivalent mutants
# explained is benchmarks/results/mutation.md.
#
# How long: the modules have 3-834 mutants each (about 5,700 in all); each mutant runs only the tests that
# call its function. On the quiet 2-core machine of 2026-12-07 (mutmut at nice 10, two modules at once):
# box_accuracy 2.5 min (61 mutants), localize/folder 14 min (457, MUTATION_JOBS=2), _kernels 18 min (817,
# pure Python); on the shared machine of 2026-12-01 (load 9-14) about 0.1 mutant/s per module. Some hours for
# all. Run modules in parallel (one script
# per module, MUTATION_JOBS=1). The first run of a module also runs its test files once for mutmut's stats
# (1-5 min); a rerun in the same $MUTATION_DIR starts from scratch (the copy is rebuilt), except with
# MUTATION_RERUN=1: then only the last run's survivors (and mutants no test reached) run again, the same
# mutants, against the current test files, one after the other in one process (the new tests first; about
# 30 s a mutant on that machine).
# MUTATION_REPORT=1 only rewrites the results of the last run (also of one still running or stopped: its
# unchecked mutants count under "other").
#
# _kernels.py holds numba kernels; mutmut cannot mutate decorated (@njit) functions, so for that module the
# copy drops the @njit decorators (the pure-Python function is the same code) and makes the one line whose
# meaning differs without numba (uint8 + 1 wraps in numpy, not in numba) compute in int64; its tests are the
# ones on small maps, as pure Python is slow.
# A function that runs only when its module is imported (_kernels' BLAS-probe skip, the tables) is attributed
# to no test by mutmut's stats, so its mutants run against unrelated tests and "survive": check them with
# MUTANT_UNDER_TEST=<mutant> PYTHONPATH=src pytest <its test> in $MUTATION_DIR/<module>/mutants (a test that
# calls the builder itself or imports the module in a fresh interpreter sees the mutant).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MUTMUT="$ROOT/.venv/bin/mutmut"
WORK="${MUTATION_DIR:-/tmp/wsol-mutation}"
JOBS="${MUTATION_JOBS:-2}"

# module -> the test files that cover it (those that do not exist are left out)
declare -A MODULE_TESTS=(
    [metrics/box_accuracy]="tests/test_metrics.py tests/test_pinned_metrics.py tests/test_mutants_metrics.py"
    [metrics/pixel_ap]="tests/test_metrics.py tests/test_mutants_metrics.py tests/test_split_evaluator.py"
    [metrics/counts]="tests/test_metrics.py tests/test_pinned_metrics.py tests/test_scale_out.py tests/test_mutants_metrics.py tests/test_split_evaluator.py tests/test_evaluate_cli.py tests/test_mutants_counts.py"
    [metrics/_kernels]="tests/test_mutants_kernels.py tests/test_metrics.py::test_pixel_bins_equal_numpy_histogram_at_and_around_every_edge"
    [metrics/scoremaps]="tests/test_evaluate_cli.py tests/test_mutants_metrics.py tests/test_split_evaluator.py"
    [metrics/split]="tests/test_split_evaluator.py tests/test_evaluate_cli.py"
    [metrics/classification]="tests/test_split_evaluator.py"
    [maps/normalize]="tests/test_metrics.py tests/test_crf.py tests/test_pinned_maps.py tests/test_mutants_localize.py tests/test_mutants_maps.py"
    [maps/boxes]="tests/test_metrics.py tests/test_pinned_maps.py tests/test_pinned_localize.py tests/test_mutants_localize.py tests/test_mutants_boxes.py"
    [maps/variants]="tests/test_cams.py tests/test_pinned_maps.py tests/test_mutants_localize.py tests/test_mutants_maps.py"
    [maps/crf]="tests/test_crf.py tests/test_pinned_crf.py tests/test_mutants_localize.py tests/test_mutants_crf.py"
    [localize/folder]="tests/test_localize_cli.py tests/test_pinned_localize.py tests/test_mutants_localize.py tests/test_mutants_folder.py"
    [localize/split]="tests/test_localize_cli.py tests/test_scale_out.py tests/test_evaluate_cli.py tests/test_cli_paths.py tests/test_mutants_split.py"
    [cams/base]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py tests/test_published_maps.py tests/test_mutants_cams_base.py"
    [cams/gradient]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [cams/cam]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py tests/test_published_maps.py"
    [cams/pc1]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py tests/test_published_maps.py"
    [cams/gradcam]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [cams/gradcampp]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [cams/smoothgradcampp]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [cams/xgradcam]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [cams/layercam]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [cams/eigencam]="tests/test_cams.py tests/test_cams_references.py tests/test_mutants_cams.py"
    [fcam/losses]="tests/test_fcam_losses.py tests/test_pinned_fcam.py tests/test_mutants_fcam.py tests/test_mutants_fcam_losses.py"
    [fcam/sampling]="tests/test_fcam_sampling.py tests/test_fcam_losses.py tests/test_mutants_fcam.py tests/test_mutants_fcam_sampling.py"
    [data/metadata]="tests/test_metadata.py tests/test_prepare.py tests/test_evaluate_cli.py tests/test_mutants_metadata.py tests/test_mutants_metadata_more.py"
)
# the modules of which only some functions are mutated (mutmut's mutant-name globs)
declare -A MODULE_FUNCTIONS=(
    [localize/folder]="x_run_config x__localize_images"
)
ORDER=(metrics/box_accuracy metrics/pixel_ap metrics/counts metrics/_kernels metrics/scoremaps
       metrics/split metrics/classification maps/normalize maps/boxes maps/variants maps/crf
       cams/base cams/gradient cams/cam cams/pc1 cams/gradcam cams/gradcampp cams/smoothgradcampp
       cams/xgradcam cams/layercam cams/eigencam
       fcam/losses fcam/sampling data/metadata localize/folder localize/split)

modules=()
for arg in "${@:-${ORDER[@]}}"; do
    m="${arg#src/}"; m="${m#wsol/}"; m="${m%.py}"
    [[ -n "${MODULE_TESTS[$m]:-}" ]] || { echo "unknown module: $arg (known: ${ORDER[*]})" >&2; exit 2; }
    modules+=("$m")
done

mkdir -p "$WORK/results"
printf '%-22s %7s %6s %8s %7s %5s %9s\n' module mutants killed survived timeout other kill-rate
for m in "${modules[@]}"; do
    name="${m//\//_}"
    dir="$WORK/$name"
    dotted="wsol.${m//\//.}"
    names=()
    if [[ -n "${MUTATION_REPORT:-}" ]]; then
        :  # only the report of what the last run (even an unfinished one) has checked
    elif [[ -n "${MUTATION_RERUN:-}" && ! ( -f "$WORK/results/$name.json" && -d "$dir/mutants" ) ]]; then
        echo "$m: no finished run in $dir to rerun" >&2
        continue
    elif [[ -n "${MUTATION_RERUN:-}" ]]; then
        # the last run's survivors (and mutants no test reached) against the current tests, each in turn (MUTANT_UNDER_TEST selects it in
        # mutmut's copy): no new stats run, so this takes seconds per mutant
        rm -rf "$dir/mutants/tests"
        cp -r "$ROOT/tests" "$dir/mutants/"
        tests=()
        for t in ${MODULE_TESTS[$m]}; do [[ -f "$ROOT/${t%%::*}" ]] && tests+=("$t"); done
        (cd "$dir/mutants" && nice -n 10 "$ROOT/.venv/bin/python" - "$WORK/results/$name.json" "${tests[@]}" \
            >"$WORK/results/$name.rerun.log" 2>&1) <<'EOF'
import json, os, signal, sys
import pytest
merged, tests = sys.argv[1], sorted(sys.argv[2:], key=lambda t: "test_mutants_" not in t)  # the new ones first
sys.path.insert(0, os.path.abspath("src"))
codes = json.load(open(merged))
def alarm(*_):
    raise TimeoutError("mutant ran past 300 s")
signal.signal(signal.SIGALRM, alarm)
for name in sorted(k for k, v in codes.items() if v in (0, 33)):  # survived, or no test reached it
    os.environ["MUTANT_UNDER_TEST"] = name
    signal.alarm(300)
    try:
        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--rootdir=.", *tests]))
    except TimeoutError:
        code = 36
    signal.alarm(0)
    codes[name] = code if code in (0, 1, 36) else 1
    print(name, "killed" if codes[name] else "survived", flush=True)
    json.dump(codes, open(merged, "w"), indent=0, sort_keys=True)  # after each: a stopped rerun keeps its verdicts
EOF
    else
        rm -rf "$dir"
        mkdir -p "$dir"
        cp -r "$ROOT/src" "$dir/"
        find "$dir" -name __pycache__ -prune -exec rm -rf {} +
        if [[ "$m" == metrics/_kernels ]]; then
            sed -i -e '/^@njit(/d' -e 's/^    flat = u8.ravel()$/    flat = u8.ravel().astype(np.int64)/' \
                "$dir/src/wsol/metrics/_kernels.py"
        fi
        for f in ${MODULE_FUNCTIONS[$m]:-}; do names+=("$dotted.$f*"); done
    fi
    if [[ -z "${MUTATION_REPORT:-}" && -z "${MUTATION_RERUN:-}" ]]; then
        cp -r "$ROOT/tests" "$ROOT/pyproject.toml" "$dir/"
        find "$dir/tests" -name __pycache__ -prune -exec rm -rf {} +
        tests=()
        for t in ${MODULE_TESTS[$m]}; do [[ -f "$ROOT/${t%%::*}" ]] && tests+=("\"$t\""); done
        # this module's file and tests, added to the [tool.mutmut] section of the copy's pyproject.toml
        sed -i "/^\[tool.mutmut\]/a only_mutate = [\"src/wsol/$m.py\"]\npytest_add_cli_args_test_selection = [$(IFS=,; echo "${tests[*]}")]" \
            "$dir/pyproject.toml"
    fi
    log="$WORK/results/$name.log"
    if [[ -z "${MUTATION_REPORT:-}" && -z "${MUTATION_RERUN:-}" ]]; then
        (cd "$dir" && nice -n 10 "$MUTMUT" run --max-children "$JOBS" "${names[@]}" >"$log" 2>&1) \
            || { echo "$m: mutmut failed, see $log" >&2; tail -5 "$log" >&2; continue; }
    fi
    # counts from mutmut's per-file record (only the mutants of the selected functions), merged with the
    # last run's verdicts on a rerun ($name.json keeps every mutant's exit code)
    (cd "$dir" && "$ROOT/.venv/bin/python" - "$m" "$dotted" "${MODULE_FUNCTIONS[$m]:-}" "$MUTMUT" \
        "$WORK/results/$name.json" "${MUTATION_RERUN:-}" "${MUTATION_REPORT:-}" >"$WORK/results/$name.txt.new") <<'EOF'
import json, os, subprocess, sys
from collections import Counter
from mutmut.stats import status_by_exit_code
module, dotted, functions, mutmut, merged, rerun, report = sys.argv[1:]
record = json.load(open(f"mutants/src/wsol/{module}.py.meta"))["exit_code_by_key"]
prefixes = [f"{dotted}.{f}_" for f in functions.split()] or [f"{dotted}."]
codes = {k: v for k, v in record.items() if any(k.startswith(p) for p in prefixes)}
if rerun:  # the verdicts are the merged file's, updated by the rerun
    codes = json.load(open(merged))
elif report and os.path.exists(merged):
    codes = {**json.load(open(merged)), **{k: v for k, v in codes.items() if v is not None}}
json.dump(codes, open(merged, "w"), indent=0, sort_keys=True)
keys = sorted(codes)
status = {k: status_by_exit_code[codes[k]] for k in keys}
count = Counter(status.values())
killed, survived, timeout = count["killed"], count["survived"], count["timeout"]
other = len(keys) - killed - survived - timeout
rate = 100 * (killed + timeout) / max(1, killed + timeout + survived)
print(f"{module:22s} {len(keys):7d} {killed:6d} {survived:8d} {timeout:7d} {other:5d} {rate:8.1f}%")
for k in keys:
    if status[k] in ("survived", "no tests"):
        print(f"\n## {k}: {status[k]}")
        print(subprocess.run([mutmut, "show", k], capture_output=True, text=True).stdout)
EOF
    mv "$WORK/results/$name.txt.new" "$WORK/results/$name.txt"
    head -1 "$WORK/results/$name.txt"
done
