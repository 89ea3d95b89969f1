"""The one progress convention of the package: a tool reports through a ``log`` callable taking one line.

Library functions take ``log: Log = to_stderr``; tests pass ``lines.append`` to capture the lines, and a
notebook can pass ``print`` or a no-op. Each line is a complete sentence-like report (``invert: 3/8 images,
...``), prefixed with the stage, so a long job's output reads as a log without a logging configuration.
"""

from __future__ import annotations

import sys
from typing import Callable

Log = Callable[[str], None]


def to_stderr(message: str) -> None:
    """Writes one report line to standard error, flushed (progress must show while a long job runs)."""
    print(message, file=sys.stderr, flush=True)
