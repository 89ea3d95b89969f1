"""Error types whose message is one line naming the offending file (or item) and the problem."""

from __future__ import annotations

import os


class MagecError(Exception):
    """Base class for errors a command-line tool reports as one line and exits on."""


class FileFormatError(MagecError):
    """A file is missing, unreadable, truncated, of the wrong kind, or asks for something unsafe.

    ``str(err)`` is ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(MagecError):
    """A config field has a value the tool cannot use (``str(err)`` names the field and the problem)."""


class BadImage(FileFormatError):
    """An image file that cannot be used: undecodable, truncated, over the pixel limit, several frames, or a
    mode the reading policy refuses (``magec_jax.images.open_image``). Commands report it, record it and go on."""
