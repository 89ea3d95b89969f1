"""StyleFlow for a bundle, end to end: the training job (``magec_jax.styleflow``) on the tiny face bundle, the
prior in the bundle, ``magec_jax.edit --styleflow``, the evaluation's relative StyleFlow edits and the
``magec_styleflow`` term in an inversion. One module fixture trains the prior (half the epochs, then resumed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle_tools import tiny_bundle
from magec_jax.bundle import load_bundle
from magec_jax.edit import main as edit_main
from magec_jax.editing.render import Edit, Editor, Renderer
from magec_jax.editing.styleflow import bundle_editor
from magec_jax.errors import MagecError
from magec_jax.evaluation.config import EditFields
from magec_jax.inversion.engine import invert_arrays
from magec_jax.inversion.settings import InversionSettings, Phase
from magec_jax.inversion.terms import bind_terms
from magec_jax.models import styleflow as sf
from magec_jax.styleflow import main as styleflow_main
from magec_jax.supervision import styleflow as train
from magec_jax.weights import load_converted


@pytest.fixture(scope="module")
def flow_bundle(tmp_path_factory) -> tuple[Path, dict, Path]:
    """The tiny face bundle with a StyleFlow prior trained by the job (half the epochs, then resumed)."""
    root = tmp_path_factory.mktemp("styleflow")
    bundle = tiny_bundle(root)
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "styleflow_tiny.py"),
            f"--config.bundle={bundle}", f"--config.out_dir={root / 'run'}"]
    assert styleflow_main(args + ["--config.flow.epochs=1"]) == 0
    first = [json.loads(ln) for ln in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert styleflow_main(args) == 0
    summary = [json.loads(ln) for ln in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return bundle, {"first": first, "all": summary}, root


@pytest.mark.slow
def test_training_job_stores_the_prior_in_the_bundle(flow_bundle):
    bundle_path, metrics, root = flow_bundle
    bundle = load_bundle(bundle_path)
    assert bundle.manifest["styleflow"] == "styleflow"
    converted = load_converted(bundle_path / "styleflow", kind=sf.KIND)
    editing = converted.manifest["extra"]["editing"]
    assert editing["context_names"] == ["gender_logit", "expected_age", "happy_log_odds"]
    assert converted.config["w_dim"] == 32 and converted.config["hidden_dims"] == [32, 32]
    assert editing["edit_layers"]["expected_age"] == list(range(8))
    steps = [m["step"] for m in metrics["all"] if m["kind"] == "train"]
    assert steps == [4, 6, 8, 12]  # 6 steps per epoch; the second run resumed at step 6 (the first one's end)
    heldout = [m for m in metrics["all"] if m["kind"] == "heldout"]
    assert len(heldout) == 2 and heldout[-1]["step"] == 12 and np.isfinite(heldout[-1]["heldout_nll"])
    assert all(np.isfinite(m["nll"]) and m["nfe"] >= 8 for m in metrics["all"] if m["kind"] == "train")
    editor = bundle_editor(bundle)
    assert editor.context_source["outputs"] == editing["context_names"]
    # another architecture in the same run folder is refused
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "styleflow_tiny.py"),
            f"--config.bundle={bundle_path}", f"--config.out_dir={root / 'run'}", "--config.flow.hidden_dims=16"]
    assert styleflow_main(args) == 2


@pytest.mark.slow
def test_edit_command_styleflow_rows(flow_bundle, tmp_path, capsys):
    bundle_path, _, _ = flow_bundle
    bundle = load_bundle(bundle_path)
    cfg = bundle.generator[0]
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        w = bundle.w_avg()[None, None].repeat(cfg.num_ws, 1) + 0.3 * rng.standard_normal((1, cfg.num_ws, cfg.w_dim))
        np.savez(tmp_path / f"{name}.npz", w=w.astype(np.float32))
    out = tmp_path / "edits"
    argv = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--bundle", str(bundle_path), "--out", str(out),
            "--styleflow", "expected_age=30,expected_age=60", "--styleflow", "gender_logit=-20,happy_log_odds=1"]
    assert edit_main(argv) == 0
    err = capsys.readouterr().err
    assert "StyleFlow gender_logit=-20 is outside the range seen in training" in err
    record = json.loads((out / "a.json").read_text())
    assert record["rows"] == [["sf_expected_age_30", "sf_expected_age_30_expected_age_60"],
                              ["sf_gender_logit_-20", "sf_gender_logit_-20_happy_log_odds_1"]]
    assert record["styleflow"]["context_from"] == "descriptor on G(w)"
    w0 = np.load(tmp_path / "a.npz")["w"][0]
    edited = np.load(out / "a" / "sf_expected_age_30.npz")["w"][0]
    assert cfg.num_ws == 8 and not np.allclose(edited, w0)  # the rule's 4-32 px rows are all 8 rows here
    # the contexts from a file, one line for a file that lacks one
    contexts = {n: {"gender_logit": 1.0, "expected_age": 40.0, "happy_log_odds": 0.0} for n in ("a", "b")}
    (tmp_path / "ctx.json").write_text(json.dumps(contexts))
    assert edit_main(argv[:-4] + ["--out", str(tmp_path / "file"), "--styleflow", "expected_age=30",
                                  "--styleflow-attributes", str(tmp_path / "ctx.json")]) == 0
    assert json.loads((tmp_path / "file" / "a.json").read_text())["styleflow"]["context_from"] == "file"
    del contexts["b"]["expected_age"]
    (tmp_path / "ctx.json").write_text(json.dumps(contexts))
    assert edit_main(argv[:-4] + ["--out", str(tmp_path / "bad"), "--styleflow", "expected_age=30",
                                  "--styleflow-attributes", str(tmp_path / "ctx.json")]) == 2
    assert "'b' lacks a number for 'expected_age'" in capsys.readouterr().err
    assert edit_main(argv[:-4] + ["--out", str(tmp_path / "bad"), "--styleflow", "Age=30"]) == 2
    assert "valid: gender_logit, expected_age, happy_log_odds" in capsys.readouterr().err


@pytest.mark.slow
def test_magec_styleflow_term_inverts_with_the_bundle_prior(flow_bundle):
    """The term is available with a bundle whose prior was trained on its F, alone or beside the InterFaceGAN
    MAGEC term, and an inversion with it runs and reports it."""
    bundle_path, _, _ = flow_bundle
    nets = load_bundle(bundle_path).networks()
    assert nets.styleflow is not None and nets.styleflow.layers_KxL.shape == (3, 8)
    assert "magec_styleflow" not in bind_terms(nets, InversionSettings())  # bound only where a phase weights it
    np.testing.assert_array_equal(nets.styleflow.signs_K, [1.0, -1.0, 1.0])  # Young falls as the age rises
    settings = InversionSettings(phases=(Phase(3, dict(mse=1.0, magec=1e-2, magec_styleflow=1e-2)),),
                                 styleflow_steps=2, chunk_steps=3)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out = invert_arrays(nets, images, settings, batch_size=2)
    assert set(out["terms"]) >= {"mse", "magec", "magec_styleflow"}
    assert np.all(np.isfinite(out["terms"]["magec_styleflow"])) and not out["failed"].any()


@pytest.mark.slow
def test_relative_styleflow_edits_for_the_evaluation(flow_bundle):
    """The evaluation's StyleFlow edit moves the image's own context value (F on G(w)) by ``strength`` training
    standard deviations; its inverse moves it back; a name the prior lacks is one line."""
    bundle_path, _, _ = flow_bundle
    bundle = load_bundle(bundle_path)
    cfg, variables = bundle.generator
    flow = bundle_editor(bundle)
    from_images = train.descriptor_context_fn(bundle, flow.context_source)
    renderer = Renderer(bundle.networks().synthesize, bundle.networks().generator, bundle.networks().noise_init, 4)
    editor = Editor(cfg.num_ws, cfg.w_dim, {}, styleflow=flow, contexts=lambda ws: from_images(renderer(ws)))
    edit = EditFields(kind="styleflow", attribute="expected_age", strength=2.0, target="Young").edit
    assert edit.label == "sf_expected_age_+2sd" and edit.inverse().strength == -2.0
    editor.check(edit)
    w = np.repeat(bundle.w_avg()[None, None], cfg.num_ws, 1) + 0.2 * np.random.default_rng(1).standard_normal(
        (2, cfg.num_ws, cfg.w_dim)).astype(np.float32)
    ctx = from_images(renderer(w))
    k = flow.context_names.index("expected_age")
    moved = ctx[:, k] + 2.0 * flow.std[k]
    np.testing.assert_allclose(editor.apply(edit, w), flow.edit_sequence(w, ctx, (("expected_age", moved),))[0],
                               atol=1e-6)
    with pytest.raises(MagecError, match="no StyleFlow attribute 'Age'"):
        editor.check(Edit("styleflow", 1.0, attribute="Age"))
    with pytest.raises(MagecError, match="needs a prior"):
        Editor(cfg.num_ws, cfg.w_dim, {}).check(edit)
