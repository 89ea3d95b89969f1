"""Converter tables: the one mechanism every converter in ``ports/`` uses to fill a Flax model's variables.

A converter is a table of :class:`Rule` rows, ``(regex on the source name -> target leaf, transform)``, and one
call of :func:`apply_table`. Each source tensor must fully match exactly one rule; the rule's transform makes
the target leaf (layout changes happen here and only here), or checks a constant that the model builds in
(target ``None``: consumed, not copied). Then every leaf of the model's variables must have been filled exactly
once with its expected shape. Any violation is one :class:`~magec_jax.errors.FileFormatError` line naming the
file and the offending tensor or leaf::

    RULES = (
        Rule(r"features\\.(\\d+)\\.weight", r"params/features/\\1/kernel", oihw_to_hwio),
        Rule(r"features\\.(\\d+)\\.bias", r"params/features/\\1/bias"),
        Rule(r"classifier\\.6\\.(?:weight|bias)", None),   # a layer the port does not have
    )
    flat = apply_table(RULES, [(path, state_dict)], module_leaves(model, image), what="a VGG16 state dict")
    variables = unflatten(flat)

Target leaves are ``'collection/module/.../name'`` paths of the Flax variables (``params/features/0/kernel``,
``batch_stats/bn1/mean``, ``buffers/mapping/w_avg``), as :func:`magec_jax.weights.unflatten` reads them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np

from magec_jax.errors import FileFormatError

Transform = Callable[[np.ndarray], np.ndarray]
Target = str | Callable[[re.Match], str] | None
Source = tuple[str | os.PathLike, Mapping[str, Any]]  # (file the tensors came from, {name: array})


def same(a: np.ndarray) -> np.ndarray:
    """The identity transform: the source layout is already the target's."""
    return a


def linear_to_dense(a_OxI: np.ndarray) -> np.ndarray:
    """A torch ``Linear`` weight ``[out, in]`` -> a Flax ``Dense`` kernel ``[in, out]``."""
    return a_OxI.T


def oihw_to_hwio(a_OxIxHxW: np.ndarray) -> np.ndarray:
    """A torch convolution weight ``[out, in, kh, kw]`` -> a Flax ``Conv`` kernel ``[kh, kw, in, out]``."""
    return a_OxIxHxW.transpose(2, 3, 1, 0)


def scalar(a: np.ndarray) -> np.ndarray:
    """A one-element tensor (``[1]``, ``[1, 1]``, ...) -> a 0-d leaf."""
    if a.size != 1:
        raise ValueError(f"has {a.size} elements, expected a scalar")
    return a.reshape(())


def constant(value: Any, meaning: str, *, atol: float = 0.0) -> Transform:
    """A transform that checks a tensor the model builds in instead of reading it (use with target ``None``).

    Args:
      value: what the tensor must hold (same shape; exactly, or within ``atol``).
      meaning: what it is, for the error (``"the standard [1, 3, 3, 1] resample filter"``).
      atol: absolute tolerance (for float buffers that a file stores rounded).
    """
    expected = np.asarray(value)

    def check(a: np.ndarray) -> np.ndarray:
        if a.shape != expected.shape or not np.allclose(a, expected, rtol=0.0, atol=atol):
            found = a.tolist() if a.size <= 16 else f"an array of shape {list(a.shape)}"
            raise ValueError(f"holds {found}, not {meaning}")
        return a

    return check


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a converter table.

    Attributes:
      pattern: regex that must match a source tensor's whole name.
      target: the leaf it fills: a template expanded with the match (``r"params/b\\1/conv0/weight"``, as
        ``re.Match.expand``), a function of the match, or None to consume the tensor without storing it.
      transform: source array -> target leaf (layout change, reshape, or a :func:`constant` check). A
        ``ValueError`` it raises becomes the error message, after the tensor's name.
    """

    pattern: str
    target: Target
    transform: Transform = same


def flat_leaves(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b/c': leaf}`` of a nested mapping (Flax variables or their shapes)."""
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def module_leaves(module: flax.linen.Module, *inputs: jax.ShapeDtypeStruct) -> dict[str, jax.ShapeDtypeStruct]:
    """Every variable leaf of ``module`` initialised on ``inputs``: ``{'params/a/kernel': ShapeDtypeStruct}``.

    Nothing is computed: shapes come from ``jax.eval_shape`` of ``module.init``.
    """
    return flat_leaves(jax.eval_shape(module.init, jax.random.key(0), *inputs))


