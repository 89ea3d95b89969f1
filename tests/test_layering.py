"""The package's import graph: data flows one way (weights -> models -> losses -> engine -> job -> tools).

Every ``import`` counts, including the ones inside functions: a cycle hidden in a function body is still a
cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("magec_jax", "ports")

# Units of the architecture: a sub-package is one unit, a top-level module is one unit.
# Lower layers may not import these higher ones.
FORBIDDEN = {
    "magec_jax.ops": ("ports", "magec_jax.inversion", "magec_jax.editing", "magec_jax.evaluation",
                      "magec_jax.bundle", "magec_jax.cli", "magec_jax.models"),
    "magec_jax.models": ("ports", "magec_jax.inversion", "magec_jax.editing", "magec_jax.evaluation",
                         "magec_jax.bundle", "magec_jax.cli", "magec_jax.supervision", "magec_jax.faces"),
    "magec_jax.faces": ("ports", "magec_jax.inversion", "magec_jax.editing", "magec_jax.evaluation",
                        "magec_jax.bundle", "magec_jax.cli"),
    "magec_jax.inversion": ("magec_jax.editing", "magec_jax.evaluation", "magec_jax.supervision", "ports",
                            "magec_jax.bundle", "magec_jax.cli"),
    "magec_jax.bundle": ("magec_jax.evaluation", "magec_jax.supervision", "magec_jax.training",
                         "magec_jax.classifier"),
    "magec_jax.editing": ("magec_jax.evaluation", "magec_jax.supervision", "magec_jax.bundle"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "magec_jax" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the project that ``module`` imports, anywhere in its file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _unit_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in known.items():
        for target in _imported(module, path, known):
            a, b = _unit(module), _unit(target)
            if a != b:
                graph[a].add(b)
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_cycles_between_units():
    graph = _unit_graph()
    cycles = {tuple(c) for u in graph if (c := _cycle_through(graph, u))}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in sorted(cycles))


def test_lower_layers_do_not_import_higher_ones():
    graph = _unit_graph()
    bad = {f"{low} imports {high}" for low, banned in FORBIDDEN.items() for high in graph.get(low, ()) if high in banned}
    assert not bad, "; ".join(sorted(bad))


def test_the_package_root_imports_lazily():
    """``magec_jax/__init__`` advertises the public API without importing it: importing a model file must not
    pull in the engine, the bundle or ml-collections (the device suite runs where ml-collections is absent)."""
    code = (
        "import sys, magec_jax.models.stylegan2, magec_jax\n"
        "heavy = [m for m in ('magec_jax.inversion.engine', 'magec_jax.bundle', 'ml_collections') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_checker_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle_through(graph, "a") == ["a", "b", "c", "a"]
    assert _cycle_through(graph, "d") is None
