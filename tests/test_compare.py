"""magec_jax.evaluation.compare: methods of two separate evaluation runs, paired image by image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from magec_jax.evaluation.compare import compare, main, markdown

EDITS = {"ifg_male": dict(kind="interfacegan", attribute="Male", strength=3.0, target="Male"),
         "gs_c0": dict(kind="ganspace", attribute=None, strength=2.0, target=None)}
REALISM = dict(name="substitute:x", k=3, clamp_percentile=50.0, reference_images=5)


def _run(name, method, rng, images, scored, **realism):
    rows = {n: dict(ecs=float(rng.uniform(0.2, 0.8)), t=float(rng.uniform(-0.2, 0.5)),
                    realism=float(rng.uniform(0.5, 1.5))) for n in scored}
    return dict(name=name, bundle=f"/somewhere/{name}", edits=EDITS, realism_features=dict(REALISM, **realism),
                methods={method: dict(label=method.upper(),
                                      images={n: dict(mse=float(rng.uniform(0.01, 0.03)),
                                                      lpips=float(rng.uniform(0.05, 0.15))) for n in images},
                                      edits={"ifg_male": rows, "gs_c0": dict(rows)})})


def test_comparison_pairs_the_common_images_as_scipy_does():
    rng = np.random.default_rng(0)
    a = _run("first", "wo", rng, ["p", "q", "r", "s", "u"], ["p", "q", "r", "u"])
    b = _run("second", "chosen", rng, ["q", "r", "s", "t", "u", "p"], ["q", "r", "t", "u", "p"])
    c = compare(a, "wo", b, "chosen")
    assert c["edits"] == ["gs_c0", "ifg_male"] and c["realism_compared"]
    assert set(c["metrics"]) == {"mse", "lpips", "ecs/ifg_male", "t/ifg_male", "realism/ifg_male", "ecs/gs_c0",
                                 "realism/gs_c0"}  # no t for an edit without a target
    names = ["p", "q", "r", "s", "u"]
    want = scipy.stats.ttest_rel([a["methods"]["wo"]["images"][n]["lpips"] for n in names],
                                 [b["methods"]["chosen"]["images"][n]["lpips"] for n in names])
    assert c["metrics"]["lpips"]["n"] == 5 and c["metrics"]["lpips"]["p_value"] == pytest.approx(want.pvalue)
    scored = ["p", "q", "r", "u"]
    ecs_a = [a["methods"]["wo"]["edits"]["ifg_male"][n]["ecs"] for n in scored]
    ecs_b = [b["methods"]["chosen"]["edits"]["ifg_male"][n]["ecs"] for n in scored]
    m = c["metrics"]["ecs/ifg_male"]
    assert m["n"] == 4 and m["mean_difference"] == pytest.approx(np.mean(ecs_a) - np.mean(ecs_b))
    assert m["mean_reference"] == pytest.approx(np.mean(ecs_a))
    assert m["p_value"] == pytest.approx(scipy.stats.ttest_rel(ecs_a, ecs_b).pvalue)
    assert m["ci_low"] < m["mean_difference"] < m["ci_high"] and m["detectable"] > 0
    table = markdown(c)
    assert "| ecs/ifg_male | 4 |" in table and "CHOSEN (run second) against WO (run first)" in table


def test_comparison_skips_missing_values_and_realism_of_other_references():
    rng = np.random.default_rng(1)
    a = _run("first", "wo", rng, ["p", "q", "r"], ["p", "q", "r"])
    b = _run("second", "chosen", rng, ["p", "q", "r"], ["p", "q", "r"], reference_images=6)
    b["methods"]["chosen"]["edits"]["ifg_male"]["q"]["t"] = None  # as JSON stores a NaN t
    c = compare(a, "wo", b, "chosen")
    assert not c["realism_compared"] and not any(k.startswith("realism") for k in c["metrics"])
    assert c["metrics"]["t/ifg_male"]["n"] == 2 and c["metrics"]["ecs/ifg_male"]["n"] == 3
    assert "Realism not compared" in markdown(c)


def test_comparison_refuses_an_edit_defined_differently():
    rng = np.random.default_rng(2)
    a = _run("first", "wo", rng, ["p", "q"], ["p", "q"])
    b = _run("second", "chosen", rng, ["p", "q"], ["p", "q"])
    b["edits"] = dict(EDITS, ifg_male=dict(EDITS["ifg_male"], strength=6.0))
    with pytest.raises(ValueError, match="ifg_male"):
        compare(a, "wo", b, "chosen")


def test_cli_writes_the_comparison_and_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(3)
    (tmp_path / "runs").mkdir()
    a, b = tmp_path / "a.json", tmp_path / "runs" / "b.json"
    a.write_text(json.dumps(_run("first", "wo", rng, ["p", "q", "r"], ["p", "q", "r"])))
    b.write_text(json.dumps(_run("second", "chosen", rng, ["p", "q", "r"], ["p", "q", "r"])))
    out = tmp_path / "c.json"
    monkeypatch.chdir(tmp_path)
    assert main([f"{a}:wo", f"{b}:chosen", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert math.isfinite(saved["metrics"]["mse"]["p_value"])
    # Paths relative to the working directory, whatever was given: no folder of this machine is recorded.
    assert (saved["reference"]["file"], saved["other"]["file"]) == ("a.json", "runs/b.json")
    assert (saved["reference"]["bundle"], saved["other"]["bundle"]) == ("first", "second")  # "/somewhere/<name>"
    assert str(tmp_path) not in out.read_text()
    assert "| mse | 3 |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"x": 1}))
    for args, message in (([f"{a}", f"{b}:chosen"], "expected RESULTS.json:METHOD"),
                          ([f"{tmp_path / 'none.json'}:wo", f"{b}:chosen"], "none.json: no such file"),
                          ([f"{tmp_path / 'bad.json'}:wo", f"{b}:chosen"], "bad.json: not a readable results.json"),
                          ([f"{tmp_path / 'other.json'}:wo", f"{b}:chosen"], "other.json: not an evaluation results.json"),
                          ([f"{a}:magec", f"{b}:chosen"], "no method 'magec'")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    b_edits = json.loads(b.read_text())
    b_edits["edits"]["ifg_male"]["strength"] = 1.0
    b.write_text(json.dumps(b_edits))
    assert main([f"{a}:wo", f"{b}:chosen"]) == 2
    assert "cannot be compared with" in capsys.readouterr().err
