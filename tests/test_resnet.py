"""torchvision ResNet-50 with the 40-way CelebA head against the golden fixture ``resnet50_attr/cases.npz``.

Weights rebuilt from ``state_dict_spec.json`` (sha256 checked) and converted from torchvision naming.
Tolerance (fixture README: the reference's float32/float64 noise is <= 1.7e-6): ``rtol=1e-4, atol=1e-4``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from hlo_dtypes import assert_contractions_in
from loss_net_helpers import load_fixture_state_dict

from magec_jax.models import resnet
from ports.loss_nets import convert_resnet50_state_dict

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def cases():
    with np.load(require_shared("fixtures", "resnet50_attr", "cases.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def converted():
    spec, sd = load_fixture_state_dict(require_shared("fixtures", "resnet50_attr", "state_dict_spec.json"))
    conv = convert_resnet50_state_dict(sd)
    assert list(conv.config["attribute_names"]) == spec["celeba_attributes"]
    return conv


@pytest.fixture(scope="module")
def variables(converted):
    return jax.tree_util.tree_map(jnp.asarray, converted.variables)


def test_network_on_imagenet_normalised_input(cases, variables):
    """The README's own normalisation, ``(u / 255 - mean) / std`` in float32."""
    u = cases["x224_u8"].transpose(0, 2, 3, 1).astype(np.float32)
    mean = np.asarray(resnet.IMAGENET_MEAN, np.float32)
    std = np.asarray(resnet.IMAGENET_STD, np.float32)
    x = jnp.asarray((u / np.float32(255) - mean[None, None, None]) / std[None, None, None])
    out = jax.jit(resnet.ResNet50().apply)(variables, x)
    np.testing.assert_allclose(out.logits_BxK, cases["logits"], **TOL)
    for name, tap in zip(["stem_mean"] + [f"layer{i}_mean" for i in range(1, 5)], out.taps, strict=True):
        np.testing.assert_allclose(jnp.mean(tap, axis=(1, 2)), cases[name], **TOL, err_msg=name)


def test_descriptor_on_project_images(cases, converted, variables):
    """The engine's path: images in [-1, 1] -> resize (none at 224) -> normalise -> logits."""
    cfg = resnet.ResNetConfig.from_dict(converted.config)
    desc = resnet.resnet_descriptor(variables, cfg.attribute_names, image_size=cfg.image_size)
    assert desc.loss == "bce" and desc.num_outputs == 40 and desc.attribute_names[20] == "Male"
    x = jnp.asarray(cases["x224_u8"].transpose(0, 2, 3, 1).astype(np.float32) / np.float32(127.5) - np.float32(1))
    np.testing.assert_allclose(jax.jit(desc.apply)(desc.variables, x), cases["logits"], **TOL)


def test_descriptor_rejects_name_count_mismatch(variables):
    with pytest.raises(ValueError, match="40 outputs but 2 attribute names"):
        resnet.resnet_descriptor(variables, ("Male", "Young"))


def test_bfloat16_option_is_close(cases, variables):
    desc = resnet.resnet_descriptor(variables, dtype=jnp.bfloat16)
    x = jnp.asarray(cases["x224_u8"][:2].transpose(0, 2, 3, 1).astype(np.float32) / np.float32(127.5) - np.float32(1))
    # bf16 really runs: every convolution and matrix product of the network multiplies bf16 operands.
    assert_contractions_in("bf16", desc.apply, desc.variables, x, ops=("convolution", "dot_general"))
    f32 = resnet.resnet_descriptor(variables)
    assert_contractions_in("f32", f32.apply, f32.variables, x, ops=("convolution", "dot_general"))
    logits = jax.jit(desc.apply)(desc.variables, x)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, cases["logits"][:2], rtol=0, atol=0.05)  # measured 0.017
