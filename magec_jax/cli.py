"""The command line shared by the config-driven tools (invert, evaluate, linknet, train_gan, train_classifier).

    python -m magec_jax.TOOL --config FILE.py[:ARG] [--config.FIELD=VALUE ...]
    python -m magec_jax.TOOL --help [--config FILE.py[:ARG]]

**Config files** (``configs/*.py``) define ``get_config(arg=None) -> ml_collections.ConfigDict``; its docstring
gives the command, the runtime and what to expect. ``:ARG`` picks a variant. A config file declares its
variants as a module-level literal dict ``VARIANTS``, from each accepted ARG to a one-line description; a key in
angle brackets (``"<attributes>"``) stands for free text that ``get_config`` reads. An ARG it does not declare
is refused, and a file without ``VARIANTS`` takes none.

**Overrides.** ``--config.a.b=VALUE`` (or ``--config.a.b VALUE``) sets an existing field; VALUE is read by the
field's type: ``true``/``false`` for booleans, numbers, text as it is, a Python literal or a comma-separated
list for tuples (``--config.edit_grid.strengths=-2,0,2``), ``None`` where a field may be None.

**Output location.** Every config tool writes to the field ``out_dir`` (``linknet`` writes into its bundle);
the flag tools (``generate``, ``edit``, ``diagnose``) take ``--out``; the two that assemble a folder
(``ports.convert SRC DST``, ``magec_jax.bundle DST``) name it last. Inputs are named for what they hold
(``images``, ``bundle``, ``latents``).

``--help`` prints the tool's description, its config files in ``configs/`` with their variants, and every field
of the config given (else the tool's example config) with its value; it exits 0. Every mistake (an unknown
field or ARG, a missing config file, a value of the wrong type) and every :class:`MagecError` of the run (bad
values found when the config becomes typed, missing inputs) is one line ``error: ...`` on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections

from magec_jax.errors import ConfigError, MagecError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's config files, beside the package


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of the flag tools: each option's help ends with its default where it has one (not for
    required options, nor for defaults that mean "none": None, empty, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if action.required or default is None or default is False or default is argparse.SUPPRESS or default in ("", []):
            return action.help
        return super()._get_help_string(action)


def error_status(error: Exception) -> int:
    """Prints a failed command's one-line error (``error: <file>: <problem>``) to stderr; returns its exit
    status, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """What a config file says about itself, read without running it.

    Attributes:
      path: the file.
      doc: its docstring.
      variants: its ``VARIANTS`` (ARG -> description); empty when it takes no ARG.
      default_arg: the default of ``get_config``'s argument (what runs without ``:ARG``).
    """

    path: Path
    doc: str
    variants: dict[str, str]
    default_arg: Any = None

    def accepts(self, arg: str) -> bool:
        """Whether ``arg`` is a declared variant (or free text where a ``<placeholder>`` is declared)."""
        return arg in self.variants or any(k.startswith("<") and k.endswith(">") for k in self.variants)

    def variants_line(self) -> str:
        """``magec (default), wo_magec, ...`` or ``none``."""
        names = [f"{k} (default)" if k == self.default_arg else k for k in self.variants]
        return ", ".join(names) or "none"


def read_config_file(path: str | Path) -> ConfigFile:
    """Parses a config file (its docstring, ``VARIANTS`` and ``get_config`` default) without importing it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: {e.msg}") from None
    variants: dict[str, str] = {}
    default = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "VARIANTS" for t in node.targets):
            try:
                variants = dict(ast.literal_eval(node.value))
            except (ValueError, TypeError):
                raise ConfigError(f"{path}: VARIANTS must be a literal dict of ARG -> description") from None
        if isinstance(node, ast.FunctionDef) and node.name == "get_config" and node.args.defaults:
            try:
                default = ast.literal_eval(node.args.defaults[0])
            except ValueError:
                default = None
    return ConfigFile(path, ast.get_docstring(tree) or "", variants, default)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"configs/demo.py:wo_magec"`` -> ``("configs/demo.py", "wo_magec")``; no ``:ARG`` -> ``(path, None)``."""
    path, sep, arg = spec.partition(".py:")
    if not sep:
        return spec, None
    return path + ".py", arg or None


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Runs a config file's ``get_config`` (``spec`` is ``PATH[:ARG]``), applies ``--config.FIELD=VALUE``
    overrides and locks the result; every mistake is a one-line :class:`ConfigError`."""
    path, arg = split_spec(spec)
    info = read_config_file(path)
    if arg is not None and not info.accepts(arg):
        raise ConfigError(f"{path}: unknown variant :{arg} (variants: {info.variants_line()})")
    module_spec = importlib.util.spec_from_file_location(f"magec_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path}: defines no get_config(arg=None)")
    try:
        config = module.get_config() if arg is None else module.get_config(arg)
    except ValueError as e:
        raise ConfigError(f"{spec}: {e}") from None
    for field, text in overrides:
        set_field(config, field, text, path)
    config.lock()
    return config


def set_field(config: ml_collections.ConfigDict, field: str, text: str, source: str = "the config") -> None:
    """Sets the existing field ``a.b.c`` of ``config`` from its command-line text (see the module docstring)."""
    node, keys = config, field.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            where = ".".join(keys[:depth])
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {'.'.join(keys[:depth] + close)}?" if close else "; --help lists the fields"
            raise ConfigError(f"--config.{field}: {source} has no field {key!r}"
                              f"{' in ' + where if where else ''}{hint}")
        if depth < len(keys) - 1:
            node = node[key]
    key = keys[-1]
    if isinstance(node[key], ml_collections.ConfigDict):
        raise ConfigError(f"--config.{field}: a block of fields; set them one by one (--config.{field}.NAME=VALUE)")
    value = parse_value(text, node.get_type(key), f"--config.{field}")
    try:
        node[key] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--config.{field}={text}: {e}") from None


def parse_value(text: str, kind: type, what: str) -> Any:
    """Command-line text as a value of the field type ``kind``; a one-line :class:`ConfigError` otherwise."""
    if text == "None":
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if kind in (tuple, list):
            return kind(_sequence(text))
        return _literal(text)
    except ValueError as e:
        expected = {int: "an integer", float: "a number"}.get(kind)
        raise ConfigError(f"{what}={text}: {f'expected {expected}' if expected else e}") from None


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _sequence(text: str) -> Sequence[Any]:
    """A tuple field's text: a Python literal (``"('a', 'b')"``), else a comma-separated list (``a,b``)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lstrip().startswith(("(", "[")):
            raise ValueError("not a valid Python tuple or list") from None
        return [_literal(part.strip()) for part in text.split(",") if part.strip()]
    return value if isinstance(value, (tuple, list)) else [value]


