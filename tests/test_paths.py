"""Result writers name paths machine-neutrally (``magec_jax.paths``): the benchmark command line and result
records, the ``cpu_profile.py trees`` labels, and the rules themselves. The evaluation report and the comparison
are checked where they are written (``test_evaluate.py``, ``test_compare.py``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from conftest import REPO
from magec_jax.paths import portable_argv, portable_path

sys.path.insert(0, str(REPO / "benchmarks"))


def test_portable_path_rules(tmp_path):
    root = tmp_path / "checkout"
    assert portable_path(root / "demo" / "bundle", root) == "demo/bundle"
    assert portable_path(root, root) == "."
    assert portable_path(f"{root}/runs/../demo/bundle", root) == "demo/bundle"
    assert portable_path(tmp_path / "baseline", root) == "../baseline"  # beside the checkout
    assert portable_path(tmp_path / "scratch" / "base", root) == "../scratch/base"
    assert portable_path("/elsewhere/on/this/machine/run1.json", root) == "run1.json"
    assert portable_path("runs/x.json", root) == "runs/x.json"  # relative: as given
    assert portable_path("", root) == ""


def test_portable_path_defaults_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "demo" / "bundle") == "demo/bundle"
    assert portable_path(tmp_path.parent / "elsewhere") == "../elsewhere"


def test_portable_argv_rewrites_every_absolute_path(tmp_path):
    root = tmp_path / "checkout"
    argv = [str(root / "benchmarks" / "cpu_profile.py"), "trees", "--against", str(tmp_path / "base"),
            "--out", "/scratch/run.json", f"--out-dir={root / 'benchmarks' / 'results'}", "--steps", "5"]
    assert portable_argv(argv, root) == ["benchmarks/cpu_profile.py", "trees", "--against", "../base",
                                         "--out", "run.json", "--out-dir=benchmarks/results", "--steps", "5"]


def test_benchmark_records_name_paths_relative_to_the_repository(tmp_path, monkeypatch):
    import harness
    import machine

    argv = [str(REPO / "benchmarks" / "loop.py"), "--bundle", str(REPO / "demo" / "bundle"),
            "--out", str(tmp_path / "loop.json")]
    monkeypatch.setattr(sys, "argv", argv)
    assert machine.machine_info()["argv"] == ["benchmarks/loop.py", "--bundle", "demo/bundle", "--out", "loop.json"]
    harness.save_result(tmp_path / "loop.json", "a benchmark", [dict(batch=1, s=0.5)], time.perf_counter())
    text = (tmp_path / "loop.json").read_text()
    assert json.loads(text)["machine"]["argv"][-1] == "loop.json"
    assert str(tmp_path) not in text and str(REPO) not in text


def test_cpu_profile_trees_labels_checkouts_relative_to_this_one():
    import cpu_profile

    sibling = REPO.parent / "baseline"
    trees = cpu_profile.checkouts([sibling, Path("/elsewhere/old")])
    assert list(trees) == ["this", portable_path(sibling, REPO), "old"]
    assert trees["this"] == REPO and trees[portable_path(sibling, REPO)] == sibling.resolve()
    if REPO.parent != Path(REPO.anchor):  # a checkout beside this one, as `git worktree add ../baseline` makes
        assert portable_path(sibling, REPO) == "../baseline"
