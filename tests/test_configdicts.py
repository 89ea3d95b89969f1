"""magec_jax.configdicts: ConfigDict <-> frozen dataclass, each type read, each error one line naming the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import ml_collections
import numpy as np
import pytest

from magec_jax.configdicts import from_configdict, to_configdict
from magec_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Span:
    """A hook type: written ``"START:END"`` in a config."""

    start: int
    end: int

    @classmethod
    def from_config_value(cls, value, where):
        if not isinstance(value, str) or value.count(":") != 1:
            raise ConfigError(f"{where} must be 'START:END', got {value!r}")
        start, end = value.split(":")
        return cls(int(start), int(end))  # a ValueError here is reported by the converter

    def to_config_value(self):
        return f"{self.start}:{self.end}"


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.5
    mode: Literal["fast", "exact", "auto"] = "auto"

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    flag: bool = False
    path: Path = Path("weights")
    limit: int | None = None
    scale: float | None = 1.0
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[str, float] = ("x", 1.0)
    inner: Inner = Inner()
    maybe_inner: Inner | None = None
    named: dict[str, Inner] = dataclasses.field(default_factory=dict)
    span: Span = Span(0, 8)
    spans: tuple[Span, ...] = ()

    def __post_init__(self):
        if not self.name:
            raise ValueError("name must be set (--config.name=...)")
        if len(self.sizes) > 3:
            raise ValueError("at most 3 sizes")


def _error(config, cls=Outer, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        from_configdict(cls, config, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_round_trip_keeps_values_and_types():
    value = Outer(name="run", flag=True, path=Path("/tmp/w"), limit=3, scale=None, kind="b", sizes=(4, 5),
                  pair=("y", 2.5), inner=Inner(size=2, rate=1.0, mode="exact"), maybe_inner=Inner(),
                  named={"one": Inner(size=1), "two": Inner(size=2)}, span=Span(2, 6), spans=(Span(0, 1),))
    config = to_configdict(value)
    assert isinstance(config.inner, ml_collections.ConfigDict)
    assert isinstance(config.named.one, ml_collections.ConfigDict)
    assert config.path == "/tmp/w" and config.sizes == (4, 5) and config.span == "2:6" and config.spans == ("0:1",)
    assert from_configdict(Outer, config) == value
    assert from_configdict(Outer, config.to_dict()) == value  # plain dicts read the same


def test_defaults_fill_missing_keys_and_written_types_accept_overrides():
    assert from_configdict(Outer, {"name": "n"}) == Outer(name="n")
    config = to_configdict(Outer(name="n"))
    assert config.limit is None and config.get_type("limit") is int  # a typed None: --config.limit=3 works
    assert config.get_type("scale") is float
    assert config.maybe_inner is None
    config.limit = 3
    config.inner.rate = 2  # an int in a float field
    parsed = from_configdict(Outer, config)
    assert parsed.limit == 3 and parsed.inner.rate == 2.0 and isinstance(parsed.inner.rate, float)


def test_scalars_are_checked_and_converted():
    parsed = from_configdict(Outer, dict(name="n", limit=np.int64(7), scale=3, sizes=[1, 2], pair=["z", 2]))
    assert parsed.limit == 7 and type(parsed.limit) is int
    assert parsed.scale == 3.0 and type(parsed.scale) is float
    assert parsed.sizes == (1, 2) and parsed.pair == ("z", 2.0)
    assert _error(dict(name="n", flag=1)) == "config.flag must be True or False, got 1"
    assert _error(dict(name="n", limit=True)) == "config.limit must be an integer or None, got True"
    assert _error(dict(name="n", scale="2")) == "config.scale must be a number or None, got '2'"
    assert _error(dict(name=3)) == "config.name must be a string, got 3"
    assert _error(dict(name="n", path="")) == "config.path must be a path (a non-empty string), got ''"


def test_optional():
    assert from_configdict(Outer, dict(name="n", limit=None, maybe_inner=None)).maybe_inner is None
    assert from_configdict(Outer, dict(name="n", maybe_inner=dict(size=9))).maybe_inner == Inner(size=9)
    # an error inside an optional block names the inner field
    assert _error(dict(name="n", maybe_inner=dict(size="9"))) == "config.maybe_inner.size must be an integer, got '9'"


def test_literal():
    assert from_configdict(Outer, dict(name="n", kind="b")).kind == "b"
    assert _error(dict(name="n", kind="c")) == "config.kind must be 'a' or 'b', got 'c'"
    assert (_error(dict(name="n", inner=dict(mode="slow")))
            == "config.inner.mode must be one of 'fast', 'exact', 'auto', got 'slow'")


def test_tuples():
    assert _error(dict(name="n", sizes=3)) == "config.sizes must be a tuple, got 3"
    assert _error(dict(name="n", sizes=(1, "2"))) == "config.sizes[1] must be an integer, got '2'"
    assert _error(dict(name="n", pair=("x",))) == "config.pair must be a tuple of 2 items, got ('x',)"
    assert _error(dict(name="n", pair=("x", "y"))) == "config.pair[1] must be a number, got 'y'"


def test_unknown_and_missing_fields():
    assert _error(dict(name="n", flg=True)) == (
        "config has no field 'flg' (fields: name, flag, path, limit, scale, kind, sizes, pair, inner, "
        "maybe_inner, named, span, spans)")
    assert _error(dict(name="n", inner=dict(sise=1))) == "config.inner has no field 'sise' (fields: size, rate, mode)"
    assert _error(dict(flag=True)) == "config.name must be set (the field has no default)"
    assert _error(dict(name="n", inner=3)) == "config.inner must be a block of fields, got 3"


def test_nested_paths_in_messages():
    config = ml_collections.ConfigDict(dict(name="n", named=dict(fast=dict(size=0))))
    assert _error(config) == "config.named.fast.size must be positive, got 0"
    assert _error(config, where="config.methods.m") == "config.methods.m.named.fast.size must be positive, got 0"
    assert _error(dict(name="n", named=dict(fast=dict(rate="x")))) == "config.named.fast.rate must be a number, got 'x'"


def test_post_init_checks_become_config_errors():
    assert _error(dict(name="")) == "config.name must be set (--config.name=...)"  # starts with a field: a dot
    assert _error(dict(name="n", sizes=(1, 2, 3, 4))) == "config: at most 3 sizes"  # else a colon


def test_hook():
    parsed = from_configdict(Outer, dict(name="n", span="3:5", spans=("0:1", "1:2")))
    assert parsed.span == Span(3, 5) and parsed.spans == (Span(0, 1), Span(1, 2))
    assert _error(dict(name="n", span="3")) == "config.span must be 'START:END', got '3'"
    assert _error(dict(name="n", spans=("0:1", "a:2"))) == (
        "config.spans[1]: invalid literal for int() with base 10: 'a'")


def test_messages_show_blocks_on_one_line():
    message = _error(dict(name="n", kind=ml_collections.ConfigDict(dict(a=1, b=dict(c=2)))))
    assert message == "config.kind must be 'a' or 'b', got {'a': 1, 'b': {'c': 2}}"


@dataclasses.dataclass(frozen=True)
class NeedsOutput:
    out_dir: str = ""  # a placeholder the checks refuse
    steps: int = 10

    def __post_init__(self):
        if not self.out_dir:
            raise ValueError("out_dir must be set (--config.out_dir=...)")


def test_defaults_of_the_class_itself():
    config = to_configdict(NeedsOutput)  # its defaults, without running its checks
    assert config.to_dict() == {"out_dir": "", "steps": 10}
    assert _error(config, NeedsOutput) == "config.out_dir must be set (--config.out_dir=...)"
    config.out_dir = "runs/a"
    assert from_configdict(NeedsOutput, config) == NeedsOutput("runs/a")
    with pytest.raises(TypeError, match="Outer.name has no default"):
        to_configdict(Outer)
