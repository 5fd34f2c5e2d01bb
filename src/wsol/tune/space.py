"""Search spaces: a YAML file mapping dotted config keys (as ``wsol train key=value`` overrides) to
distributions, checked against the recipe before any trial runs.

Format, one key a line::

    optim.lr: {type: float, low: 1.0e-5, high: 1.0, log: true}       # float: low, high [, log | step]
    method.has_grid_size: {type: int, low: 1, high: 200}               # int: low, high [, log | step]
    method.has_drop_rate: {type: float, low: 0.0, high: 1.0}
    model.large_feature_map: {type: categorical, choices: [false, true]}
    method.spg_threshold_1h: {type: float, low: method.spg_threshold_1l, high: 1.0}  # a bound = an earlier key
    method.name: has                                                   # not a mapping: a fixed value

Keys are sampled in file order; a bound naming an earlier key takes the value that key got in the same trial.
Every error is one line naming the file and the key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from wsol.errors import WSOLError

TYPES = ("float", "int", "categorical")
_FIELDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"),
           "categorical": ("choices",)}
# set by `wsol tune` itself for every trial
RESERVED = ("trainer.out_dir", "data.test_split", "data.val_split")
MAX_GRID = 10_000
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

Bound = float | int | str  # a number, or the dotted key of an earlier parameter


class SuggestingTrial(Protocol):
    """What :meth:`SearchSpace.suggest` needs of a trial (``optuna.Trial`` has it)."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Param:
    """One distribution: ``float`` / ``int`` (``low``..``high``, optional ``log`` or ``step``) or
    ``categorical`` (``choices``)."""

    key: str
    type: str
    low: Bound | None = None
    high: Bound | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def bounds(self, values: dict[str, Any]) -> tuple[float, float]:
        """(low, high), bounds naming another key resolved from ``values`` (low is capped at high)."""
        low, high = (values[b] if isinstance(b, str) else b for b in (self.low, self.high))
        return min(low, high), high

    def samples(self) -> list[Any]:
        """The values that stand for this distribution when checking it against the config."""
        if self.type == "categorical":
            return list(self.choices)
        return [b for b in (self.low, self.high) if not isinstance(b, str)]

    def grid(self, values: dict[str, Any], where: str) -> list[Any]:
        """Every value of this distribution on a grid (categorical choices, or ``low..high`` by ``step``)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.log or (self.type == "float" and self.step is None):
            raise WSOLError(f"{where}: {self.key}: a grid needs choices or a step (this is a continuous "
                            f"{'log ' if self.log else ''}range); use --sampler random or tpe")
        low, high = self.bounds(values)
        if self.type == "int":
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        n = int(math.floor((high - low) / self.step + 1e-9))
        return [round(low + i * self.step, 12) for i in range(n + 1)]


@dataclass
class SearchSpace:
    """The parsed space: the distributions in file order and the fixed values."""

    path: Path
    params: list[Param]
    fixed: dict[str, Any]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def spec(self) -> dict[str, Any]:
        """A plain, comparable description (stored with a study to refuse resuming with another space)."""
        out: dict[str, Any] = {p.key: {f.name: list(v) if isinstance(v := getattr(p, f.name), tuple) else v
                                       for f in fields(p) if f.name != "key"} for p in self.params}
        out.update({key: {"fixed": value} for key, value in self.fixed.items()})
        return json.loads(json.dumps(out))

    def suggest(self, trial: SuggestingTrial) -> dict[str, Any]:
        """One value per parameter from ``trial`` (an ``optuna.Trial``), in file order."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.type == "categorical":
                values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
                continue
            low, high = p.bounds(values)
            if p.type == "float":
                values[p.key] = trial.suggest_float(p.key, float(low), float(high), step=p.step, log=p.log)
            else:
                values[p.key] = trial.suggest_int(p.key, int(low), int(high), step=int(p.step or 1), log=p.log)
        return values

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the parameters' grid values (file order; bounds naming keys resolved)."""
        points: list[dict[str, Any]] = [{}]
        for p in self.params:
            points = [{**point, p.key: v} for point in points for v in p.grid(point, str(self.path))]
            if len(points) > MAX_GRID:
                raise WSOLError(f"{self.path}: the grid has more than {MAX_GRID} points; use --sampler random or tpe")
        return points

    def overrides(self, values: dict[str, Any] | None = None) -> list[str]:
        """``key=value`` overrides (as ``wsol train`` takes them): the fixed values, then ``values``."""
        return [override(k, v) for k, v in {**self.fixed, **(values or {})}.items()]

    def validate(self, load: Callable[[Sequence[str]], Any], config_name: str = "the config") -> None:
        """Check every key and value against the recipe before any trial: ``load(overrides)`` builds the
        config (raising :class:`WSOLError`), whose ``check()`` then runs. One line naming file and key."""
        base = load([])
        base.check()
        for key in [*self.fixed, *self.keys]:
            _check_key(base, key, f"{self.path}: {key}", config_name)
        checks: list[tuple[str, Any, list[str]]] = [(k, v, [override(k, v)]) for k, v in self.fixed.items()]
        for p in self.params:  # with the fixed values, and the keys bounded by this one at the same value
            for value in p.samples():
                tied = {q.key: value for q in self.params if p.key in (q.low, q.high)}
                checks.append((p.key, value, self.overrides({p.key: value, **tied})))
        for key, value, extra in checks:
            try:
                load(extra).check()
            except WSOLError as exc:
                raise WSOLError(f"{self.path}: {key}={value!r} does not fit {config_name}: {exc}") from None


