"""The project's error type: one clear line naming the culprit (file, line, key)."""


class WSOLError(Exception):
    """A user-facing error. The CLI prints :func:`one_line` of it and exits non-zero (2: usage or input)."""


class Interrupted(WSOLError):
    """A run stopped by Ctrl-C, its message saying how to resume. The CLI prints it and exits 130."""


class WSOLWarning(UserWarning):
    """Something suspicious that the protocol still allows (a mask of another size than its image...). The CLI
    prints it as one ``warning:`` line."""


def one_line(error: BaseException) -> str:
    """The error's message. One raised in a DataLoader worker comes back re-raised with the worker's whole
    traceback in its message; its own message is that traceback's last line."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(f"{type(error).__name__}: ", 1)[-1]
    return text
