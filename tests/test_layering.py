"""The package layering (issue 14): a primitive lives below everything that uses it, so no lower package
imports a job above it. Read from the source (every import statement, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "wsol"

# package -> what it must never import: the jobs and everything above it. Two lazy, upward imports are
# allowed because they are data, not jobs: the F-CAM model and its checkpoint format (``wsol.fcam.model``,
# ``wsol.fcam.checkpoint``, which ``models.load`` reads and ``cams.fcam`` runs) and the method options of a
# training config (``wsol.train.config``, recorded in checkpoints).
JOBS = {"localize", "report", "analysis", "tune", "cli", "fcam.train", "fcam.cli", "train.run", "train.module",
        "train.data"}
FORBIDDEN = {
    "data": JOBS | {"models", "cams", "maps", "metrics", "methods"},
    "models": JOBS | {"cams", "maps", "metrics"},
    "cams": JOBS | {"maps", "metrics"},
    "maps": JOBS | {"metrics", "methods"},
    "metrics": JOBS | {"cams", "methods"},
    "methods": JOBS | {"maps", "metrics"},
    "train": {"localize", "report", "analysis", "tune", "cli", "fcam.cli"},
}


def imported_packages(path: Path) -> set[str]:
    """What a module imports from wsol, at any depth of its code: ``package`` and ``package.module`` names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "wsol" and len(parts) > 1:
                found.update(".".join(parts[1:k]) for k in range(2, min(len(parts), 3) + 1))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_layers_above_it(package: str) -> None:
    offences = []
    for path in sorted((SRC / package).rglob("*.py")):
        bad = imported_packages(path) & FORBIDDEN[package]
        offences += [f"{path.relative_to(SRC)} imports wsol.{name}" for name in sorted(bad)]
    assert offences == []


def test_the_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from wsol.localize.folder import x\n    import wsol.report.html\n")
    assert imported_packages(module) == {"localize", "localize.folder", "report", "report.html"}


def test_no_module_is_left_over_300_lines_in_the_localize_job() -> None:
    lengths = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (SRC / "localize").glob("*.py")}
    assert max(lengths.values()) < 300, lengths
