"""Test-suite settings shared by every tier.

* ``shared`` fixture: the ``shared/`` folder (``$MAGEC_SHARED``, else ``../shared`` beside the checkout).
  Tests that need it skip when it is absent, unless ``MAGEC_REQUIRE_SHARED`` is set (CI sets it), in
  which case they fail.
* Rank promotion raises and float32 matmuls/convs run at full precision, so parity tests compare the
  real numerics.
* One XLA compilation cache for the whole run (``$JAX_COMPILATION_CACHE_DIR``, a fresh temporary folder
  unless set): many tests, in this process, in pytest-xdist workers and in the subprocesses of the CLI
  tests, compile the same programs (the tiny bundle's inversion step, the demo bundle's networks); each is
  compiled once per run and read back from the cache after that. XLA keys an entry by the whole program,
  its compile options and the jax version, so a hit is the same executable; every program is still traced
  and lowered by every test. The folder is removed when the run ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = "MAGEC_TEST_OWNS_XLA_CACHE"


def pytest_configure(config):
    """Creates the run's compilation cache in the first process (xdist's controller, or the only one);
    workers and subprocesses inherit it through the environment."""
    if not os.environ.get(_CACHE_ENV):
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="magec_jax_xla_cache_")
        os.environ[_OWN_CACHE] = str(os.getpid())
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])


def pytest_unconfigure(config):
    if os.environ.get(_OWN_CACHE) == str(os.getpid()):
        shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)
        del os.environ[_OWN_CACHE]

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared folder's location (may not exist)."""
    env = os.environ.get("MAGEC_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def require_shared(*parts: str) -> Path:
    """Returns ``shared/<parts>``, skipping (or failing under MAGEC_REQUIRE_SHARED) when it is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        msg = f"shared fixture/data not found: {path}"
        if os.environ.get("MAGEC_REQUIRE_SHARED"):
            pytest.fail(msg + " (MAGEC_REQUIRE_SHARED is set)")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder; see :func:`require_shared`."""
    return require_shared()
