"""Errors the user can act on: one line, what went wrong and what to do, and an exit code.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; nothing else reaches the
terminal unless ``--debug`` is given.
"""

from __future__ import annotations


class NstError(Exception):
    """Base class: a failure the user can understand from its one-line message (exit 1)."""

    exit_code = 1


class BadInput(NstError):
    """Bad input from the user: a file, an option value, a layer name (exit 2)."""

    exit_code = 2


class WeightsError(BadInput):
    """A weights file that is missing, corrupt, hostile or not the pinned one."""


class ModelError(BadInput):
    """An exported model that is missing, tampered with or from an incompatible version."""


class Interrupted(Exception):
    """Raised from a signal handler to stop a run; ``exit_code`` is 130 (SIGINT) or 143
    (SIGTERM). The optimisers catch it and return the best image so far."""

    def __init__(self, exit_code: int = 130):
        super().__init__("interrupted")
        self.exit_code = exit_code


class Finished(Exception):
    """Raised from a progress callback to end a run normally (the picture is finished);
    the optimisers return the best image with ``str(e)`` as the stop reason."""


def os_error_line(e: OSError) -> str:
    """An OSError in one line that names its file: 'No space left on device: out.png'."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what
