"""Supervision: samplers, LinkNet training, and ``python -m magec_jax.linknet`` end to end on a 32x32 bundle
(random tiny StyleGAN2, real faceres+emotion descriptor): LinkNet, boundaries, GANSpace, sample cache."""

from __future__ import annotations

import functools
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bundle_tools import TINY, face_models, tiny_generator
from conftest import REPO
from magec_jax.bundle import build_bundle, label_source, load_bundle, update_manifest
from magec_jax.configdicts import from_configdict
from magec_jax.editing.directions import load_ganspace
from magec_jax.errors import MagecError
from magec_jax.inversion.magec_loss import binarize
from magec_jax.models import stylegan2
from magec_jax.models.face_attributes import ATTRIBUTE_NAMES
from magec_jax.supervision import job as sup_job
from magec_jax.supervision.samples import sample_ws
from magec_jax.supervision.train import (TrainSettings, balanced_accuracy, class_weights, train_linknet,
                                         weighted_descriptor_loss)
from magec_jax.weights import load_converted


def _config(name: str, arg: str = "both"):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    return tiny_generator(tmp_path_factory.mktemp("gen") / "generator")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, generator_dir):
    """A 32x32 bundle with a descriptor and no LinkNet or directions yet."""
    root = tmp_path_factory.mktemp("bundle")
    faceres, emotion = face_models(root / "parts")
    descriptor = dict(kind="face_attributes", faceres=faceres, emotion=emotion)
    return build_bundle(root / "bundle", generator=generator_dir, identity=("faceres", faceres),
                        descriptor=descriptor, w_avg_samples=256).path


def test_mixed_sampler_draws_a_w_per_layer_and_single_repeats_one(generator_dir):
    _, variables = stylegan2.load_generator(generator_dir)
    key, indices = jax.random.key(1), jnp.arange(4, dtype=jnp.int32)
    w_avg = jnp.zeros((TINY.w_dim,))
    sample = jax.jit(functools.partial(sample_ws, TINY), static_argnames="per_layer")
    mixed = np.asarray(sample(variables, key, indices, w_avg, 1.0, per_layer=True))
    single = np.asarray(sample(variables, key, indices, w_avg, 1.0, per_layer=False))
    assert mixed.shape == single.shape == (4, TINY.num_ws, TINY.w_dim)
    np.testing.assert_array_equal(single, np.broadcast_to(single[:, :1], single.shape))
    row_gaps = np.abs(mixed[:, :, None] - mixed[:, None, :]).max(-1)  # [B, L, L]
    assert row_gaps[:, ~np.eye(TINY.num_ws, dtype=bool)].min() > 1e-3
    # sample i depends on its index only, not on the batch it is drawn in. Another batch size is another compiled
    # program whose matrix products may sum in another order (per instruction set): a few float32 ulps per
    # mapping layer, bounded at 1e-5 of the magnitude; another sample's latent differs by order 1.
    again = np.asarray(sample(variables, key, indices[2:], w_avg, 1.0, per_layer=True))
    np.testing.assert_allclose(again, mixed[2:], rtol=0, atol=1e-5 * np.abs(mixed).max())
    half = np.asarray(sample(variables, key, indices, w_avg + 1.0, 0.5, per_layer=False))
    np.testing.assert_allclose(half, 1.0 + 0.5 * (single - 1.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_kind", ["bce", "softmax_ce"])
def test_linknet_learns_a_linear_labelling(loss_kind):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2000, 4, 8)).astype(np.float32)
    logits = w.reshape(2000, -1) @ rng.standard_normal((32, 3)).astype(np.float32)  # a linear labelling
    targets = np.asarray(binarize(jnp.asarray(logits), loss_kind))
    lines = []
    result = train_linknet(w, targets, loss_kind=loss_kind, settings=TrainSettings(batch_size=16),
                           key=jax.random.key(0), log=lines.append, attribute_names=("a", "b", "c"))
    assert (result.num_train, result.num_val) == (1800, 200)
    assert result.variables["params"]["fc"]["kernel"].shape == (32, 3)
    assert result.val_accuracy.shape == (10, 3) and result.train_loss.shape == (10,)
    assert np.all(np.diff(result.train_loss) < 0) and result.train_loss[-1] < 0.7 * result.initial_loss
    assert result.val_accuracy_mean[-1] > 0.9, result.val_accuracy_mean
    assert len(lines) == 11 and "epoch 10/10" in lines[-1]
    np.testing.assert_allclose(result.positive_rate, targets.mean(0))
    assert result.val_balanced_accuracy.shape == (3,) and np.all(result.val_balanced_accuracy > 0.85)