def few(names: Iterable[str], n: int = 4) -> str:
    """``'a', 'b', 'c', 'd' and 3 more``: the first ``n`` names (sorted) for a one-line message."""
    names = sorted(names)
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def apply_table(
    table: Sequence[Rule],
    sources: Sequence[Source],
    targets: Mapping[str, jax.ShapeDtypeStruct],
    *,
    what: str,
    fill_later: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """Fills the target leaves from the source tensors through ``table``.

    Args:
      table: the converter's rules; each source name must fully match exactly one.
      sources: ``(file, tensors)`` pairs (e.g. a trunk and its heads from two files); errors name the file the
        offending tensor came from. Nested dicts of tensors are read as ``'a/b/c'`` names.
      targets: every leaf the model needs with its shape and dtype (:func:`module_leaves`).
      what: the source's description for messages, e.g. ``"an IR-SE50 state dict"``.
      fill_later: target leaves the caller computes itself (not required from the sources).

    Returns:
      ``{leaf: array}`` for every target leaf except ``fill_later`` ones no tensor filled; C-contiguous copies
      in the target dtype. ``magec_jax.weights.unflatten`` makes it a variables dict.

    Raises:
      FileFormatError: one line naming the file and the first offender: a tensor that matches no rule (or
        several), is not an array, fails its transform, has no place in the model, fills a leaf twice or has
        the wrong shape; no tensor matching at all (another network's file); or leaves left unfilled.
    """
    compiled = [(re.compile(rule.pattern), rule) for rule in table]
    filled: dict[str, np.ndarray] = {}
    unmatched: dict[str, list[str]] = {}
    matched_any = False
    for file, tensors in sources:
        for name, value in flat_leaves(tensors).items():
            hits = [(m, rule) for regex, rule in compiled if (m := regex.fullmatch(name))]
            if not hits:
                unmatched.setdefault(os.fspath(file), []).append(name)
                continue
            if len(hits) > 1:
                raise FileFormatError(file, f"{name!r} matches {len(hits)} rules of the converter for {what}")
            matched_any = True
            match, rule = hits[0]
            if not isinstance(value, np.ndarray):
                raise FileFormatError(file, f"{name!r} is a {type(value).__name__}, expected an array")
            try:
                array = rule.transform(value)
            except ValueError as e:
                raise FileFormatError(file, f"{name!r} (shape {value.shape}) {e}") from None
            if rule.target is None:
                continue
            leaf = match.expand(rule.target) if isinstance(rule.target, str) else rule.target(match)
            if leaf not in targets:
                raise FileFormatError(file, f"{name!r} has no place in the network (would be {leaf!r})")
            if leaf in filled:
                raise FileFormatError(file, f"{name!r} fills {leaf!r}, which another tensor already filled")
            expected = targets[leaf]
            if array.shape != expected.shape:
                raise FileFormatError(
                    file, f"{name!r} has shape {value.shape}, which gives {leaf!r} {array.shape} where "
                    f"{expected.shape} is expected"
                )
            filled[leaf] = np.array(array, dtype=expected.dtype, order="C")  # a writable copy; 0-d stays 0-d
    if not matched_any:
        names = [name for _, tensors in sources for name in flat_leaves(tensors)]
        raise FileFormatError(sources[0][0], f"not {what}: no tensor name matches (found {few(names)})")
    for file, names in unmatched.items():
        verb = "matches" if len(names) == 1 else "match"
        raise FileFormatError(file, f"{len(names)} tensor(s) that {what} does not have: {few(names)} {verb} no rule")
    missing = set(targets) - set(filled) - set(fill_later)
    if missing:
        files = " + ".join(os.fspath(f) for f, _ in sources)
        raise FileFormatError(files, f"incomplete: {len(missing)} leaves missing for {what}: no tensor for {few(missing)}")
    return filled
