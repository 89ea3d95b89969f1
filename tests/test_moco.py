"""MoCo v2 identity (e4e's ``MocoLoss``) against the golden fixture ``moco_v2_id``: the converter on the official
checkpoint layout, feature and loss parity, the bundle's ``moco:`` identity, and one-line refusals.

The 336 MB checkpoint is rebuilt once from the specs (``moco_checkpoint.py``, every sha256 checked; module-scoped,
so its memory is released after this module) and converted through the CLI. The network is compiled once, for
batches of 6 images at 224: the 18 fixture images and the loss cases all run through that one executable.

Tolerances (fixture README, "Observed float noise"): the reference's own float noise (threads, float64 pipeline)
is <= 3e-8 on the features and <= 1.2e-7 on the loss values, so ``atol=1e-6`` for features (about 1e-5 of their
largest element, 0.108) and ``atol=2e-6`` for ``loss``, ``sim_improvement`` and the per-sample dots; absolute,
because ``loss0`` is only 9.8e-5. The index maps and the [-1, 1] inputs must match exactly.
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from loss_net_helpers import load_fixture_state_dict
from moco_checkpoint import build_checkpoint, perturbed, write_checkpoint
from tools.torch_writers import tensor, write_torch_legacy

from magec_jax import bundle as bundle_lib
from magec_jax.errors import FileFormatError
from magec_jax.models import moco
from magec_jax.weights import flatten, load_converted
from ports import convert, loss_nets
from ports import moco as moco_port
from ports.detect import detect_format

FEATS_TOL = dict(rtol=0, atol=1e-6)
LOSS_TOL = dict(rtol=0, atol=2e-6)


@pytest.fixture(scope="module")
def cases():
    with np.load(require_shared("fixtures", "moco_v2_id", "cases.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _nhwc(x_NCHW: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_NCHW.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def checkpoint():
    return build_checkpoint(
        require_shared("fixtures", "moco_v2_id"), require_shared("fixtures", "resnet50_attr", "state_dict_spec.json")
    )


@pytest.fixture(scope="module")
def converted_dir(checkpoint, tmp_path_factory):
    """``python -m ports.convert moco_v2_800ep.pth.tar DST`` on the rebuilt checkpoint (format detected)."""
    root = tmp_path_factory.mktemp("moco")
    src = write_checkpoint(root / "moco_v2_800ep.pth.tar", checkpoint)
    assert detect_format(src) == "moco"
    assert convert.main([str(src), str(root / "moco")]) == 0
    src.unlink()  # 336 MB
    return root / "moco"


@pytest.fixture(scope="module")
def identity(converted_dir):
    """The identity network as a bundle whose manifest names ``{"kind": "moco", ...}`` builds it."""
    bundle = bundle_lib.Bundle(path=converted_dir.parent, manifest={"identity": {"kind": "moco", "path": "moco"}})
    return bundle.identity()


def _resized(images_BxHxWx3: np.ndarray) -> np.ndarray:
    return np.asarray(moco.nearest_resize(jnp.asarray(images_BxHxWx3), (224, 224)))  # eager: a gather per axis


@pytest.fixture(scope="module")
def embed224(identity):
    """``embed(variables, images)`` compiled once, for batches of 6 images already at 224 (every call below)."""
    jitted = jax.jit(identity.apply)

    def embed(variables, images_BxHxWx3: jax.Array) -> np.ndarray:
        x = _resized(images_BxHxWx3)
        return np.concatenate([np.asarray(jitted(variables, x[i : i + 6])) for i in range(0, len(x), 6)])

    return embed


@pytest.fixture(scope="module")
def features(cases, identity, embed224):
    """Features of the 18 images of the cases."""
    x224, x = _nhwc(cases["x224"]), _nhwc(cases["x"])
    return {
        "feats224+mirrored01": embed224(identity.variables, np.concatenate([x224, _resized(x[[0, 1], :, ::-1])])),
        "feats256": embed224(identity.variables, x),
        "feats192x256": embed224(identity.variables, x[:, 32:224]),
    }


# ----------------------------------------------------------------------------------------------------------
# Preprocessing: exact.


def test_inputs_and_nearest_resize_are_exact(cases):
    u8 = cases["x_u8"]
    np.testing.assert_array_equal(cases["x"], u8.astype(np.float32) / np.float32(127.5) - np.float32(1))
    for n in (256, 192):
        idx = moco.nearest_index(n, 224)
        np.testing.assert_array_equal(idx, cases[f"nearest_idx_{n}_to_224"])
        np.testing.assert_array_equal(idx, (np.arange(224) * n) // 224)
    np.testing.assert_array_equal(moco.nearest_index(224, 224), np.arange(224))
    np.testing.assert_array_equal(moco.nearest_index(112, 224), np.arange(224) // 2)
    crop = _nhwc(cases["x"][:2, :, 32:224])  # 192x256 -> 224x224: rows up, columns down; aspect ratio not kept
    rows, cols = cases["nearest_idx_192_to_224"], cases["nearest_idx_256_to_224"]
    np.testing.assert_array_equal(moco.nearest_resize(jnp.asarray(crop), (224, 224)), crop[:, rows][:, :, cols])


# ----------------------------------------------------------------------------------------------------------
# Parity.


@pytest.mark.slow
def test_identity_is_moco_with_unit_features(identity, features):
    assert identity.name == "moco"
    for name, f in features.items():
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["feats224", "feats256", "feats192x256"])
def test_features_match_e4e(cases, features, name):
    got = features["feats224+mirrored01"][:4] if name == "feats224" else features[name]
    np.testing.assert_allclose(got, cases[name], **FEATS_TOL)


def _assert_loss_case(out: moco.MocoLossOutput, cases: dict, i: int):
    np.testing.assert_allclose(out.loss, cases[f"loss{i}"], **LOSS_TOL)
    np.testing.assert_allclose(out.sim_improvement, cases[f"sim_improvement{i}"], **LOSS_TOL)
    logs = np.stack([out.diff_target_B, out.diff_input_B, out.diff_views_B], axis=1)
    np.testing.assert_allclose(logs, cases[f"id_logs{i}"], **LOSS_TOL)


def test_loss_values_from_features(cases, features):
    f = features
    # Case 0: y = x = x[[0, 1]], y_hat = their mirror images.
    case0 = moco.moco_loss_from_features(jnp.asarray(f["feats224+mirrored01"][4:]), jnp.asarray(f["feats256"][:2]),
                                         jnp.asarray(f["feats256"][:2]))
    _assert_loss_case(case0, cases, 0)
    # Case 1 on the 192x256 crops C: y_hat = C[[5, 2]], y = C[[4, 5]], x = C[[3, 4]].
    c = jnp.asarray(f["feats192x256"])
    _assert_loss_case(moco.moco_loss_from_features(c[jnp.array([5, 2])], c[jnp.array([4, 5])], c[jnp.array([3, 4])]),
                      cases, 1)


def test_no_gradient_through_the_target():
    f = jnp.asarray(np.eye(3, 4, dtype=np.float32)[:2])
    g = jnp.ones((2, 4)) / 2.0
    grads = jax.grad(lambda a, b, c: moco.moco_loss_from_features(a, b, c).loss, argnums=(0, 1))(g, f, g)
    np.testing.assert_array_equal(grads[1], 0.0)
    np.testing.assert_allclose(grads[0], -f / 2.0)


def _swap_query_and_key(state_dict: dict) -> dict:
    """What a loader that reads ``encoder_k`` instead of ``encoder_q`` sees."""
    swap = {"encoder_q.": "encoder_k.", "encoder_k.": "encoder_q."}
    out = {}
    for key, value in state_dict.items():
        for a, b in swap.items():
            if key.startswith(a):
                key = b + key[len(a):]
                break
        out[key] = value
    return out


def test_image_loss_and_a_loader_reading_encoder_k_fails(cases, identity, embed224, checkpoint):
    """e4e's ``forward(y_hat, y, x)`` on the 192x256 crops; then the same call with the weights a loader would
    take from ``encoder_k`` of the perturbed checkpoint (equal to ``encoder_q`` in the plain fixture, so only
    the perturbed one tells them apart): the parity of this test must then fail."""
    crops = _nhwc(cases["x"][:, :, 32:224])
    y_hat, y, x = crops[[5, 2]], crops[[4, 5]], crops[[3, 4]]
    out = moco.moco_loss(lambda images: jnp.asarray(embed224(identity.variables, images)), y_hat, y, x)
    _assert_loss_case(out, cases, 1)

    state_dict = loss_nets.select_state_dict({"state_dict": perturbed(checkpoint["state_dict"])}, "perturbed", None)
    wrong = jax.tree.map(jnp.asarray, moco_port.convert_moco_state_dict(_swap_query_and_key(state_dict)).variables)
    out = moco.moco_loss(lambda images: jnp.asarray(embed224(wrong, images)), y_hat, y, x)
    logs = np.stack([out.diff_target_B, out.diff_input_B, out.diff_views_B], axis=1)
    assert np.all(np.isfinite(logs))
    assert np.abs(logs - cases["id_logs1"]).max() > 100 * LOSS_TOL["atol"], logs
    with pytest.raises(AssertionError):
        _assert_loss_case(out, cases, 1)


# ----------------------------------------------------------------------------------------------------------
# The converter.


def test_converter_keeps_what_e4e_keeps(converted_dir, checkpoint):
    conv = load_converted(converted_dir, kind=moco.KIND)
    assert conv.config == moco.CONFIG
    assert conv.manifest["source"]["file"] == "moco_v2_800ep.pth.tar"
    assert conv.manifest["converter"] == "ports.moco.convert_moco/1"
    extra = conv.manifest["extra"]
    assert (extra["arch"], extra["epoch"], extra["queue_size"], extra["projection_dim"]) == ("resnet50", 800, 256, 128)
    # e4e's 318 kept keys are the torchvision ResNet-50 trunk: the same leaves as converting that trunk directly
    # (bit-exact; 53 num_batches_tracked are dropped). encoder_k, the heads and the queue written with other
    # values change nothing.
    _, resnet_sd = load_fixture_state_dict(require_shared("fixtures", "resnet50_attr", "state_dict_spec.json"))
    want = flatten(loss_nets.convert_resnet50_state_dict(resnet_sd).variables)
    want = {k: v for k, v in want.items() if not k.startswith("params/fc/")}
    assert len(want) == 318 - 53
    state_dict = loss_nets.select_state_dict({"state_dict": perturbed(checkpoint["state_dict"])}, "perturbed", None)
    for variables in (conv.variables, moco_port.convert_moco_state_dict(state_dict).variables):
        got = flatten(variables)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _one_line(capsys, path, *needles):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {path}: "), err
    for needle in needles:
        assert needle in err, err


def _small_moco(head: str) -> OrderedDict:
    """A few entries of a MoCo state dict (DDP names) with a v1 (``fc``) or v2 (``fc.0``/``fc.2``) head."""
    sd = OrderedDict()
    sd["module.queue"] = np.zeros((128, 4), np.float32)
    sd["module.encoder_q.conv1.weight"] = np.zeros((64, 3, 7, 7), np.float32)
    heads = {"v1": {"fc": (128, 2048)}, "v2": {"fc.0": (2048, 2048), "fc.2": (128, 2048)}}[head]
    for name, shape in heads.items():
        sd[f"module.encoder_q.{name}.weight"] = np.zeros(shape, np.float32)
    sd["module.encoder_k.conv1.weight"] = np.zeros((64, 3, 7, 7), np.float32)
    return OrderedDict((k, tensor(v)) for k, v in sd.items())


def test_refuses_moco_v1_a_legacy_file(tmp_path, capsys):
    path = tmp_path / "moco_v1_200ep_pretrain.pth.tar"
    write_torch_legacy(path, {"epoch": 200, "arch": "resnet50", "state_dict": _small_moco("v1")})
    assert detect_format(path) == "moco"
    assert convert.main([str(path), str(tmp_path / "out")]) == 2
    _one_line(capsys, path, "a MoCo v1 checkpoint", "'encoder_q.fc.weight'", "not MoCo v2")
    assert not (tmp_path / "out").exists()


def test_refuses_other_architectures_and_incomplete_files(tmp_path, capsys):
    path = tmp_path / "moco_r18.pth.tar"
    write_torch_legacy(path, {"epoch": 200, "arch": "resnet18", "state_dict": _small_moco("v2")})
    assert convert.main([str(path), str(tmp_path / "out")]) == 2
    _one_line(capsys, path, "a MoCo checkpoint of a 'resnet18' encoder", "resnet50")
    path = tmp_path / "moco_part.pth.tar"
    write_torch_legacy(path, {"epoch": 200, "arch": "resnet50", "state_dict": _small_moco("v2")})
    with pytest.raises(FileFormatError) as e:
        moco_port.convert_moco(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: ")
    assert "incomplete" in str(e.value) and "for a MoCo v2 ResNet-50 checkpoint" in str(e.value)


def test_refuses_a_checkpoint_that_is_not_moco(tmp_path, capsys):
    _, resnet_sd = load_fixture_state_dict(require_shared("fixtures", "resnet50_attr", "state_dict_spec.json"))
    path = tmp_path / "resnet50.pth"
    write_checkpoint(path, {k: resnet_sd[k] for k in ("conv1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias")})
    assert detect_format(path) == "resnet50"
    assert convert.main([str(path), str(tmp_path / "out"), "--format", "moco"]) == 2
    _one_line(capsys, path, "not a MoCo v2 checkpoint: no 'module.encoder_q.*' tensors", "'conv1.weight'")


def test_registry_names_the_converter():
    assert convert.converter_for("moco") is moco_port.convert_moco
