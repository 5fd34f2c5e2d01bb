"""The project's error type: one clear line naming the culprit (file, line, key)."""


class WSOLError(Exception):
    """A user-facing error. The CLI prints :func:`one_line` of it and exits non-zero."""


def one_line(error: BaseException) -> str:
    """The error's message. One raised in a DataLoader worker comes back re-raised with the worker's whole
    traceback in its message; its own message is that traceback's last line."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(f"{type(error).__name__}: ", 1)[-1]
    return text
