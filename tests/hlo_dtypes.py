"""What a jitted function really computes in: the element types of the operands of every convolution and matrix
product in its lowered StableHLO. A ``dtype=jnp.bfloat16`` option whose output is merely close to float32
could still run every convolution in float32 (a cast forgotten, the option ignored); this sees the ops."""

from __future__ import annotations

import collections
import re

import jax

# `%3 = stablehlo.convolution(%0, %1) ... : (tensor<1x8x8x3xbf16>, tensor<3x3x3x4xbf16>) -> tensor<...>`
# `%9 = stablehlo.dot_general %6, %7, ... : (tensor<1x8x8x4xbf16>, tensor<4x3xbf16>) -> tensor<...>`
_OP = re.compile(r"stablehlo\.(convolution|dot_general)\b.*?:\s*\(tensor<([^>]*)>,\s*tensor<([^>]*)>\)")


def contraction_dtypes(fn, *args) -> collections.Counter:
    """``Counter({(op, lhs element type, rhs element type): count})`` over the convolutions and dot_generals
    of ``jax.jit(fn)`` lowered on ``args`` (shapes only; nothing is compiled or run)."""
    text = jax.jit(fn).lower(*args).as_text()
    found = collections.Counter()
    for op, lhs, rhs in _OP.findall(text):
        found[(op, lhs.rpartition("x")[2], rhs.rpartition("x")[2])] += 1
    return found


def assert_contractions_in(dtype: str, fn, *args, ops: tuple[str, ...] = ("convolution",),
                           float32_kept: dict[str, int] | None = None) -> collections.Counter:
    """Asserts that ``fn`` on ``args`` has at least one of each op in ``ops`` and that every convolution and
    dot_general multiplies ``dtype`` operands (``"bf16"``, ``"f32"``), except exactly ``float32_kept``
    (``{op: count}``) float32 ones that the model documents as kept in float32 whatever its dtype; returns the
    counts."""
    found = contraction_dtypes(fn, *args)
    for op in ops:
        assert any(key[0] == op for key in found), f"no {op} in the lowered function: {dict(found)}"
    other = {key: n for key, n in found.items() if key[1:] != (dtype, dtype)}
    kept = {(op, "f32", "f32"): n for op, n in (float32_kept or {}).items()}
    assert other == kept, f"contractions not in {dtype}: {other}, expected {kept} (all: {dict(found)})"
    return found
