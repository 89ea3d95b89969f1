"""The evaluation report: per-image numbers, means, paired t-tests, the Markdown table and the figures.

``results.json``::

    realism_features   {name, description, substitute}: which feature the realism score used
    methods            {m: {label, tuned, pivots, reprojected, images: {name: {mse, lpips, steps, seconds, w_spread}},
                            edits: {e: {name: {ecs, lpips_gw_edit, lpips_edit_cyc, lpips_gw_cyc,
                                               p_before, p_after, t, id, realism, recovered, cycle_error}}}}}
                       (a tuned method: reconstruction by the tuned generators, steps and seconds of the
                       pivot and the tuning together; ecs, recovered and cycle_error NaN, see pipeline)
    common             {reconstruction: [names], edits: {e: [names]}}: the images every method has
    means              {m: {mse, lpips, steps, seconds, ecs/<e>, realism/<e>, t/<e>, id/<e>}}: over ``common``;
                       id: the identity distance 1 - cos(ID(x_edit), ID(x)) to the real image
    ttests             {metric: {m: {statistic, p_value, df, mean_difference, n, ci_low, ci_high, detectable}}}: each
                       method against the reference method (the first), paired over ``common``; ``detectable``:
                       the smallest true difference the test finds with 80% power (``stats.detectable_difference``)
    latents            {means: {m: {w_spread, recovered/<e>, cycle_error/<e>}}, ecs_correlation: {e: {recovered,
                       cycle_error, n}}}: the cycle in latent space (``metrics.latent_cycle``, ``metrics.w_spread``)
                       and the Pearson correlation of ecs with it over every scored (method, image)
    bundle             the bundle, named relative to the working directory (``magec_jax.paths.portable_path``:
                       ``demo/bundle`` when run from the checkout, ``../other/bundle`` beside it, the name
                       alone elsewhere), so that a committed report names no folder of the machine it ran on
    run_seconds        {total, methods: {m: seconds}}: wall time of the invocation that wrote the file,
                       compilation included (work found done by a resumed run costs almost nothing)
    skipped            [{image, reason}]: the images an inversion job skipped (unreadable, over the pixel limit,
                       several frames, too small...), from the methods' ``inversions/summary.json``

``results.md`` holds the table in the paper's layout (rows = methods; MSE, LPIPS, steps, s/image, ECS per
edit, realism per edit, t per targeted edit; a value is bold when it is the best of its column and its paired
t-test against every other method has p below ``significance``) and the p-values. Figures (``figures/``):
``comparison.png`` (paper Fig. 3: per image, one row per method: input | G(w) | G(e(w)) per edit) and
``ecs_<method>_<edit>.png`` (paper Fig. 4b: the best then the worst ecs images: x | G(w) | x_edit | x_cyc).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from magec_jax import images as imio
from magec_jax.evaluation.metrics import edit_consistency, improved_target, latent_cycle, mean_or_nan, w_spread
from magec_jax.evaluation.stats import detectable_difference, paired_ttest, pearson
from magec_jax.evaluation.store import read_scores
from magec_jax.metrics.realism import realism_scores
from magec_jax.paths import portable_path

if TYPE_CHECKING:
    from magec_jax.evaluation.config import EditSpec, EvalConfig, MethodSpec
    from magec_jax.evaluation.pipeline import Evaluator, RealImages

# metric key prefix -> (column title, format, higher is better)
_COLUMNS = {
    "mse": ("MSE", "{:.4f}", False),
    "lpips": ("LPIPS", "{:.3f}", False),
    "steps": ("steps", "{:.0f}", None),
    "seconds": ("s/image", "{:.2f}", None),
    "ecs": ("ECS", "{:.3f}", False),
    "realism": ("realism", "{:.3f}", True),
    "t": ("t", "{:.3f}", True),
    "id": ("ID dist.", "{:.3f}", False),
}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def build(ev: "Evaluator", real: "RealImages", reference: tuple[list[str], np.ndarray]) -> dict[str, Any]:
    """Collects every per-image number from the stage files and computes means and t-tests."""
    cfg = ev.cfg
    methods: dict[str, Any] = {}
    for method in cfg.method_specs:
        inv = ev.inversions(method)
        images = {}
        for name in real.names:
            if ev.has_result(method, name):
                rec = _read_json(inv / f"{name}.json")
                row = dict(mse=rec["losses"]["mse"], lpips=rec["losses"]["lpips"], steps=rec["steps"],
                           seconds=rec["seconds"], w_spread=float(w_spread(ev.latent(method, name).w_LxD[None])[0]))
                if method.tuned:
                    tuned = _read_json(ev.tuned_dir(method) / f"{name}.json")
                    row.update(mse=tuned["losses"]["mse"], lpips=tuned["losses"]["lpips"],
                               steps=row["steps"] + tuned["steps"], seconds=row["seconds"] + tuned["seconds"])
                images[name] = row
        edits = {}
        for spec in cfg.edit_specs:
            scores = read_scores(ev.scores_file(method, spec), ev.extractor.name)
            names = [n for n in real.names if n in scores]
            rows: dict[str, dict] = {}
            if names:
                col = {k: np.asarray([scores[n][k] for n in names], np.float64) for k in next(iter(scores.values()))}
                if not method.reprojects:  # scores cached by an earlier run with re-projections do not count
                    col["lpips_gw_cyc"] = col["lpips_edit_cyc"] = np.full(len(names), np.nan)
                ecs = edit_consistency(col["lpips_gw_cyc"], col["lpips_gw_edit"], col["lpips_edit_cyc"])
                t = improved_target(col["p_before"], col["p_after"])
                realistic = realism_scores(reference[1], col["features"].astype(np.float32), k=cfg.realism.k,
                                           clamp_to_percentile=cfg.realism.clamp_percentile).realism
                recovered = cycle_error = np.full(len(names), np.nan)
                if method.reprojects:
                    w = np.stack([ev.latent(method, n).w_LxD for n in names])
                    again = np.stack([ev.latent(method, n, spec).w_LxD for n in names])
                    recovered, cycle_error = latent_cycle(w, ev.editor.apply(spec.edit, w), again)
                for i, n in enumerate(names):
                    rows[n] = dict(ecs=ecs[i], t=t[i], id=float(col["id_edit"][i]), realism=float(realistic[i]),
                                   recovered=float(recovered[i]), cycle_error=float(cycle_error[i]),
                                   **{k: float(col[k][i]) for k in
                                      ("lpips_gw_edit", "lpips_edit_cyc", "lpips_gw_cyc", "p_before", "p_after")})
            edits[spec.name] = rows
        methods[method.name] = dict(label=method.label, tuned=method.tuned, pivots=method.pivots,
                                    reprojected=method.reprojects, images=images, edits=edits)

    common_rec = [n for n in real.names if all(n in methods[m.name]["images"] for m in cfg.method_specs)]
    common_edits = {s.name: [n for n in real.names
                             if all(n in methods[m.name]["edits"][s.name] for m in cfg.method_specs)]
                    for s in cfg.edit_specs}
    per_image = {m.name: _per_image_columns(methods[m.name], cfg, common_rec, common_edits) for m in cfg.method_specs}
    means = {m: {k: mean_or_nan(v) for k, v in cols.items()} for m, cols in per_image.items()}
    reference_method = cfg.method_specs[0].name
    ttests: dict[str, dict] = {}
    for key in per_image[reference_method]:
        if key in ("steps", "seconds"):
            continue
        ttests[key] = {}
        for m in cfg.method_specs[1:]:
            a, b = per_image[reference_method][key], per_image[m.name][key]
            ok = np.isfinite(a) & np.isfinite(b)
            sd = float(np.std(a[ok] - b[ok], ddof=1)) if ok.sum() > 1 else math.nan
            ttests[key][m.name] = dict(paired_ttest(a[ok], b[ok])._asdict(),
                                       detectable=detectable_difference(sd, int(ok.sum()), alpha=cfg.significance))
    pairwise = {key: _pairwise_p(per_image, key) for key in ttests}
    latents = _latent_summary(methods, cfg, common_rec, common_edits)
    return dict(
        name=cfg.name,
        bundle=portable_path(cfg.bundle),
        images=len(real.names),
        reference_method=reference_method,
        realism_features=dict(name=ev.extractor.name, description=ev.extractor.description,
                              substitute=ev.extractor.substitute, k=cfg.realism.k,
                              clamp_percentile=cfg.realism.clamp_percentile, reference_images=len(reference[0])),
        edits={s.name: dict(kind=s.edit.kind, attribute=s.edit.attribute, component=s.edit.component,
                            layers=s.edit.layers, strength=s.edit.strength, target=s.target) for s in cfg.edit_specs},
        methods=methods,
        common=dict(reconstruction=common_rec, edits=common_edits),
        means=means,
        ttests=ttests,
        pairwise_p=pairwise,
        significance=cfg.significance,
        latents=latents,
        skipped=skipped_images(ev),
    )


def skipped_images(ev: "Evaluator") -> list[dict]:
    """The evaluated images any method's inversion job skipped, ``{image, reason}`` (the first method's reason)."""
    reasons: dict[str, str] = {}
    for method in ev.cfg.method_specs:
        try:
            summary = _read_json(ev.inversions(method) / "summary.json")
        except (OSError, ValueError):
            continue
        for entry in summary.get("skipped", []):
            if isinstance(entry, dict) and "image" in entry:
                reasons.setdefault(str(entry["image"]), str(entry.get("reason", "")))
    return [dict(image=image, reason=reason) for image, reason in sorted(reasons.items())]


def _latent_summary(methods: dict, cfg: "EvalConfig", common_rec: list[str], common_edits: dict[str, list[str]]) -> dict:
    """Means of the latent-cycle numbers per method over the common images, and per edit the Pearson
    correlation of ecs with each of them over every scored (method, image)."""
    means = {}
    for m, method in methods.items():
        means[m] = {"w_spread": mean_or_nan(np.asarray([method["images"][n]["w_spread"] for n in common_rec]))}
        for spec in cfg.edit_specs:
            rows = method["edits"][spec.name]
            for key in ("recovered", "cycle_error"):
                means[m][f"{key}/{spec.name}"] = mean_or_nan(
                    np.asarray([rows[n][key] for n in common_edits[spec.name]], np.float64))
    correlation = {}
    for spec in cfg.edit_specs:
        rows = [methods[m]["edits"][spec.name][n] for m in methods for n in common_edits[spec.name]]
        ecs = np.asarray([r["ecs"] for r in rows], np.float64)
        correlation[spec.name] = {key: pearson(ecs, np.asarray([r[key] for r in rows], np.float64))
                                  for key in ("recovered", "cycle_error")}
        correlation[spec.name]["n"] = len(rows)
    return dict(means=means, ecs_correlation=correlation)


def _per_image_columns(method: dict, cfg: "EvalConfig", common_rec: list[str], common_edits: dict[str, list[str]]) -> dict:
    """Every metric of one method as an array over the common images (NaN where undefined)."""
    cols = {k: np.asarray([method["images"][n][k] for n in common_rec], np.float64)
            for k in ("mse", "lpips", "steps", "seconds")}
    for spec in cfg.edit_specs:
        rows = method["edits"][spec.name]
        names = common_edits[spec.name]
        cols[f"ecs/{spec.name}"] = np.asarray([rows[n]["ecs"] for n in names], np.float64)
    for spec in cfg.edit_specs:
        rows = method["edits"][spec.name]
        cols[f"realism/{spec.name}"] = np.asarray([rows[n]["realism"] for n in common_edits[spec.name]], np.float64)
    for spec in cfg.edit_specs:
        if spec.target:
            rows = method["edits"][spec.name]
            cols[f"t/{spec.name}"] = np.asarray([rows[n]["t"] for n in common_edits[spec.name]], np.float64)
    for spec in cfg.edit_specs:
        rows = method["edits"][spec.name]
        cols[f"id/{spec.name}"] = np.asarray([rows[n]["id"] for n in common_edits[spec.name]], np.float64)
    return cols


def _pairwise_p(per_image: dict[str, dict], key: str) -> dict[str, dict[str, float]]:
    """Two-sided p of the paired t-test between every two methods on one metric."""
    out: dict[str, dict[str, float]] = {}
    for a in per_image:
        out[a] = {}
        for b in per_image:
            if a != b:
                x, y = per_image[a][key], per_image[b][key]
                ok = np.isfinite(x) & np.isfinite(y)
                out[a][b] = paired_ttest(x[ok], y[ok]).p_value
    return out


# ---- Markdown ----------------------------------------------------------------------------------------------


def _title(key: str) -> str:
    kind, _, edit = key.partition("/")
    title = _COLUMNS[kind][0]
    if kind == "realism":
        title += "†"
    return f"{title} {edit}" if edit else title


def _best_is_significant(results: dict, key: str, method: str) -> bool:
    kind = key.partition("/")[0]
    higher = _COLUMNS[kind][2]
    if higher is None or key not in results["pairwise_p"]:
        return False
    values = {m: results["means"][m][key] for m in results["means"]}
    if not all(math.isfinite(v) for v in values.values()):
        return False
    best = max(values, key=values.get) if higher else min(values, key=values.get)
    if best != method:
        return False
    ps = results["pairwise_p"][key][method].values()
    return all(math.isfinite(p) and p < results["significance"] for p in ps)


def markdown(results: dict) -> str:
    """The report as Markdown."""
    methods = list(results["means"])
    keys = list(results["means"][methods[0]])
    feat = results["realism_features"]
    lines = [f"# Evaluation {results['name']}".rstrip(), ""]
    lines.append(f"{results['images']} images; bundle `{portable_path(results['bundle'])}`; reference method "
                 f"`{results['reference_method']}`. Means over the images that every method inverted "
                 f"({len(results['common']['reconstruction'])}); ECS, realism, t and the identity distance after the "
                 "edit (ID dist.: 1 - cos of the identity network's embeddings of x_edit and the real image) over "
                 "the images lacking each edit's target attribute (by the descriptor F on the real image).")
    lines.append("")
    tuned = [results["methods"][m]["label"] for m in methods if results["methods"][m].get("tuned")]
    if tuned:
        lines.append("Tuned methods (pivotal tuning: " + ", ".join(tuned) + ") reconstruct and edit with each "
                     "image's tuned generator; their steps and s/image add the tuning to the pivot's inversion, and "
                     "their ECS is n/a: re-projecting x_edit would mean a new inversion and a new tuning, whose "
                     "generator is not the one that rendered x_edit.")
        lines.append("")
    unprojected = [results["methods"][m]["label"] for m in methods
                   if not results["methods"][m].get("tuned") and not results["methods"][m].get("reprojected", True)]
    if unprojected:
        lines.append("Not re-projected (`ecs` off, to save the re-projection): " + ", ".join(unprojected)
                     + "; their ECS and latent cycle are n/a.")
        lines.append("")
    head = ["method"] + [_title(k) for k in keys]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| " + " | ".join("---" for _ in head) + " |")
    for m in methods:
        cells = [results["methods"][m]["label"]]
        for k in keys:
            v = results["means"][m][k]
            text = _COLUMNS[k.partition("/")[0]][1].format(v) if math.isfinite(v) else "n/a"
            cells.append(f"**{text}**" if _best_is_significant(results, k, m) else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"† realism score (k = {feat['k']}, radii pruned at percentile {feat['clamp_percentile']}, "
                 f"{feat['reference_images']} real reference images) on features `{feat['name']}`: "
                 f"{feat['description']}.")
    lines.append("")
    lines.append("Images scored per edit: " + ", ".join(
        f"{e} ({len(n)}{', target ' + results['edits'][e]['target'] if results['edits'][e]['target'] else ''})"
        for e, n in results["common"]["edits"].items()) + ".")
    lines.append("")
    if len(methods) > 1:
        tested = [k for k in keys if k in results["ttests"]]
        lines.append(f"Paired Student's t-tests against {results['methods'][results['reference_method']]['label']} "
                     "(two-sided p; t statistic; the mean difference reference - method with its 95% confidence "
                     "interval; detectable: the smallest true difference the test finds with 80% power; bold: p < "
                     f"{results['significance']}):")
        lines.append("")
        lines.append("| method | " + " | ".join(_title(k) for k in tested) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in tested) + " |")
        for m in methods[1:]:
            cells = []
            for k in tested:
                r = results["ttests"][k][m]
                if not math.isfinite(r["p_value"]):
                    cells.append("n/a")
                    continue
                text = f"p={r['p_value']:.3g} (t={r['statistic']:.2f}, n={r['n']})"
                if math.isfinite(r.get("ci_low", math.nan)):
                    text += f"; {r['mean_difference']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"
                if math.isfinite(r.get("detectable", math.nan)):
                    text += f"; detectable {r['detectable']:.3g}"
                cells.append(f"**{text}**" if r["p_value"] < results["significance"] else text)
            lines.append(f"| {results['methods'][m]['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "latents" in results:
        lines.extend(_latent_lines(results))
    if "run_seconds" in results:
        run = results["run_seconds"]
        lines.append(f"The invocation that wrote this report took {run['total']:.0f} s (" + ", ".join(
            f"{results['methods'][m]['label']} {sec:.0f} s" for m, sec in run["methods"].items())
            + "); work found done by an earlier invocation is not counted here, while the s/image column is "
            "each inversion's own time, measured when it ran.")
        lines.append("")
    lines.append("Figures: `figures/comparison.png` (per image, one row per method in table order: input | G(w) | "
                 "G(e(w)) for " + ", ".join(results["edits"]) + "); `figures/ecs_<method>_<edit>.png` (best then "
                 "worst ecs: x | G(w) | x_edit | x_cyc).")
    return "\n".join(lines) + "\n"


def _latent_lines(results: dict) -> list[str]:
    """The latent-cycle table and the correlations of ecs with it."""
    lat, edits = results["latents"], list(results["edits"])
    head = ["method", "W+ spread"] + [f"{t} {e}" for e in edits for t in ("recovered", "cycle error")]
    lines = ["The cycle in latent space (means; recovered: the fraction of the edit that the re-projection w' "
             "reproduces along its direction, 1 is all; cycle error: |w' - e(w)| / |e(w) - w|; W+ spread: the root "
             "mean square distance of w's layers from their mean):", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for m, means in lat["means"].items():
        cells = [results["methods"][m]["label"], f"{means['w_spread']:.3f}"]
        cells += [f"{means[f'{t}/{e}']:.3f}" for e in edits for t in ("recovered", "cycle_error")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Pearson correlation of ecs with them over every scored (method, image): " + "; ".join(
        f"{e}: recovered {c['recovered']:+.2f}, cycle error {c['cycle_error']:+.2f} (n = {c['n']})"
        for e, c in lat["ecs_correlation"].items()) + ".")
    lines.append("")
    return lines


# ---- writing ---------------------------------------------------------------------------------------------------


def write(ev: "Evaluator", real: "RealImages", results: dict) -> None:
    """``results.json`` (non-finite numbers as null), ``results.md`` and the figures, atomically."""
    imio.atomic_write_json(ev.out / "results.json", _jsonable(results))
    imio.atomic_write_bytes(ev.out / "results.md", markdown(results).encode())
    _comparison_figure(ev, real, results)
    for method in ev.cfg.method_specs:
        for spec in ev.cfg.edit_specs:
            _ecs_figure(ev, real, results, method, spec)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _comparison_figure(ev: "Evaluator", real: "RealImages", results: dict) -> None:
    names = results["common"]["reconstruction"][: ev.cfg.figures.num_images]
    if not names:
        return
    per_row = 1 + len(ev.cfg.edit_specs)
    rendered = {}
    for method in ev.cfg.method_specs:
        lats = [ev.latent(method, name) for name in names]
        ws = [[lat.w_LxD] + [ev.editor.apply(s.edit, lat.w_LxD) for s in ev.cfg.edit_specs] for lat in lats]
        images = ev.render(method, [n for n in names for _ in range(per_row)], np.concatenate(ws),
                           [lat for lat in lats for _ in range(per_row)])
        rendered[method.name] = images.reshape(len(names), per_row, *images.shape[1:])
    tiles = []
    for i, name in enumerate(names):
        x = imio.to_uint8(ev.load_input(real.path_of[name]))
        for method in ev.cfg.method_specs:
            tiles += [x] + [imio.to_uint8(img) for img in rendered[method.name][i]]
    path = ev.out / "figures" / "comparison.png"
    imio.atomic_write_bytes(path, imio.png_bytes(imio.grid(tiles, columns=1 + per_row)))


def _ecs_figure(ev: "Evaluator", real: "RealImages", results: dict, method: "MethodSpec", spec: "EditSpec") -> None:
    rows = results["methods"][method.name]["edits"][spec.name]
    ranked = sorted((v["ecs"], n) for n, v in rows.items() if math.isfinite(v["ecs"]))
    count = ev.cfg.figures.num_extremes
    chosen = [n for _, n in ranked] if len(ranked) <= 2 * count else [n for _, n in ranked[:count] + ranked[-count:]]
    if not chosen:
        return
    lats = [ev.latent(method, n) for n in chosen]
    again = [ev.latent(method, n, spec) for n in chosen]
    w = np.stack([lat.w_LxD for lat in lats])
    noise = ev.renderer.noise_for(lats)
    x_gw = ev.renderer(w, noise)
    x_edit = ev.renderer(ev.editor.apply(spec.edit, w), noise)
    x_cyc = ev.renderer(ev.editor.apply(spec.edit.inverse(), np.stack([a.w_LxD for a in again])),
                        ev.renderer.noise_for(again))
    tiles = []
    for i, name in enumerate(chosen):
        tiles += [imio.to_uint8(ev.load_input(real.path_of[name]))] + [
            imio.to_uint8(img[i]) for img in (x_gw, x_edit, x_cyc)]
    path = ev.out / "figures" / f"ecs_{method.name}_{spec.name}.png"
    imio.atomic_write_bytes(path, imio.png_bytes(imio.grid(tiles, columns=4)))
