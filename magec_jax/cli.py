"""Shared plumbing of the config-driven command-line tools.

Each tool module defines ``run(config)`` and ends with ``main = config_main(run, __doc__)``; the tool is then
``python -m magec_jax.TOOL --config configs/FILE.py[:ARG] [--config.a.b=value ...]`` (ml-collections config
files: ``get_config(arg)``). Errors of kind :class:`MagecError` are printed as one line and exit with 2
(:func:`error_status`, which the argparse tools use too).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from absl import app, flags, logging
from ml_collections import config_flags

from magec_jax.errors import MagecError


def error_status(error: Exception) -> int:
    """Prints a failed command's one-line error (``error: <file>: <problem>``) to stderr; returns its exit
    status, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def config_main(run: Callable[[Any], Any], doc: str) -> Callable[[], None]:
    """Returns a ``main()`` that parses ``--config`` (+ overrides) and calls ``run(config)``."""
    _config = config_flags.DEFINE_config_file("config", None, "ml-collections config file (path[:arg])",
                                              lock_config=True)
    flags.mark_flags_as_required(["config"])

    def _main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # libraries (orbax) log INFO lines per checkpoint otherwise
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            run(_config.value)
        except MagecError as e:
            sys.exit(error_status(e))

    def main() -> None:
        app.run(_main)

    main.__doc__ = doc
    return main
