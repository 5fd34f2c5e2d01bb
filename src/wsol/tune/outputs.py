"""What a study writes (atomically, rewritten as trials finish): ``trials.csv``, ``trials.png`` and
``best.yaml`` (the recipe with the best trial's values, loadable by ``wsol train --config``)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from wsol.files import replacing, write_text

if TYPE_CHECKING:
    import optuna

    from wsol.tune.space import SearchSpace
    from wsol.tune.study import TuneSettings


def metric_name(trials: list[FrozenTrial]) -> str:
    """The val metric the trials were scored by (recorded by each trial), e.g. ``MaxBoxAccV2``."""
    return next((str(t.user_attrs["metric"]) for t in trials if "metric" in t.user_attrs), "val metric")


def seconds(trial: FrozenTrial) -> float | None:
    return trial.duration.total_seconds() if trial.duration is not None else None


def describe(trial: FrozenTrial) -> str:
    """One line for the console when a trial ends."""
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    value = f" {trial.user_attrs.get('metric', 'value')} {trial.value:.2f}" if trial.value is not None else ""
    took = f" in {seconds(trial):.0f}s" if seconds(trial) is not None else ""
    note = f" ({trial.user_attrs['note']})" if trial.state != TrialState.COMPLETE and "note" in trial.user_attrs else ""
    return f"trial {trial.number} {trial.state.name.lower()}{value}{took}: {params}{note}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the highest value (the earliest of equals)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def write_csv(path: Path, trials: list[FrozenTrial], keys: list[str]) -> None:
    """One row a trial that ran or runs: number, state, value (a pruned trial's: its last reported), seconds,
    epochs, note, then one column per searched key."""
    extra = sorted({k for t in trials for k in t.params} - set(keys))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "seconds", "epochs", "note", *keys, *extra])
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.WAITING:  # queued, not run yet
            continue
        took = seconds(t)
        writer.writerow([t.number, t.state.name, "" if t.value is None else repr(float(t.value)),
                         "" if took is None else f"{took:.1f}", t.user_attrs.get("epochs", ""),
                         t.user_attrs.get("note", ""), *(_cell(t.params.get(k)) for k in [*keys, *extra])])
    write_text(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value


def plot_trials(path: Path, trials: list[FrozenTrial], metric: str, title: str) -> None:
    """The score of each trial (pruned ones at their last reported value) and the best so far."""
    from wsol.report.plots import agg_pyplot

    plt = agg_pyplot()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], marker="x", color="0.6", label="pruned")
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], color="tab:blue", label="completed", zorder=3)
        best, xs, ys = -math.inf, [], []
        for t in done:
            best = max(best, float(t.value))  # type: ignore[arg-type]
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far", zorder=2)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="lower right")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_best(path: Path, settings: TuneSettings, space: SearchSpace, trial: FrozenTrial, metric: str) -> Path:
    """The recipe with the best trial's values (and the recipe's own test split) as a YAML recipe whose
    ``trainer.out_dir`` is ``<out>/best``."""
    from wsol.tune.study import load_recipe

    out = Path(settings.out) / "best"  # type: ignore[arg-type]
    config = load_recipe(settings.config, [*settings.overrides, *space.overrides(trial.params),
                                           f"trainer.out_dir={out}"])
    fcam = "fcam " if "fcam" in config.to_dict() else ""
    header = [f"# wsol tune: the best trial of study {settings.study!r} (trial {trial.number}, val {metric} "
              f"{trial.value:.4f}) from {settings.config}",
              *(f"#   {k}: {v!r}" for k, v in trial.params.items()),
              f"# train and test it: wsol {fcam}train --config {path}"]
    write_text(path, "\n".join(header) + "\n" + yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def write_outputs(study: optuna.Study, settings: TuneSettings, space: SearchSpace) -> dict[str, Any]:
    """Write ``trials.csv``, ``trials.png`` and (once a trial completed) ``best.yaml`` under ``settings.out``;
    return the best trial's number, value, params and the files."""
    out = Path(settings.out)  # type: ignore[arg-type]
    trials = study.get_trials(deepcopy=False)
    metric = metric_name(trials)
    write_csv(out / "trials.csv", trials, space.keys)
    plot_trials(out / "trials.png", trials, metric, f"{settings.study}: val {metric}")
    summary: dict[str, Any] = {"metric": metric, "trials_csv": str(out / "trials.csv"),
                               "trials_png": str(out / "trials.png")}
    best = best_trial(trials)
    if best is not None:
        summary.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_config=str(write_best(out / "best.yaml", settings, space, best, metric)))
    return summary