def test_balanced_accuracy_is_not_fooled_by_a_constant_guess():
    targets = np.array([[1, 1], [1, 0], [1, 0], [0, 0]], np.float32)
    constant = np.ones((4, 2), np.float32)  # "always present"
    np.testing.assert_allclose(balanced_accuracy(constant, targets, "bce"), [0.5, 0.5])
    logits = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    # attribute 0: recall of present 2/3, of absent 1/1; attribute 1: 1/1 and 2/3
    np.testing.assert_allclose(balanced_accuracy(logits, targets, "bce"), [5 / 6, 5 / 6])
    assert np.isnan(balanced_accuracy(constant, np.ones((4, 2), np.float32), "bce")).all()
    onehot = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
    np.testing.assert_allclose(balanced_accuracy(np.eye(3)[[0, 1, 1, 2]], onehot, "softmax_ce"), [0.5, 1.0, 1.0])


def test_class_weights_equalise_the_classes_and_average_one():
    targets = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], np.float32)  # positive rates 3/4 and 1/4
    w = class_weights(targets, "bce")
    np.testing.assert_allclose(w, [[2.0, 2 / 3], [2 / 3, 2.0]])
    per_element = targets * w[1] + (1 - targets) * w[0]
    np.testing.assert_allclose(per_element.mean(0), 1.0)  # the loss keeps its scale
    np.testing.assert_allclose((per_element * targets).sum(0), (per_element * (1 - targets)).sum(0))
    logits = np.array([[0.3, -1.0], [2.0, 0.5], [-0.2, 1.0], [0.1, -2.0]], np.float32)
    bce = -(targets * np.log(1 / (1 + np.exp(-logits))) + (1 - targets) * np.log(1 / (1 + np.exp(logits))))
    np.testing.assert_allclose(weighted_descriptor_loss(logits, targets, jnp.asarray(w), "bce"),
                               (bce * per_element).mean(1), rtol=1e-5)
    onehot = np.eye(3, dtype=np.float32)[[0, 0, 0, 1]]  # class 2 never occurs
    np.testing.assert_allclose(class_weights(onehot, "softmax_ce"), [2 / 3, 2.0, 0.0])
    with pytest.raises(MagecError, match="one class only"):
        class_weights(np.ones((4, 2), np.float32), "bce")


