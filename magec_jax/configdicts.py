"""One converter between ml-collections ConfigDicts (what config files and ``--config.a.b=v`` edit) and the
typed frozen dataclasses the tools run on.

A tool's typed config is a frozen dataclass whose fields mirror its ConfigDict's layout: a field per key, a
nested dataclass per block of keys. Its defaults are the tool's defaults, written once: the tool's
``default_config()`` is ``to_configdict(ToolConfig())``. Checks that involve values (a positive size, a path
that must be set) live in the dataclass's ``__post_init__``; derived objects (a network's config from
several fields) are its properties. :func:`from_configdict` builds the dataclass from the config, checking
every value against the field's type hint; every error is one line naming the field (``config.a.b``).

Field types read (``typing.get_type_hints`` of the dataclass):

    bool                    True or False only (not 0 and 1)
    int                     an int or a numpy integer (not a bool)
    float                   an int or a float, numpy's included (not a bool); stored as float
    str                     a string
    pathlib.Path            a non-empty string or path (an empty string would silently become ".")
    X | None                None, or what X reads
    Literal["a", "b"]       one of the values
    tuple[T, ...]           a tuple or list of T (each item read as T); stored as a tuple
    tuple[A, B]             a tuple or list of exactly one A and one B
    dict[str, T]            a block (ConfigDict or dict) of T by name; stored as a dict
    a dataclass             a block of its fields (read by :func:`from_configdict`, missing keys: defaults)
    a hook type             any type with a classmethod ``from_config_value(value, where)`` that returns the
                            field's value or raises :class:`ConfigError` naming ``where``; for values that
                            are not a plain mapping of fields. Its instances may define
                            ``to_config_value()`` for :func:`to_configdict`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import pathlib
import re
import types
import typing
from typing import Any, Literal, TypeVar

import ml_collections
import numpy as np

from magec_jax.errors import ConfigError

T = TypeVar("T")
_SHOWN_CHARS = 200  # longest value repr an error message shows


def from_configdict(cls: type[T], config: Any, *, where: str = "config") -> T:
    """The frozen dataclass ``cls`` built from ``config`` (a ConfigDict or a dict), each value checked and
    converted by the field's type hint (see the module docstring).

    Args:
      cls: a dataclass whose fields mirror the config's keys.
      config: the ConfigDict (or dict) to read.
      where: the config's name in error messages (``"config.methods.magec"`` for a nested one).

    Returns:
      ``cls(**values)``; a key the config leaves out takes the field's default.

    Raises:
      ConfigError: one line naming the field: an unknown key (``"config.a has no field 'x' (fields: ...)"``), a
        missing key of a field without default, a value of the wrong type (``"config.a.b must be an
        integer, got 'x'"``), or a ``ValueError``/``TypeError`` of ``cls``'s own checks (``__post_init__``),
        re-raised with the config's path in front: joined with a dot when the message starts with one of
        ``cls``'s field names (``"config.g.z_dim must be positive, got 0"``), else after a colon.
    """
    if not _is_block(config):
        raise ConfigError(f"{where} must be a block of fields, got {_shown(config)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    keys = list(config.keys())
    for key in keys:
        if key not in fields:
            raise ConfigError(f"{where} has no field {key!r} (fields: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        if name in keys:
            values[name] = _read(hints[name], config[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name} must be set (the field has no default)")
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(_located(where, str(e), fields)) from None


def to_configdict(instance: Any) -> ml_collections.ConfigDict:
    """The ConfigDict of a dataclass instance, the reverse of :func:`from_configdict`; given the dataclass
    itself, the ConfigDict of its field defaults (read without constructing it, so a config whose checks
    refuse its placeholder defaults, such as an unset path, still has a default ConfigDict).

    Nested dataclasses become nested ConfigDicts and ``dict`` fields blocks; tuples stay tuples (a dataclass
    inside one becomes a plain dict); paths become strings; a float field holding an int becomes a float and
    a None of an ``X | None`` field (X a plain type) a typed ``FieldReference``, so that command-line overrides
    are read by the field's type. A value whose type defines ``to_config_value()`` is written as what it
    returns.
    """
    cls = instance if isinstance(instance, type) else type(instance)
    hints = typing.get_type_hints(cls)
    config = ml_collections.ConfigDict()
    for field in dataclasses.fields(cls):
        if field.init:
            config[field.name] = _written(hints[field.name], _value(instance, field))
    return config


# ---- reading ----------------------------------------------------------------------------------------------------


def _is_block(value: Any) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, collections.abc.Mapping))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _shown(value: Any) -> str:
    """A value as one line of an error message."""
    text = repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)
    if "\n" in text:
        text = " ".join(text.split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _located(where: str, message: str, field_names: collections.abc.Container[str]) -> str:
    """A check's message with the config path in front (see :func:`from_configdict`)."""
    head = re.split(r"[ .\[]", message, maxsplit=1)[0]
    return f"{where}.{message}" if head in field_names else f"{where}: {message}"


def _expected(hint: Any) -> str:
    """What a field of type ``hint`` must be, for error messages."""
    if _is_union(hint):
        return " or ".join("None" if a is type(None) else _expected(a) for a in typing.get_args(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        shown = [repr(a) for a in args]
        return " or ".join(shown) if len(shown) <= 2 else "one of " + ", ".join(shown)
    if origin is tuple:
        return "a tuple" if len(args) == 2 and args[1] is Ellipsis else f"a tuple of {len(args)} items"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a block of fields"
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
             pathlib.Path: "a path (a non-empty string)"}
    return names.get(hint, getattr(hint, "__name__", repr(hint)))


def _read(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked and converted as a field of type ``hint`` at ``where``."""
    if hint is Any:
        return value
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _read(arg, value, where)
            except ConfigError:
                if len(args) == 2 and type(None) in args and not _plain(arg):
                    raise  # an inner field's error says more than "X or None"
        raise ConfigError(f"{where} must be {_expected(hint)}, got {_shown(value)}")
    if hasattr(hint, "from_config_value"):
        try:
            return hint.from_config_value(value, where)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{where} must be {_expected(hint)}, got {_shown(value)}")
    if origin is tuple:
        variable = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, (tuple, list)) or (not variable and len(value) != len(args)):
            raise ConfigError(f"{where} must be {_expected(hint)}, got {_shown(value)}")
        items = [args[0]] * len(value) if variable else args
        return tuple(_read(item, v, f"{where}[{i}]") for i, (item, v) in enumerate(zip(items, value)))
    if origin is dict:
        if not _is_block(value):
            raise ConfigError(f"{where} must be {_expected(hint)}, got {_shown(value)}")
        for key in value.keys():
            if not isinstance(key, str):
                raise ConfigError(f"{where} must have string keys, got {key!r}")
        return {key: _read(args[1], value[key], f"{where}.{key}") for key in value.keys()}
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_configdict(hint, value, where=where)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok, value = _is_int(value), int(value) if _is_int(value) else value
    elif hint is float:
        ok, value = _is_number(value), float(value) if _is_number(value) else value
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is pathlib.Path:
        ok = isinstance(value, (str, os.PathLike)) and os.fspath(value) != ""
        value = pathlib.Path(value) if ok else value
    else:
        raise TypeError(f"from_configdict cannot read fields of type {hint!r}; give the type a from_config_value")
    if not ok:
        raise ConfigError(f"{where} must be {_expected(hint)}, got {_shown(value)}")
    return value


def _plain(hint: Any) -> bool:
    """Whether ``hint`` is a scalar type whose error is just "must be X"."""
    return hint in (bool, int, float, str, pathlib.Path) or typing.get_origin(hint) is Literal


# ---- writing ----------------------------------------------------------------------------------------------------


def _written(hint: Any, value: Any) -> Any:
    """``value`` of a field of type ``hint`` as a ConfigDict holds it (see :func:`to_configdict`)."""
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return _none_of(args[0]) if len(args) == 1 else None
        hint = args[0] if len(args) == 1 else Any
    if hasattr(type(value), "to_config_value"):
        return value.to_config_value()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_configdict(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (tuple, list)):
        args = typing.get_args(hint) if typing.get_origin(hint) is tuple else ()
        items = (args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args) or (Any,) * len(value)
        written = (_written(item, v) for item, v in zip(items, value))
        return tuple(v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v for v in written)
    if isinstance(value, collections.abc.Mapping):
        item = typing.get_args(hint)[1] if typing.get_origin(hint) is dict else Any
        return ml_collections.ConfigDict({str(k): _written(item, v) for k, v in value.items()})
    if hint is float and _is_int(value):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _value(instance: Any, field: dataclasses.Field) -> Any:
    """A field's value in ``instance``, or its default when ``instance`` is the dataclass itself."""
    if not isinstance(instance, type):
        return getattr(instance, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{instance.__name__}.{field.name} has no default to write")


def _none_of(hint: Any) -> Any:
    """A None that keeps the field's type for overrides (``FieldReference(None, field_type=...)``)."""
    kind = {pathlib.Path: str}.get(hint, typing.get_origin(hint) or hint)
    if kind in (bool, int, float, str, tuple):
        return ml_collections.FieldReference(None, field_type=kind)
    return None