def override(key: str, value: Any) -> str:
    """``key=value`` whose value reads back (YAML) as exactly ``value`` (``1e-05`` would read as a string)."""
    return f"{key}={_yaml_scalar(value)}"


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return json.dumps(str(value))


def load_space(path: str | Path) -> SearchSpace:
    """Parse a search-space YAML file; one-line :class:`WSOLError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise WSOLError(f"{path}: search space file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WSOLError(f"{path}: not a UTF-8 text file; a search space is a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise WSOLError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict) or not data:
        raise WSOLError(f"{path}: a search space is a mapping of dotted config keys to distributions, e.g. "
                        "optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}")
    params: list[Param] = []
    fixed: dict[str, Any] = {}
    for key, spec in data.items():
        where = f"{path}: {key}"
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise WSOLError(f"{path}: {key!r}: not a dotted config key such as optim.lr")
        if key in RESERVED:
            raise WSOLError(f"{where}: set by wsol tune itself for every trial; it cannot be searched")
        if isinstance(spec, dict):
            params.append(_param(key, spec, where, params))
        else:
            fixed[key] = spec
    if not params:
        raise WSOLError(f"{path}: no distribution to search (only fixed values)")
    return SearchSpace(path, params, fixed)


def _param(key: str, spec: dict[str, Any], where: str, earlier: list[Param]) -> Param:
    kind = spec.get("type")
    if kind not in TYPES:
        raise WSOLError(f"{where}: unknown type {kind!r} (expected {', '.join(TYPES)})" if kind is not None else
                        f"{where}: no type (expected {', '.join(TYPES)})")
    unknown = [f for f in spec if f not in ("type", *_FIELDS[kind])]
    if unknown:
        raise WSOLError(f"{where}: unknown field {unknown[0]!r} for type {kind} (fields: {', '.join(_FIELDS[kind])})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise WSOLError(f"{where}: choices must be a non-empty list")
        for choice in choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise WSOLError(f"{where}: choice {choice!r}: choices must be numbers, strings, booleans or null")
        if len({json.dumps(c) for c in choices}) < len(choices):
            raise WSOLError(f"{where}: choices repeat a value")
        return Param(key, kind, choices=tuple(choices))
    numeric = {p.key: p for p in earlier if p.type != "categorical"}
    bounds: list[Bound] = []
    for name in ("low", "high"):
        if name not in spec:
            raise WSOLError(f"{where}: {name} is required for type {kind}")
        value = spec[name]
        if isinstance(value, str):
            if value not in numeric:
                raise WSOLError(f"{where}: {name}={value!r}: not a number, nor a float/int key earlier in the file")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WSOLError(f"{where}: {name}={value!r}: expected a finite number")
        elif kind == "int" and not float(value).is_integer():
            raise WSOLError(f"{where}: {name}={value!r}: expected an integer for type int")
        bounds.append(int(value) if kind == "int" and not isinstance(value, str) else value)
    low, high = bounds
    log = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log, bool):
        raise WSOLError(f"{where}: log={log!r}: expected true or false")
    if not isinstance(low, str) and not isinstance(high, str) and low >= high:
        raise WSOLError(f"{where}: low={low!r} >= high={high!r}")
    if log and step is not None:
        raise WSOLError(f"{where}: log and step cannot be combined")
    if log and any(not isinstance(b, str) and b <= 0 for b in bounds):
        raise WSOLError(f"{where}: a log range needs low > 0 (got low={low!r})")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0 or (
                kind == "int" and not float(step).is_integer()):
            raise WSOLError(f"{where}: step={step!r}: expected a number > 0{' (an integer)' if kind == 'int' else ''}")
        if isinstance(low, str) or isinstance(high, str):
            raise WSOLError(f"{where}: step cannot be combined with a bound naming another key")
        n = (high - low) / step
        if abs(n - round(n)) > 1e-6:
            raise WSOLError(f"{where}: high - low = {high - low:g} is not a multiple of step={step!r}")
        step = int(step) if kind == "int" else float(step)
    return Param(key, kind, low, high, log, step)


def _check_key(config: Any, key: str, where: str, config_name: str) -> None:
    """``key`` must name a value (not a section) of the config tree."""
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not is_dataclass(node):
            raise WSOLError(f"{where}: {'.'.join(parts[:i])} is a single value in {config_name}, not a section")
        names = [f.name for f in fields(node)]
        if part not in names:
            section = ".".join(parts[:i])
            raise WSOLError(f"{where}: {config_name} has no such key (keys{' under ' + section if section else ''}: "
                            f"{', '.join(names)})")
        node = getattr(node, part)
    if is_dataclass(node):
        raise WSOLError(f"{where}: a section of {config_name}, not a value; name one of its keys "
                        f"({', '.join(f'{key}.{f.name}' for f in fields(node))})")
    if isinstance(node, dict):
        raise WSOLError(f"{where}: a free-form mapping in {config_name}, not a value to search")

