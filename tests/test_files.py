"""wsol.files: atomic writes with the usual permissions, nothing left behind on errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from wsol.files import replacing, write_bytes, write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_outputs_get_the_permissions_open_would_give(tmp_path: Path) -> None:
    (tmp_path / "by_open.txt").write_text("x")
    write_bytes(tmp_path / "a.bin", b"x")
    write_json(tmp_path / "b.json", {"a": 1})
    # the same as a file made by open() under this process's umask (mkstemp alone gives 0600)
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "b.json") == _mode(tmp_path / "by_open.txt")


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
