"""One live process per output folder: ``wsol localize --out``, ``--scoremaps`` and a training run's
``trainer.out_dir`` are each owned through a lock file in the folder.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.wsol.lock``: the operating system releases
it when its process ends, however it ends (a crash, ``kill -9``, a lost node), so a stale lock never blocks
the next run. Unlike ``flock``, it is not inherited by forked children (DataLoader workers), which may outlive
the run; it works across machines on NFS. POSIX locks belong to the process, so a second lock of the same
folder in the same process is refused here from a registry (and the owning process must not open and close
the lock file itself: that would drop its lock). The file also names its owner (pid, host, start time,
command), so a second run is refused in one line saying who holds the folder. (Where ``fcntl`` does not
exist, Windows, the lock file is created exclusively instead and judged stale when its pid is gone on this
host.)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from wsol.errors import WSOLError

LOCK_NAME = ".wsol.lock"
_HELD: set[str] = set()  # lock files this process holds (POSIX locks do not conflict within a process)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _owner_text(path: Path) -> str:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {owner['pid']} on {owner['host']} since {owner['started']}"
                + (f": {owner['command']}" if owner.get("command") else ""))
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file names no owner yet)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """``with FolderLock(folder, "--out"):`` owns ``folder`` (created if missing) or raises a one-line
    :class:`WSOLError` naming the owner. ``option`` is how the user named the folder (for the message)."""

    def __init__(self, folder: str | Path, option: str) -> None:
        self.folder = Path(folder)
        self.option = option
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._key = ""

    def acquire(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise WSOLError(f"{self.option} {self.folder}: exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            raise WSOLError(f"{self.option} {self.folder}: in use by this process (pid {os.getpid()}) already")
        if fcntl is None:  # pragma: no cover - Windows
            self._acquire_exclusive_file()
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._refuse()
            self._fd = fd
            os.ftruncate(fd, 0)
            os.write(fd, self._owner_record())
        self._key = key
        _HELD.add(key)
        return self

    def _owner_record(self) -> bytes:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
        return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command[:300]}) + "\n").encode()

    def _refuse(self) -> None:
        raise WSOLError(f"{self.option} {self.folder}: in use by {_owner_text(self.path)}; wait for it to finish or "
                        "use another folder")

    def _acquire_exclusive_file(self) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text(encoding="utf-8"))
                    stale = owner.get("host") == socket.gethostname() and not _pid_alive(int(owner["pid"]))
                except (OSError, ValueError, KeyError, TypeError):
                    stale = False
                if not stale:
                    self._refuse()
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, self._owner_record())
            self._fd = fd
            return
        self._refuse()

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is None:  # pragma: no cover - Windows
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
        else:  # the file stays: removing it could race with a process that has just opened it
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
        self._fd = None
        _HELD.discard(self._key)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