@pytest.mark.slow
def test_class_balanced_loss_raises_balanced_accuracy_on_rare_labels():
    """A noisy linear labelling with a 6% positive class: the plain loss leans to the majority, the class-balanced
    one recovers the rare class (higher balanced accuracy, at some cost in plain accuracy)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3000, 4, 8)).astype(np.float32)
    score = w.reshape(3000, -1) @ rng.standard_normal((32, 1)).astype(np.float32) / np.sqrt(32)
    noisy = score + rng.normal(0.0, 0.5, score.shape).astype(np.float32)
    targets = (noisy > np.quantile(noisy, 0.94)).astype(np.float32)
    results = {balanced: train_linknet(w, targets, loss_kind="bce", key=jax.random.key(0),
                                       settings=TrainSettings(batch_size=16, class_balanced=balanced))
               for balanced in (False, True)}
    plain, weighted = results[False].val_balanced_accuracy[0], results[True].val_balanced_accuracy[0]
    assert weighted > plain + 0.15 and weighted > 0.8, (plain, weighted)


def test_attribute_scores_rank_softmax_classes_by_log_odds():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scores = sup_job.attribute_scores(logits, "softmax_ce")
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(scores, np.log(p / (1 - p)), rtol=1e-5)
    np.testing.assert_array_equal(sup_job.attribute_scores(logits, "bce"), logits)


@pytest.mark.slow
def test_end_to_end_linknet_boundaries_ganspace_and_cache(bundle_dir):
    config = _config("linknet_tiny")
    config.bundle = str(bundle_dir)
    config.ganspace.enabled = True
    lines = []
    summary = sup_job.run(config, log=lines.append)
    n, k, cfg = 96, len(ATTRIBUTE_NAMES), TINY
    assert summary["rendered"] == {"mixed": n, "single": n}
    assert any("samples (mixed): 96/96 ready" in line for line in lines)
    assert sum("linknet: epoch" in line for line in lines) == 2

    # LinkNet: converted format, manifest entry, report
    link = load_converted(bundle_dir / "linknet", kind="linknet")
    assert link.config == dict(num_ws=cfg.num_ws, w_dim=cfg.w_dim, num_outputs=k)
    assert link.variables["params"]["fc"]["kernel"].shape == (cfg.num_ws * cfg.w_dim, k)
    extra = link.manifest["extra"]
    assert extra["N"] == n and extra["epochs"] == 2 and extra["seed"] == 0 and extra["num_val"] == 10
    assert set(extra["accuracies"]) == set(extra["balanced_accuracies"]) == set(ATTRIBUTE_NAMES)
    assert all(0.0 <= extra["positive_rates"][a] <= 1.0 for a in ATTRIBUTE_NAMES)
    assert extra["samples"].startswith("supervision/mixed-")  # relative to the bundle, which may move
    assert extra["train_loss"][-1] < extra["initial_loss"]

    # boundaries: unit vectors for every attribute, report, networks() stacks them
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["linknet"] == "linknet" and bundle.manifest["directions"] == "directions.npz"
    dirs = bundle.directions()
    assert set(dirs) == set(ATTRIBUTE_NAMES)
    for d in dirs.values():
        assert d.shape == (cfg.w_dim,)
        np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
    report = json.loads((bundle_dir / "directions_fit.json").read_text())
    assert all(report["attributes"][a]["num_train"] + report["attributes"][a]["num_val"] == 18
               for a in ATTRIBUTE_NAMES)
    nets = bundle.networks()
    assert nets.directions.shape == (k, cfg.w_dim)
    assert nets.linknet["params"]["fc"]["kernel"].shape == (cfg.num_ws * cfg.w_dim, k)

    # GANSpace
    assert bundle.manifest["ganspace"] == "ganspace.npz"
    pca = load_ganspace(bundle_dir / "ganspace.npz")
    assert pca.components.shape == (8, cfg.w_dim) and np.all(np.diff(pca.std) <= 0)

    # a rerun renders nothing and retrains to the same LinkNet
    shards = sorted((bundle_dir / "supervision").glob("*/shard_*.npz"))
    assert len(shards) == 6
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    config.ganspace.enabled = False
    again = sup_job.run(config, log=lambda msg: None)
    assert again["rendered"] == {"mixed": 0, "single": 0}
    assert {p: p.stat().st_mtime_ns for p in shards} == stamps
    assert again["linknet"]["accuracies"] == summary["linknet"]["accuracies"]
    np.testing.assert_array_equal(load_converted(bundle_dir / "linknet").variables["params"]["fc"]["kernel"],
                                  link.variables["params"]["fc"]["kernel"])

    # new descriptor thresholds relabel the cached scores: nothing is rendered, and the labels follow
    cached = label_source(bundle, bundle.descriptor())
    scores = np.concatenate([np.load(p)["outputs"] for p in sorted(shards) if p.parent.name.startswith("mixed")])
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["descriptor"]["thresholds"] = dict(male_prob=0.5, age_threshold=float(np.median(scores[:, 1])),
                                                age_scale=5.0, happy_prob=0.5)
    update_manifest(bundle_dir, descriptor=manifest["descriptor"])
    relabelled = sup_job.run(config, log=lambda msg: None)
    assert relabelled["rendered"] == {"mixed": 0, "single": 0}
    assert relabelled["linknet"]["positive_rates"]["Young"] == pytest.approx(0.5, abs=0.02)
    assert cached.spec == label_source(load_bundle(bundle_dir), bundle.descriptor()).spec

    # an interrupted run resumes: only the missing shard is rendered
    missing = next(p for p in shards if p.parent.name.startswith("mixed"))
    missing.unlink()
    config.fit = "linknet"
    resumed = sup_job.run(config, log=lambda msg: None)
    assert resumed["rendered"] == {"mixed": 32}
    assert resumed["linknet"]["accuracies"] == relabelled["linknet"]["accuracies"]


def test_bundle_without_descriptor_is_one_clear_error(tmp_path, generator_dir):
    bundle = build_bundle(tmp_path / "bundle", generator=generator_dir, w_avg_samples=64)
    config = _config("linknet_tiny")
    config.bundle = str(bundle.path)
    with pytest.raises(MagecError, match="no descriptor"):
        sup_job.run(config, log=lambda msg: None)
    config.fit = "everything"
    with pytest.raises(MagecError, match="config.fit"):
        sup_job.run(config, log=lambda msg: None)


def test_paper_config_parses():
    job = from_configdict(sup_job.SupervisionConfig, _config("linknet_ffhq1024"))
    assert job.sampling.num_samples == 50_000 and job.linknet == TrainSettings(epochs=10, learning_rate=1e-3)
    assert job.boundaries.ratio == 0.02 and job.boundaries.val_fraction == 0.3 and job.fit == "both"
    assert from_configdict(sup_job.SupervisionConfig, _config("linknet_ffhq1024", "boundaries")).fit == "boundaries"
