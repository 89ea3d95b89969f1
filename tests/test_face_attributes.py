"""The face models in the engine's roles: identity embedder and the Male/Young/Smiling descriptor."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from magec_jax.errors import MagecError
from magec_jax.models import emotion, face_attributes, faceres
from ports import tfjs


@pytest.fixture(scope="module")
def variables():
    models = require_shared("data", "face_models")
    return {
        "faceres": tfjs.convert_faceres(models / "faceres.json").variables,
        "emotion": tfjs.convert_emotion(models / "emotion.json").variables,
    }


@pytest.fixture(scope="module")
def celeba_256():
    """The 26 real CelebA-HQ faces as project images: RGB in [-1, 1] at 256x256; and is_male per image."""
    root = require_shared("data", "celeba_hq")
    files = sorted(root.glob("*/*.jpg"))
    assert len(files) == 26
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float32) / 127.5 - 1
    images_256 = jax.image.resize(images, (len(files), 256, 256, 3), method="linear", antialias=True)
    return np.asarray(images_256), np.array([f.parent.name == "male" for f in files])


@pytest.mark.slow
def test_male_agrees_with_folder_labels(variables, celeba_256):
    images, is_male = celeba_256
    descriptor = face_attributes.face_attribute_descriptor(variables["faceres"], variables["emotion"])
    assert descriptor.attribute_names == ("Male", "Young", "Smiling") and descriptor.loss == "bce"
    logits = np.asarray(jax.jit(descriptor.apply)(descriptor.variables, images))
    assert logits.shape == (26, 3) and np.isfinite(logits).all()
    agree = int(np.sum((logits[:, 0] > 0) == is_male))
    print(f"Male agrees with the folder label on {agree}/26 faces at 256x256")
    assert agree == 26


def test_identity_embedding(variables, celeba_256):
    images, _ = celeba_256
    embedder = face_attributes.faceres_identity(variables["faceres"])
    batch = np.concatenate([images[:4], images[:4, :, ::-1]])  # 4 faces and their mirror images
    e = np.asarray(jax.jit(embedder.apply)(embedder.variables, batch))
    assert e.shape == (8, 1024)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    cos = e @ e.T
    same = np.diag(cos[:4, 4:])
    different = cos[:4, :4][~np.eye(4, dtype=bool)]
    assert same.min() > 0.9 and same.min() > different.max(), (same, different)


@pytest.mark.slow
def test_logits_follow_their_definitions(variables, celeba_256):
    images = celeba_256[0][[0, 13]]
    thresholds = face_attributes.FaceAttributeThresholds(male_prob=0.6, age_threshold=30.0, age_scale=4.0,
                                                         happy_prob=0.3)
    descriptor = face_attributes.face_attribute_descriptor(
        variables["faceres"], variables["emotion"], thresholds=thresholds
    )
    logits = np.asarray(descriptor(images), np.float64)
    face = faceres.apply(variables["faceres"], faceres.preprocess(images))
    z = np.asarray(emotion.apply(variables["emotion"], emotion.preprocess(images))["logits"], np.float64)
    age = np.asarray(face["age"], np.float64) @ np.arange(100)
    # P(happy) is within 1e-5 of 1 on image 0, so take it from float64 logits, not float32 probabilities.
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    p_happy = probs[:, emotion.LABELS.index("happy")] / probs.sum(axis=1)
    want = np.stack([
        np.asarray(face["gender_logit"][:, 0]) - math.log(0.6 / 0.4),
        (30.0 - age) / 4.0,
        np.log(p_happy) - np.log1p(-p_happy) - math.log(0.3 / 0.7),
    ], axis=1)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_happy_log_odds_is_stable():
    z = jnp.array([[0.0, 0.0, 0.0, 120.0, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, -120.0, 0.0, 0.0, 0.0],
                   [1.0, -2.0, 0.5, 0.3, 2.0, -1.0, 0.0]])
    z64 = np.asarray(z, np.float64)
    others = np.delete(z64, 3, axis=1)
    want = z64[:, 3] - np.log(np.sum(np.exp(others), axis=1))
    got = np.asarray(face_attributes.happy_log_odds(z))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.grad(lambda z: face_attributes.happy_log_odds(z).sum())(z)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.slow
def test_descriptor_is_differentiable_at_generator_resolution(variables):
    """Gradients flow from the logits to 64x64 images through crop, resize and both networks, per image
    under vmap as the inversion engine calls it."""
    images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1.0, maxval=1.0)
    descriptor = face_attributes.face_attribute_descriptor(variables["faceres"], variables["emotion"])

    def loss(v, img_HxWxC):
        return descriptor.apply(v, img_HxWxC[None]).sum()

    grads = np.asarray(jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0)))(descriptor.variables, images))
    assert grads.shape == images.shape and np.isfinite(grads).all()
    # Pixels outside the face box get no gradient; pixels inside do.
    assert np.all(grads[:, :11] == 0) and np.abs(grads[:, 20:40, 20:40]).sum() > 0


@pytest.mark.slow
def test_face_box_option_and_scores():
    """The whole-image crop differs from the aligned-face box; the descriptor's logits are its thresholds applied
    to the threshold-free scores."""
    models = require_shared("data", "face_models")
    fv = tfjs.convert_faceres(models / "faceres.json").variables
    ev = tfjs.convert_emotion(models / "emotion.json").variables
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)), jnp.float32)
    whole = face_attributes.faceres_identity(fv, box=None)
    boxed = face_attributes.faceres_identity(fv)
    assert float(jnp.max(jnp.abs(whole(images) - boxed(images)))) > 1e-3
    # One apply per setting: engines built twice for the same bundle compile once.
    assert face_attributes.faceres_identity(fv, box=None).apply is whole.apply
    thresholds = face_attributes.FaceAttributeThresholds(male_prob=0.7, age_threshold=33.0, age_scale=2.0,
                                                         happy_prob=0.2)
    descriptor = face_attributes.face_attribute_descriptor(fv, ev, thresholds=thresholds, box=None)
    assert face_attributes.face_attribute_descriptor(fv, ev, thresholds=thresholds, box=None).apply is descriptor.apply
    scores = face_attributes.attribute_scores({"faceres": fv, "emotion": ev}, images, box=None)
    face = faceres.apply(fv, faceres.preprocess(images, box=None))
    np.testing.assert_allclose(scores[:, 1], face["age_expected"], rtol=1e-6)
    np.testing.assert_allclose(descriptor(images), face_attributes.logits_from_scores(scores, thresholds),
                               rtol=1e-5, atol=1e-5)


def test_thresholds_for_rates_match_the_asked_label_rates():
    rng = np.random.default_rng(3)
    scores = np.stack([rng.normal(2.0, 3.0, 1000), rng.normal(40.0, 12.0, 1000), rng.normal(-1.0, 4.0, 1000)], 1)
    rates = (0.77, 0.5, 0.4)
    thresholds = face_attributes.thresholds_for_rates(scores, rates, age_scale=4.0)
    np.testing.assert_allclose(face_attributes.label_rates(scores, thresholds), rates, atol=1.5e-3)
    assert thresholds.age_scale == 4.0
    np.testing.assert_allclose(thresholds.age_threshold, np.median(scores[:, 1]))
    # P(male) at the 23% quantile of the gender logit
    np.testing.assert_allclose(math.log(thresholds.male_prob / (1 - thresholds.male_prob)),
                               np.quantile(scores[:, 0], 0.23), rtol=1e-9)
    with pytest.raises(MagecError, match="in \\(0, 1\\)"):
        face_attributes.thresholds_for_rates(scores, (0.5, 1.0, 0.5))
    with pytest.raises(MagecError, match="shape"):
        face_attributes.thresholds_for_rates(scores[:, :2], rates)
