"""End to end: ``magec_jax.train_classifier`` on the 26 real CelebA-HQ faces (attribute 'Male'), tiny config.

One uninterrupted run, and one run stopped after 7 of 10 steps then resumed from its checkpoint: the resumed
run must end with the same weights (same data order, optimiser state and schedule). The in-process runs share
their compilations; the command line itself is checked on its error path, which needs no compilation.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, require_shared

from magec_jax.classifier import data as classifier_data
from magec_jax.classifier.loop import run as train_classifier_run
from magec_jax.errors import FileFormatError
from magec_jax.models import resnet
from magec_jax.weights import flatten, load_converted


def _tiny_config(**overrides):
    spec = importlib.util.spec_from_file_location("classifier_tiny", REPO / "configs" / "classifier_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("Male")
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A list_attr_celeba.txt for the faces: 'Male' from the folder, plus a second column to select away."""
    images = require_shared("data", "celeba_hq")
    rows = [f"{g}/{p.name}  {1 if g == 'male' else -1} {(-1) ** i}"
            for g in ("female", "male") for i, p in enumerate(sorted((images / g).glob("*.jpg")))]
    path = tmp_path_factory.mktemp("table") / "list_attr_celeba.txt"
    path.write_text(f"{len(rows)}\nMale Smiling\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_train_then_resume_gives_the_same_weights(tmp_path, table):
    images = require_shared("data", "celeba_hq")
    common = dict(images=str(images), attributes=str(table), checkpoint_every=100)  # saves only at the stops

    full = train_classifier_run(_tiny_config(out_dir=str(tmp_path / "a"), **common))
    assert full["finished"] and full["step"] == full["total_steps"] == 10
    assert (full["train_images"], full["val_images"], full["steps_per_epoch"]) == (20, 6, 5)
    assert [h["step"] for h in full["history"]] == [5, 10]
    for h in full["history"]:
        assert set(h["val_accuracy"]) == {"Male"} and 0.0 <= h["val_accuracy_mean"] <= 1.0
        assert np.isfinite(h["train_loss"])

    stopped = train_classifier_run(_tiny_config(out_dir=str(tmp_path / "b"), **common), max_steps=7)
    assert not stopped["finished"] and stopped["step"] == 7 and "weights" not in stopped
    assert not (tmp_path / "b" / "resnet50").exists()
    resumed = train_classifier_run(_tiny_config(out_dir=str(tmp_path / "b"), **common))
    assert resumed["resumed_from"] == 7 and resumed["finished"]
    assert [h["step"] for h in resumed["history"]] == [5, 7, 10]  # a stop is evaluated too

    a = load_converted(tmp_path / "a" / "resnet50", kind=resnet.KIND)
    b = load_converted(tmp_path / "b" / "resnet50", kind=resnet.KIND)
    assert a.config == {"attribute_names": ["Male"], "image_size": 32}
    fa, fb = flatten(a.variables), flatten(b.variables)
    assert sorted(fa) == sorted(fb) and "batch_stats/layer4.2/bn3/var" in fa
    # The stopped-and-resumed run executes the same compiled steps on the same batches as the straight run, on
    # one machine: its weights are the same up to float32 rounding (resuming restores them exactly from the
    # checkpoint); a batch replayed or skipped on resume would move them by an Adam step, about the learning
    # rate (2e-3 or more), far outside the tolerance.
    for name in fa:
        np.testing.assert_allclose(fb[name], fa[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Both phases trained: fc's bias and the running BatchNorm statistics start at 0 (Flax init); the latter only
    # move in the full phase, where BatchNorm runs in training mode.
    assert np.any(fa["params/fc/bias"] != 0)
    assert np.any(fa["batch_stats/layer1.0/bn1/mean"] != 0)

    # The result plays the descriptor role on project images (any size, [-1, 1]).
    desc = resnet.resnet_descriptor(jax.tree_util.tree_map(jnp.asarray, a.variables), ["Male"], image_size=32)
    logits = desc(jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1.0, maxval=1.0))
    assert logits.shape == (2, 1) and np.isfinite(np.asarray(logits)).all()


def test_attribute_table_errors(tmp_path, table):
    images = require_shared("data", "celeba_hq")
    data = classifier_data.read_attribute_table(table, images, ("Smiling",))
    assert data.attribute_names == ("Smiling",) and data.labels_NxK.shape == (26, 1)
    with pytest.raises(FileFormatError, match="no attribute 'Bald'"):
        classifier_data.read_attribute_table(table, images, ("Bald",))
    bad = tmp_path / "bad.txt"
    bad.write_text("2\nMale\nfemale/015248.jpg 1\nfemale/030321.jpg 0\n")
    with pytest.raises(FileFormatError, match=r"bad\.txt: line 4: expected a name and 1 values of 1 or -1"):
        classifier_data.read_attribute_table(bad, images)
    bad.write_text("1\nMale\nfemale/nope.jpg 1\n")
    with pytest.raises(FileFormatError, match="1 listed images are missing"):
        classifier_data.read_attribute_table(bad, images)


def test_cli_reports_a_bad_table_in_one_line(tmp_path):
    bad = tmp_path / "list_attr.txt"
    bad.write_text("not a table\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "magec_jax.train_classifier", "--config", str(REPO / "configs" / "classifier_tiny.py"),
         f"--config.images={tmp_path}", f"--config.attributes={bad}", f"--config.out_dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    problem = "not a list_attr_celeba.txt table: expected a count line, then a header line"
    assert proc.stderr.strip().splitlines()[-1] == f"error: {bad}: {problem}"
