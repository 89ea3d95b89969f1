"""What the benchmark scripts share: timing a compiled function and saving a result with where and how long it
ran. Imported as ``from harness import save_result, time_compiled`` by scripts in this folder."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import jax

from machine import machine_info
from magec_jax.images import atomic_write_json


def time_compiled(fn, args, *, min_iters: int, min_seconds: float) -> dict:
    """Compiles the jitted ``fn`` on ``args``, warms up once, then calls it until both ``min_iters`` calls and
    ``min_seconds`` have passed: compile seconds, calls, seconds per call (wall and process CPU) and XLA's
    temporary memory (GiB, None where the backend does not say)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    iters, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while iters < min_iters or time.perf_counter() - wall0 < min_seconds:
        jax.block_until_ready(compiled(*args))
        iters += 1
    memory = compiled.memory_analysis()
    return {
        "compile_s": round(compile_s, 2),
        "iters": iters,
        "wall_s_per_call": (time.perf_counter() - wall0) / iters,
        "cpu_s_per_call": (time.process_time() - cpu0) / iters,
        "xla_temp_gib": round(memory.temp_size_in_bytes / 2**30, 3) if memory is not None else None,
    }


def save_result(path: str | os.PathLike, benchmark: str, rows: list, started: float) -> dict:
    """Writes ``{benchmark, machine, load_average_at_end, peak_rss_gib, total_s, rows}`` to ``path`` (atomically),
    where ``started`` is the ``time.perf_counter()`` at the benchmark's start; prints where; returns the record.
    The record names no folder of this machine: ``machine.argv`` has its paths relative to the repository root
    (``machine.machine_info``); ``rows`` must hold no absolute path either (name files with
    ``magec_jax.paths.portable_path``)."""
    result = {
        "benchmark": benchmark,
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "total_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    atomic_write_json(Path(path), result)
    print(f"wrote {path} ({result['total_s']} s)")
    return result
