"""Test-suite settings shared by every tier.

* ``shared`` fixture: the ``shared/`` folder (``$MAGEC_SHARED``, else ``../shared`` beside the checkout).
  Tests that need it skip when it is absent, unless ``MAGEC_REQUIRE_SHARED`` is set (CI sets it), in
  which case they fail.
* Rank promotion raises and float32 matmuls/convs run at full precision, so parity tests compare the
  real numerics.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

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
