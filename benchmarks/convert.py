"""Benchmark: read and convert a config-f FFHQ-1024 NVIDIA snapshot pickle (~380 MB) on the CPU.

    python benchmarks/convert.py [--pkl PATH] [--repeats 3] [--keep]

Without ``--pkl`` a random snapshot with the exact layout of NVIDIA's ``network-snapshot-*.pkl`` is written
first (``tests/tools/nvidia_pkl_writer.py``: G + D + G_ema, z_dim = w_dim = 512, 8 mapping layers,
channel_base 32768, channel_max 512, 1024x1024). Each step then runs in a fresh Python process, so that its
wall time includes imports and its peak RSS (``VmHWM``) is its own:

* ``baseline_*``: the interpreter plus the step's imports only;
* ``detect``: ``ports.detect.detect_format``;
* ``read``: ``ports.nvidia.load_nvidia_pkl`` (every tensor of G, D and G_ema);
* ``convert``: ``python -m ports.convert SRC DST`` (read, convert G_ema, write params.npz + manifest).

Requirement: conversion well under 30 s on a 2-core CPU with peak memory under 3x the file size. Results go
to ``benchmarks/results/convert.json``. Expect (2-core CPU, warm page cache) about 0.3 s and 1.1x the file size
to read, 2 s and 2x to convert.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "convert.json"

# Child programs: each prints one JSON line with its inner timing and its own peak RSS (VmHWM: the high-water
# mark of this process's memory since exec, unaffected by the parent's size).
_PEAK = """
def _peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""
_IMPORTS = _PEAK + """
import json, sys
import {modules}
print(json.dumps({{"peak_rss_mb": _peak_rss_mb()}}))
"""
_DETECT = _PEAK + """
import json, sys, time
from ports.detect import detect_format
t = time.perf_counter(); fmt = detect_format(sys.argv[1])
print(json.dumps({"inner_s": time.perf_counter() - t, "format": fmt, "peak_rss_mb": _peak_rss_mb()}))
"""
_READ = _PEAK + """
import json, sys, time
from ports.nvidia import PersistentModule, load_nvidia_pkl
t = time.perf_counter(); snap = load_nvidia_pkl(sys.argv[1]); dt = time.perf_counter() - t
nets = {k: v for k, v in snap.items() if isinstance(v, PersistentModule)}
print(json.dumps({"inner_s": dt, "tensors": sum(len(n.params) for n in nets.values()),
                  "tensor_bytes": sum(a.nbytes for n in nets.values() for a in n.params.values()),
                  "peak_rss_mb": _peak_rss_mb()}))
"""
# Exactly `python -m ports.convert SRC DST --overwrite`, plus the measurement.
_CONVERT = _PEAK + """
import json, runpy, sys, time
sys.argv = ["ports.convert", *sys.argv[1:]]
t = time.perf_counter()
try:
    runpy.run_module("ports.convert", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code:
        raise
print(json.dumps({"inner_s": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb()}))
"""


def _measure(argv: list[str], repeats: int, file_mb: float) -> dict:
    runs = [_run(argv) for _ in range(repeats)]
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    walls = [r["wall_s"] for r in runs]
    peak = round(max(r["peak_rss_mb"] for r in runs), 1)
    summary = {k: v for k, v in runs[-1].items() if k not in ("wall_s", "peak_rss_mb", "inner_s")}
    summary.update(
        wall_s_min=min(walls), wall_s_median=round(statistics.median(walls), 3), peak_rss_mb=peak,
        peak_rss_over_file=round(peak / file_mb, 2),
    )  # fmt: skip
    if "inner_s" in runs[0]:
        summary["inner_s_min"] = round(min(r["inner_s"] for r in runs), 4)
    return summary


def _run(argv: list[str]) -> dict:
    """Runs a child program; returns its wall time and the JSON it printed, or its last error line."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit)\b|error:", line)]
        return {"error": (errors or lines or [f"exit status {proc.returncode}"])[-1]}
    result = {"wall_s": round(wall, 3)}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    return result


def main() -> None:
    """Writes (or takes) the snapshot, measures each step, writes and prints the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pkl", type=Path, help="an existing NVIDIA snapshot pickle (default: write a random one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary snapshot and converted output")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from machine import machine_info
    from magec_jax.images import atomic_write_json

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="magec-convert-bench-"))
    try:
        source: dict = {}
        pkl = args.pkl
        if pkl is None:
            from tests.tools.nvidia_pkl_writer import write_snapshot

            pkl = work / "ffhq1024-random.pkl"
            t0 = time.perf_counter()
            write_snapshot(pkl)
            source["written_by"] = "tests/tools/nvidia_pkl_writer.py write_snapshot() defaults (config-f, 1024)"
            source["write_s"] = round(time.perf_counter() - t0, 2)
        file_mb = pkl.stat().st_size / 2**20
        source.update(file=pkl.name, bytes=pkl.stat().st_size, mb=round(file_mb, 1))
        py = sys.executable
        steps = {
            "baseline_read": _measure([py, "-c", _IMPORTS.format(modules="ports.nvidia, ports.detect")], 1, file_mb),
            "detect": _measure([py, "-c", _DETECT, str(pkl)], args.repeats, file_mb),
            "read": _measure([py, "-c", _READ, str(pkl)], args.repeats, file_mb),
            "baseline_convert": _measure(
                [py, "-c", _IMPORTS.format(modules="ports.convert, ports.stylegan2")], 1, file_mb
            ),
            "convert": _measure(
                [py, "-c", _CONVERT, str(pkl), str(work / "converted"), "--overwrite"], args.repeats, file_mb
            ),
        }
        results = {
            "benchmark": "benchmarks/convert.py",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "load_avg_1min_before": round(load_before, 2),  # other work on the machine skews times
            "source": source,
            "repeats": args.repeats,
            "steps": steps,
        }
        atomic_write_json(RESULTS, results)
        print(json.dumps(results, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
