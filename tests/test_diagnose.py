"""The MAGEC diagnosis: LinkNet-vs-boundary consistency against a hand-built LinkNet, and the CLI's loss
balance at given latents."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from bundle_tools import TINY, tiny_bundle
from magec_jax import diagnose
from magec_jax.bundle import load_bundle
from magec_jax.images import png_bytes
from magec_jax.models.face_attributes import ATTRIBUTE_NAMES
from magec_jax.models.linknet import LinkNetConfig
from magec_jax.paths import portable_path
from magec_jax.supervision.diagnostics import linknet_consistency
from magec_jax.supervision.samples import mapped_ws
from magec_jax.weights import Converted, save_converted

K, L, D = len(ATTRIBUTE_NAMES), TINY.num_ws, TINY.w_dim


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("diag"))


def _aligned_linknet(path, directions_KxD, w_avg_D, scale):
    """LinkNet logit k = scale * sum over layers of n_k . (w_l - w_avg): exactly the boundary's score."""
    kernel = scale * np.broadcast_to(directions_KxD.T[None], (L, D, K)).reshape(L * D, K)
    bias = -scale * L * (directions_KxD @ w_avg_D)
    variables = {"params": {"fc": {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}}}
    cfg = LinkNetConfig(num_ws=L, w_dim=D, num_outputs=K)
    save_converted(path / "linknet", Converted(kind="linknet", config=cfg.to_dict(), variables=variables),
                   overwrite=True)


@pytest.mark.slow
def test_linknet_consistency_of_an_aligned_linknet(bundle_path):
    bundle = load_bundle(bundle_path)
    dirs = np.stack([bundle.directions()[a] for a in ATTRIBUTE_NAMES]).astype(np.float64)
    w_avg = bundle.w_avg().astype(np.float64)
    scale, alpha = 0.5, 3.0
    _aligned_linknet(bundle_path, dirs, w_avg, scale)
    report = linknet_consistency(load_bundle(bundle_path), alpha=alpha, num_samples=600, batch_size=200)

    cfg, variables = bundle.generator
    w = mapped_ws(cfg, variables, jax.random.key(0), num_samples=600, batch_size=200, w_avg_D=bundle.w_avg(),
                  truncation_psi=1.0).astype(np.float64)
    score_NxK = (w - w_avg) @ dirs.T  # LinkNet logit / (scale * L)
    assert report["attributes"] == list(ATTRIBUTE_NAMES) and report["num_samples"] == 600
    for k, name in enumerate(ATTRIBUTE_NAMES):
        row = report["per_attribute"][name]
        assert row["w_std_along_boundary"] == pytest.approx(score_NxK[:, k].std(), rel=1e-4)
        assert row["alpha_in_std"] == pytest.approx(alpha / score_NxK[:, k].std(), rel=1e-4)
        assert row["positive_rate"] == pytest.approx(np.mean(score_NxK[:, k] > 0), abs=2 / 600)
        # Moving alpha along n_k changes logit j by scale * L * alpha * n_k . n_j: the flip succeeds when the
        # sample's own score is within alpha of the boundary.
        assert row["flip_rate"] == pytest.approx(np.mean(np.abs(score_NxK[:, k]) < alpha), abs=2 / 600)
        want = scale * L * dirs[k] @ dirs.T
        np.testing.assert_allclose([row["sensitivity"][n] for n in ATTRIBUTE_NAMES], want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cli_reports_loss_balance_at_latents(bundle_path, tmp_path, capsys):
    bundle = load_bundle(bundle_path)
    rng = np.random.default_rng(0)
    for i in range(3):  # latents near w_avg, with the records the inversion job writes
        w = bundle.w_avg()[None, None] + 0.3 * rng.standard_normal((1, L, D)).astype(np.float32)
        np.savez(tmp_path / f"img{i}.npz", w=w)
        image = tmp_path / f"img{i}.png"
        image.write_bytes(png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        (tmp_path / f"img{i}.json").write_text(json.dumps({"image": str(image)}))
    out = tmp_path / "diagnosis.json"
    code = diagnose.main(["--bundle", str(bundle_path), "--latents", str(tmp_path), "--num-samples", "200",
                          "--batch-size", "2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out.splitlines()  # a readable summary, the JSON in the file
    assert printed == diagnose.summary_lines(report) + [f"report -> {out}"]
    assert any(line.lstrip().startswith("phase 2 (mse 0.5") and "% of the weighted gradient" in line for line in printed)
    balance = report["loss_balance"]
    assert balance["num_images"] == 3 and len(balance["latents"]) == 3
    # Paths as magec_jax.paths names them (the working directory is the checkout, the files are elsewhere).
    assert report["bundle"] == portable_path(bundle_path) and balance["latents"][0] == "img0.npz"
    assert str(tmp_path) not in out.read_text() and str(bundle_path) not in out.read_text()
    assert [p["weights"]["mse"] for p in balance["phases"]] == [1e-3, 0.5]
    for phase in balance["phases"]:
        norms = phase["weighted_grad_norm"]
        assert all(v > 0 for v in norms.values())
        assert 0 < phase["magec_share"] < 1
    assert balance["phases"][0]["weighted_grad_norm"]["mse"] == pytest.approx(
        balance["phases"][1]["weighted_grad_norm"]["mse"] * 1e-3 / 0.5, rel=1e-5)

    (tmp_path / "img0.json").unlink()
    assert diagnose.main(["--bundle", str(bundle_path), "--latents", str(tmp_path / "img0.npz")]) == 2
    assert "img0.npz: no inversion record" in capsys.readouterr().err
