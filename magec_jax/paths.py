"""How result files name paths: the same on every machine, so that a report or benchmark JSON can be committed.

A results file (an evaluation's ``results.json``/``results.md``, a comparison, a diagnosis, a benchmark JSON)
records the files it was made from. Written as given they would often be absolute paths of the machine that
made them (``/home/someone/magec/demo/bundle``), which say nothing on another machine and leak where a checkout
lived. :func:`portable_path` names a path relative to a root folder instead (the working directory by default,
the repository root for the benchmarks):

- a path under the root: relative to it, POSIX separators (``demo/bundle``; the root itself is ``.``);
- a path beside the root, under the root's parent (a second checkout made by ``git worktree add ../baseline``):
  relative with one ``..`` (``../baseline``), as the documented commands write it;
- anywhere else (``/tmp/run1.json``, another disk): its name only (``run1.json``); the folder it was in
  belongs to that machine alone;
- a relative path: as given (already machine-neutral), with POSIX separators.

No folder is read: the result depends on the strings alone (and on the working directory for a relative root).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` named machine-neutrally relative to ``root`` (default: the working directory); see the module
    docstring for the rules. An empty path stays empty."""
    text = os.fspath(path)
    if not text:
        return text
    p = Path(text)
    if not p.is_absolute():
        return PurePosixPath(*p.parts).as_posix() if p.parts else text
    p = Path(os.path.normpath(p))
    base = Path(os.path.normpath(Path(root).absolute() if root is not None else Path.cwd()))
    if p == base:
        return "."
    if p.is_relative_to(base):
        return p.relative_to(base).as_posix()
    parent = base.parent
    if parent != base and parent != Path(parent.anchor) and p.is_relative_to(parent):
        return PurePosixPath("..", p.relative_to(parent).as_posix()).as_posix()
    return p.name or p.as_posix()


def portable_argv(argv: Sequence[str], root: str | os.PathLike | None = None) -> list[str]:
    """A command line with every absolute path in it (a whole argument, or the value of ``--option=PATH`` or
    ``KEY=PATH``) named by :func:`portable_path`; every other argument as given."""
    out = []
    for arg in argv:
        option, eq, value = arg.partition("=")
        if eq and Path(value).is_absolute():
            out.append(f"{option}={portable_path(value, root)}")
        elif Path(arg).is_absolute():
            out.append(portable_path(arg, root))
        else:
            out.append(arg)
    return out
