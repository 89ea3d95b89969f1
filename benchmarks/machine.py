"""Where a benchmark ran, recorded in every benchmark JSON: the accelerator or CPU, the CPU model and its vector
extensions, memory, the load, and the software. CPUs of "the same kind" differ (an AMD EPYC and an Intel Xeon
with AVX-512 gave NVIDIA's projector 1.25 and 1.02 s per step at 256), so a CPU figure without its CPU model
says little.

The command line is recorded with every absolute path in it named relative to the repository root
(``magec_jax.paths.portable_argv``: ``../baseline`` for a checkout beside this one, the name alone for a file
elsewhere such as ``/tmp/run.json``), so that a committed result names no folder of the machine it ran on.

Used by the scripts in this folder (``from machine import machine_info``); imports nothing beyond jax and
``magec_jax.paths`` (standard library only).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import jax

from magec_jax.paths import portable_argv

REPO = Path(__file__).resolve().parents[1]

# SIMD extensions that decide convolution and matmul speed on CPUs, in the order reported.
VECTOR_EXTENSIONS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm",
)


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """``{"model", "family_model", "vector_extensions", "logical_cpus"}`` from ``/proc/cpuinfo``.

    ``family_model`` (x86 ``cpu family``/``model``/``stepping``) tells CPU generations apart where a hypervisor
    shortens the model name (``AMD EPYC`` family 25 model 17 is a Zen 4 Genoa)."""
    model, flags, ids = None, set(), {}
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model is None:
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key in ("cpu family", "model", "stepping") and key not in ids:
            ids[key] = value.strip()
    return dict(
        model=model or platform.processor() or platform.machine(),
        family_model="/".join(ids.get(k, "?") for k in ("cpu family", "model", "stepping")) if ids else None,
        vector_extensions=[f for f in VECTOR_EXTENSIONS if f in flags],
        logical_cpus=os.cpu_count(),
    )


def memory_total_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """The machine's RAM (``MemTotal``), None where unreadable."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict:
    """Everything about the machine a benchmark result depends on, JSON-ready."""
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return dict(
        platform=jax.default_backend(),
        device_kind=device.device_kind,
        device_count=jax.device_count(),
        device_memory_bytes=stats.get("bytes_limit"),
        cpu=cpu_info(),
        memory_bytes=memory_total_bytes(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        jax=jax.__version__,
        python=platform.python_version(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        argv=portable_argv(sys.argv, REPO),
    )

