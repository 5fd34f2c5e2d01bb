"""The project's error type: one clear line naming the culprit (file, line, key)."""


class WSOLError(Exception):
    """A user-facing error. The CLI prints ``str(error)`` on one line and exits non-zero."""