def _parse_argv(argv: Sequence[str]) -> tuple[bool, str | None, list[tuple[str, str]]]:
    """``(help, config spec, overrides)`` from the command line."""
    help_, spec, overrides = False, None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            help_ = True
            continue
        name, eq, value = arg.partition("=")
        if name == "--config" or name.startswith("--config."):
            if not eq:
                if not args:
                    raise ConfigError(f"{name}: needs a value")
                value = args.pop(0)
            if name == "--config":
                spec = value
            else:
                overrides.append((name[len("--config."):], value))
            continue
        raise ConfigError(f"unexpected argument {arg!r} (expected --config FILE.py[:ARG] and --config.FIELD=VALUE)")
    return help_, spec, overrides


def help_text(prog: str, doc: str, example: str, spec: str | None, overrides: Sequence[tuple[str, str]]) -> str:
    """The ``--help`` page: description, usage, this tool's config files, and the chosen config's fields."""
    lines = [doc.strip(), "", f"usage: python -m {prog} --config FILE.py[:ARG] [--config.FIELD=VALUE ...]", ""]
    tool = [read_config_file(p) for p in sorted(CONFIGS.glob("*.py"))] if CONFIGS.is_dir() else []
    tool = [c for c in tool if f"python -m {prog} " in c.doc + " "]
    if tool:
        lines.append("config files of this tool:")
        width = max(len(_shown(c.path)) for c in tool)
        for c in tool:
            lines.append(f"  {_shown(c.path):<{width}}  {c.doc.splitlines()[0] if c.doc else ''}")
            lines.append(f"  {'':<{width}}  variants: {c.variants_line()}")
        lines.append("")
    spec = spec or (str(CONFIGS / example) if (CONFIGS / example).is_file() else None)
    if spec is None:
        lines.append("give --config FILE.py --help to list a config's fields")
        return "\n".join(lines)
    info = read_config_file(split_spec(spec)[0])
    config = load_config(spec, overrides)
    arg = split_spec(spec)[1]
    lines.append(f"variants of {_shown(info.path)} (ARG): {info.variants_line()}")
    width = max((len(key) for key in info.variants), default=0)
    lines += [f"  :{key:<{width}}  {text}" for key, text in info.variants.items()]
    lines += ["", f"fields of {_shown(info.path)}{':' + arg if arg else ''} (--config.FIELD=VALUE sets one):"]
    lines += [f"  {field} = {value!r}" for field, value in _flatten(config)]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def config_main(run: Callable[[ml_collections.ConfigDict], Any], doc: str, *, prog: str,
                example: str) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv=None) -> exit status`` of a config tool.

    Args:
      run: the tool's ``run(config)``.
      doc: the tool's description (its module docstring).
      prog: the module, e.g. ``"magec_jax.invert"``; config files whose docstring shows ``python -m PROG``
        are listed by ``--help``.
      example: the config file in ``configs/`` whose fields ``--help`` lists when no ``--config`` is given.
    """

    def main(argv: Sequence[str] | None = None) -> int:
        try:
            help_, spec, overrides = _parse_argv(sys.argv[1:] if argv is None else argv)
            if help_:
                print(help_text(prog, doc, example, spec, overrides))
                return 0
            if spec is None:
                raise ConfigError(f"--config FILE.py[:ARG] is required (python -m {prog} --help lists the configs)")
            run(load_config(spec, overrides))
        except MagecError as e:
            return error_status(e)
        return 0

    main.__doc__ = doc
    return main
