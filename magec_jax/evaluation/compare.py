"""Paired comparison of two methods evaluated in SEPARATE runs on the same images (``results.json`` files).

    python -m magec_jax.evaluation.compare docs/eval_demo/results.json:wo_magec \
        runs/eval_demo48/results.json:magec_1e-3 --out docs/eval_demo/compare.json

An evaluation run compares the methods it ran itself; this compares a method of one run with a method of
another (a setting chosen later, a run on another machine), image by image, as the run's own report would:
over the images both have, each metric's means and the paired t-test of reference minus other (the first
argument is the reference), with its 95% confidence interval and the smallest difference it could detect at
80% power. Metrics: MSE and LPIPS of the reconstructions; per edit both runs define identically, ECS, t and,
when both runs scored realism with the same feature, k and references, realism. A run whose edit of the same
name differs (kind, attribute, strength, target, ...) is refused; the two bundles are recorded, not checked
(their paths need not match across machines).

Paths in the comparison (each side's ``file`` and ``bundle``) are named relative to the working directory
(``magec_jax.paths.portable_path``: ``../x`` beside it, the name alone elsewhere), so that a committed
comparison names no folder of the machine it was made on; a run's bundle recorded as an absolute path by an
older report is rewritten the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from magec_jax.cli import error_status
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.evaluation.stats import detectable_difference, paired_ttest
from magec_jax.images import atomic_write_json
from magec_jax.paths import portable_path

_REALISM_KEYS = ("name", "k", "clamp_percentile", "reference_images")


def _column(rows: dict[str, dict], names: list[str], key: str) -> np.ndarray:
    return np.asarray([math.nan if rows[n].get(key) is None else rows[n][key] for n in names], np.float64)


def compare(reference: dict, reference_method: str, other: dict, other_method: str, *,
            significance: float = 0.05) -> dict[str, Any]:
    """Paired tests of ``other_method`` of the run ``other`` against ``reference_method`` of ``reference``.

    Args:
      reference, other: two ``results.json`` contents (``magec_jax.evaluation.report``).
      reference_method, other_method: a method of each.
      significance: the tests' level (for ``detectable``).

    Returns:
      ``{reference: {method, label, bundle}, other: {...}, edits: [names compared], metrics: {key: {n,
      mean_reference, mean_other, statistic, p_value, df, mean_difference, ci_low, ci_high, detectable}}}``,
      keys ``mse``, ``lpips``, ``ecs/<edit>``, ``t/<edit>`` (edits with a target) and ``realism/<edit>``.

    Raises:
      KeyError: a method is not in its run.
      ValueError: the runs share no edit with the same definition but define one of them differently.
    """
    ref, oth = reference["methods"][reference_method], other["methods"][other_method]
    shared = sorted(set(reference["edits"]) & set(other["edits"]))
    differing = [e for e in shared if reference["edits"][e] != other["edits"][e]]
    if differing:
        raise ValueError(f"the runs define edit(s) {differing} differently: "
                         f"{[reference['edits'][e] for e in differing]} against {[other['edits'][e] for e in differing]}")
    same_realism = all(reference["realism_features"].get(k) == other["realism_features"].get(k) for k in _REALISM_KEYS)
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = [n for n in ref["images"] if n in oth["images"]]
    for key in ("mse", "lpips"):
        columns[key] = (_column(ref["images"], names, key), _column(oth["images"], names, key))
    for edit in shared:
        names = [n for n in ref["edits"][edit] if n in oth["edits"][edit]]
        kinds = ["ecs"] + (["t"] if reference["edits"][edit].get("target") else []) + (["realism"] if same_realism else [])
        for kind in kinds:
            columns[f"{kind}/{edit}"] = (_column(ref["edits"][edit], names, kind), _column(oth["edits"][edit], names, kind))
    metrics = {}
    for key, (a, b) in columns.items():
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        sd = float(np.std(a - b, ddof=1)) if a.size > 1 else math.nan
        metrics[key] = dict(mean_reference=float(a.mean()) if a.size else math.nan,
                            mean_other=float(b.mean()) if b.size else math.nan,
                            **paired_ttest(a, b)._asdict(),
                            detectable=detectable_difference(sd, int(a.size), alpha=significance))
    return dict(reference=_describe(reference, reference_method), other=_describe(other, other_method), edits=shared,
                realism_compared=same_realism, significance=significance, metrics=metrics)


def _describe(run: dict, method: str) -> dict:
    bundle = run.get("bundle")
    return dict(method=method, label=run["methods"][method].get("label", method),
                bundle=portable_path(bundle) if isinstance(bundle, str) else bundle, name=run.get("name"))


def markdown(comparison: dict) -> str:
    """The comparison as a Markdown table, one row per metric."""
    ref, oth = comparison["reference"], comparison["other"]
    lines = [f"{oth['label']} (run {oth['name']}) against {ref['label']} (run {ref['name']}); difference = "
             f"{ref['label']} - {oth['label']} (for ECS, positive favours {oth['label']}):", "",
             f"| metric | n | {ref['label']} | {oth['label']} | difference [95% CI] | p | detectable |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, m in comparison["metrics"].items():
        lines.append(f"| {key} | {m['n']} | {m['mean_reference']:.4g} | {m['mean_other']:.4g} | "
                     f"{m['mean_difference']:+.3g} [{m['ci_low']:+.3g}, {m['ci_high']:+.3g}] | {m['p_value']:.3g} | "
                     f"{m['detectable']:.3g} |")
    if not comparison["realism_compared"]:
        lines.append("")
        lines.append("Realism not compared: the runs scored it with different features or references.")
    return "\n".join(lines) + "\n"


def _side(spec: str) -> tuple[Path, dict, str]:
    """``RESULTS.json:METHOD`` -> (path, results, method), with one-line errors naming the file."""
    path_text, sep, method = spec.rpartition(":")
    if not sep or not path_text or not method:
        raise MagecError(f"{spec}: expected RESULTS.json:METHOD")
    path = Path(path_text)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(path, f"not a readable results.json ({e})") from None
    if not isinstance(results, dict) or not {"methods", "edits", "realism_features"} <= set(results):
        raise FileFormatError(path, "not an evaluation results.json (no methods, edits or realism_features)")
    if method not in results["methods"]:
        raise FileFormatError(path, f"no method {method!r}; it has {sorted(results['methods'])}")
    return path, results, method


def main(argv: list[str] | None = None) -> int:
    """The command line: prints the table, writes the JSON with ``--out``; 0, or 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="python -m magec_jax.evaluation.compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="RESULTS.json:METHOD, the reference")
    parser.add_argument("other", help="RESULTS.json:METHOD, compared with it")
    parser.add_argument("--significance", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        ref_path, reference, ref_method = _side(args.reference)
        oth_path, other, oth_method = _side(args.other)
        try:
            comparison = compare(reference, ref_method, other, oth_method, significance=args.significance)
        except ValueError as e:
            raise MagecError(f"{oth_path}: cannot be compared with {ref_path}: {e}") from None
    except MagecError as e:
        return error_status(e)
    comparison["reference"]["file"], comparison["other"]["file"] = portable_path(ref_path), portable_path(oth_path)
    print(markdown(comparison), end="")
    if args.out:
        atomic_write_json(args.out, comparison)
        print(f"comparison -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
