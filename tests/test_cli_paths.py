"""Output paths are checked before the work, and file-system errors print as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsol.cli import app
from wsol.errors import WSOLError

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["--json", "{tmp}"], "--json {tmp}: exists and is a folder"),
    (["--json", "{tmp}/file.txt/x.json"], "{tmp}/file.txt is not a folder"),
    (["--plot", "{tmp}/curves.docx"], "cannot write .docx"),
])
def test_evaluate_output_paths_fail_before_the_evaluation(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    # the split does not even exist: the output check comes first
    result = runner.invoke(app, ["evaluate", "--metadata", str(tmp_path / "none"), "--scoremaps",
                                 str(tmp_path / "none"), *args])
    assert isinstance(result.exception, WSOLError), result.output
    assert message.format(tmp=tmp_path) in str(result.exception)


def test_localize_metadata_out_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    result = runner.invoke(app, ["localize", "--metadata", str(tmp_path), "--data-root", str(tmp_path),
                                 "--evaluate", "--out", str(tmp_path / "file.txt")])
    assert isinstance(result.exception, WSOLError) and "exists and is not a folder" in str(result.exception)


def test_file_system_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    proc = subprocess.run([sys.executable, "-c", "from wsol.cli import run; run()", "samples", "--out",
                           str(tmp_path / "file.txt" / "sub")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "file.txt" in proc.stderr and "Traceback" not in proc.stderr
