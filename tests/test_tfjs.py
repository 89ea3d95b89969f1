"""TF.js graph-model reader (synthetic tiny models) and the faceres/emotion ports (golden fixture parity).

Parity tolerances are the fixture README's (about 5-10x the float32 noise between TF.js backends and an
independent JAX interpreter): descriptor, feats and all logits ``rtol=atol=1e-4``; probabilities
``atol=1e-5``; emotion input ``atol=1e-6``. The derived expected age uses the logits' tolerance.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from hlo_dtypes import assert_contractions_in
from magec_jax.errors import FileFormatError
from magec_jax.models import emotion, faceres
from magec_jax.weights import load_converted, save_converted
from ports import tfjs

LOGITS_TOL = {"rtol": 1e-4, "atol": 1e-4}
PROBS_TOL = {"rtol": 0.0, "atol": 1e-5}


# ------------------------------------------------------------------ reader, on a tiny synthetic model


def _write_model(tmp: Path, *, manifest_weights: list[dict], shards: list[bytes], nodes=None) -> Path:
    """Writes ``tiny.json`` and shards ``tiny.bin``, ``tiny.2.bin``, ... into ``tmp``."""
    names = [f"tiny.{i}.bin" if i else "tiny.bin" for i in range(len(shards))]
    for name, data in zip(names, shards, strict=True):
        (tmp / name).write_bytes(data)
    if nodes is None:
        nodes = [{"name": w["name"], "op": "Const", "attr": {}} for w in manifest_weights]
        nodes.append({"name": "x", "op": "Placeholder", "attr": {"padding": {"s": "U0FNRQ=="}}})
    doc = {
        "format": "graph-model",
        "generatedBy": "test",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": names, "weights": manifest_weights}],
    }
    path = tmp / "tiny.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def tiny(tmp_path):
    """A model with every supported encoding, split over two shards mid-tensor; returns (path, expected)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = np.array([1, -2, 2**31 - 1], np.int32)
    c = np.array([1.5, -2.0, 6.0e-8, 65504.0], np.float16)  # 6e-8 is subnormal in binary16
    d_q = np.array([0, 1, 127, 254, 255], np.uint8)
    e_q = np.array([0, 1, 2], np.uint8)
    f_q = np.array([0, 40000, 65535], np.uint16)
    weights = [
        {"name": "a", "shape": [2, 3], "dtype": "float32"},
        {"name": "b", "shape": [3], "dtype": "int32"},
        {"name": "c", "shape": [4], "dtype": "float32",
         "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        {"name": "d", "shape": [5], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.01, "min": -1.27, "original_dtype": "float32"}},
        {"name": "e", "shape": [3], "dtype": "int32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": 0.0, "original_dtype": "int32"}},
        {"name": "f", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint16", "scale": 1e-4, "min": -3.0, "original_dtype": "float32"}},
    ]
    blob = b"".join(x.astype(x.dtype.newbyteorder("<")).tobytes() for x in (a, b, c, d_q, e_q, f_q))
    path = _write_model(tmp_path, manifest_weights=weights, shards=[blob[:10], blob[10:]])
    expected = {
        "a": a,
        "b": b,
        "c": c.astype(np.float32),
        "d": (d_q * 0.01 - 1.27).astype(np.float32),
        "e": np.array([0, 1, 1], np.int32),  # 0.5 rounds half up, as JavaScript's Math.round
        "f": (f_q * 1e-4 - 3.0).astype(np.float32),
    }
    return path, expected


def test_reader_decodes_every_encoding(tiny):
    path, expected = tiny
    model = tfjs.read_graph_model(path)
    assert list(model.weights) == list(expected)  # manifest order
    for name, want in expected.items():
        got = model.weights[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert model.weights["c"][2] > 0  # the subnormal half is not flushed to zero
    assert model.nodes["x"].op == "Placeholder" and model.nodes["x"].attrs["padding"] == "SAME"
    assert model.metadata["generatedBy"] == "test"


def test_reader_uint8_round_trip(tmp_path):
    """Quantise floats to uint8 as the TF.js converter does; decoding is within half a step."""
    values = np.random.default_rng(1).uniform(-3.0, 5.0, size=(7, 11)).astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    scale = (hi - lo) / 255
    q = np.round((values - lo) / scale).astype(np.uint8)
    weights = [{"name": "w", "shape": [7, 11], "dtype": "float32",
                "quantization": {"dtype": "uint8", "scale": scale, "min": lo, "original_dtype": "float32"}}]
    model = tfjs.read_graph_model(_write_model(tmp_path, manifest_weights=weights, shards=[q.tobytes()]))
    np.testing.assert_allclose(model.weights["w"], values, rtol=0, atol=scale / 2 * (1 + 1e-5))


def _one_line_error(fn, *match: str) -> str:
    with pytest.raises(FileFormatError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_reader_errors(tiny):
    path, _ = tiny
    tmp = path.parent
    second = tmp / "tiny.1.bin"
    data = second.read_bytes()

    second.write_bytes(data[:-3])  # truncated
    _one_line_error(lambda: tfjs.read_graph_model(path), "tiny.json", "bytes")
    second.write_bytes(data + b"\0")  # trailing garbage
    _one_line_error(lambda: tfjs.read_graph_model(path), "bytes")
    second.unlink()
    _one_line_error(lambda: tfjs.read_graph_model(path), "tiny.1.bin", "missing weight shard")
    second.write_bytes(data)
    tfjs.read_graph_model(path)  # intact again

    doc = json.loads(path.read_text())
    doc["weightsManifest"][0]["weights"][0]["dtype"] = "complex64"
    bad_dtype = tmp / "bad_dtype.json"
    bad_dtype.write_text(json.dumps(doc))
    _one_line_error(lambda: tfjs.read_graph_model(bad_dtype), "bad_dtype.json", "unsupported dtype 'complex64'")

    doc = json.loads(path.read_text())
    doc["weightsManifest"][0]["weights"][2]["quantization"]["dtype"] = "int4"
    bad_quant = tmp / "bad_quant.json"
    bad_quant.write_text(json.dumps(doc))
    _one_line_error(lambda: tfjs.read_graph_model(bad_quant), "unsupported quantization dtype 'int4'")

    bad_json = tmp / "bad.json"
    bad_json.write_text(path.read_text()[:-5])
    _one_line_error(lambda: tfjs.read_graph_model(bad_json), "bad.json", "not valid JSON")

    not_model = tmp / "other.json"
    not_model.write_text('{"hello": 1}')
    _one_line_error(lambda: tfjs.read_graph_model(not_model), "not a TF.js graph model")
    _one_line_error(lambda: tfjs.read_graph_model(tmp / "absent.json"), "absent.json", "no such file")


def test_converter_refuses_another_graph(tiny):
    path, _ = tiny
    _one_line_error(lambda: tfjs.convert_faceres(path), "tiny.json", "not the faceres")
    _one_line_error(lambda: tfjs.convert_emotion(path), "not the emotion")


# ------------------------------------------------------------------ the real models


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return require_shared("data", "face_models")


@pytest.fixture(scope="module")
def cases():
    with np.load(require_shared("fixtures", "tfjs_face", "cases.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def faceres_conv(models_dir):
    return tfjs.convert_faceres(models_dir / "faceres.json")


@pytest.fixture(scope="module")
def emotion_conv(models_dir):
    return tfjs.convert_emotion(models_dir / "emotion.json")


def test_converted_structure(faceres_conv, emotion_conv):
    assert faceres_conv.kind == "faceres" and faceres_conv.manifest["converter"] == "ports.tfjs/1"
    params = faceres_conv.variables["params"]
    assert params["conv_dw_13"]["kernel"].shape == (3, 3, 1, 1024)
    assert params["conv_dw_2_bn"].keys() == {"scale", "bias"}
    assert params["conv_pw_12"]["kernel"].shape == (1, 1, 512, 1024)
    assert params["age_pred"]["kernel"].shape == (256, 100)
    assert "HSE" in faceres_conv.manifest["extra"]["generatedBy"]
    assert emotion_conv.kind == "emotion" and emotion_conv.config["labels"] == list(emotion.LABELS)
    assert emotion_conv.variables["params"]["separable_conv2d_3"]["depthwise"]["kernel"].shape == (3, 3, 1, 128)


def test_converted_save_load_round_trip(emotion_conv, tmp_path):
    dst = save_converted(tmp_path / "emotion", emotion_conv, converter=emotion_conv.manifest["converter"])
    loaded = load_converted(dst, kind="emotion")
    assert loaded.config == emotion_conv.config
    jax.tree.map(np.testing.assert_array_equal, loaded.variables, emotion_conv.variables)


def test_converter_refuses_the_other_network(models_dir):
    _one_line_error(lambda: tfjs.convert_faceres(models_dir / "emotion.json"), "emotion.json", "not the faceres")
    _one_line_error(lambda: tfjs.convert_emotion(models_dir / "faceres.json"), "faceres.json", "not the emotion")
    _one_line_error(lambda: tfjs.convert_emotion(models_dir / "emotion.json", network="G_ema"), "does not apply")


def _copy_emotion(models_dir: Path, tmp: Path) -> tuple[Path, dict]:
    shutil.copy(models_dir / "emotion.bin", tmp / "emotion.bin")
    return tmp / "emotion.json", json.loads((models_dir / "emotion.json").read_text())


def test_converter_table_asserts_every_weight_used(models_dir, tmp_path):
    path, doc = _copy_emotion(models_dir, tmp_path)
    doc["modelTopology"]["node"].append({"name": "stray", "op": "Const", "attr": {}})
    doc["weightsManifest"][0]["weights"].append({"name": "stray", "shape": [1], "dtype": "float32"})
    with open(tmp_path / "emotion.bin", "ab") as f:
        f.write(np.float32(1).tobytes())
    path.write_text(json.dumps(doc))
    _one_line_error(lambda: tfjs.convert_emotion(path), "'stray' matches no rule")


def test_converter_checks_constants_and_shapes(models_dir, tmp_path):
    path, doc = _copy_emotion(models_dir, tmp_path)
    weights = doc["weightsManifest"][0]["weights"]
    idx = next(i for i, w in enumerate(weights) if w["name"].endswith("reduction_indices"))
    offset = sum(4 * int(np.prod(w["shape"])) for w in weights[:idx])
    data = bytearray((tmp_path / "emotion.bin").read_bytes())
    data[offset : offset + 8] = np.array([1, 3], np.int32).tobytes()
    (tmp_path / "emotion.bin").write_bytes(bytes(data))
    path.write_text(json.dumps(doc))
    _one_line_error(lambda: tfjs.convert_emotion(path), "reduction_indices", "[1, 3]")


def test_faceres_parity(faceres_conv, cases):
    out = jax.jit(faceres.apply)(faceres_conv.variables, cases["faceres_input_u8"].astype(np.float32))
    out = {k: np.asarray(v) for k, v in out.items()}
    for key in ("descriptor", "feats", "gender_logit", "age_logits", "age_expected"):
        np.testing.assert_allclose(out[key], cases[f"faceres_{key}"], **LOGITS_TOL, err_msg=key)
    for key in ("gender", "age"):
        np.testing.assert_allclose(out[key], cases[f"faceres_{key}"], **PROBS_TOL, err_msg=key)
    np.testing.assert_array_equal(faceres.human_age(out["age"]), cases["faceres_age_human"])
    np.testing.assert_array_equal((out["gender"][:, 0] > 0.5).astype(np.int32), cases["is_male"])


def test_emotion_parity(emotion_conv, cases):
    out = jax.jit(emotion.apply)(emotion_conv.variables, cases["emotion_input"])
    np.testing.assert_allclose(np.asarray(out["logits"]), cases["emotion_logits"], **LOGITS_TOL)
    np.testing.assert_allclose(np.asarray(out["probs"]), cases["emotion_probs"], **PROBS_TOL)
    assert tuple(cases["emotion_labels"]) == emotion.LABELS


def test_emotion_input_from_rgb(cases):
    rgb_u8 = cases["emotion_rgb_u8"].astype(np.float32)
    np.testing.assert_allclose(np.asarray(emotion.gray_input(rgb_u8 / 255)), cases["emotion_input"], atol=1e-6, rtol=0)
    # The project recipe, on [-1, 1] images already cropped to the 64x64 face.
    got = emotion.preprocess(rgb_u8 / 127.5 - 1, box=None)
    np.testing.assert_allclose(np.asarray(got), cases["emotion_input"], atol=1e-6, rtol=0)


def test_preprocessing_matches_fixture_crops(cases):
    """The project recipe on the 1024 JPEGs reproduces Pillow's crop + antialiased resize within 1 level."""
    names = cases["image_name"]
    images = np.stack(
        [np.asarray(Image.open(require_shared("data", "celeba_hq", n)).convert("RGB")) for n in names]
    ).astype(np.float32) / 127.5 - 1
    flip = cases["is_flipped"].astype(bool)
    face_224 = np.array(faceres.preprocess(images))
    face_64 = (np.array(faceres.crop_resize(images, emotion.INPUT_SIZE)) + 1) * 127.5
    face_224[flip], face_64[flip] = face_224[flip][:, :, ::-1], face_64[flip][:, :, ::-1]
    assert np.abs(face_224 - cases["faceres_input_u8"]).max() <= 1.0
    assert np.abs(face_64 - cases["emotion_rgb_u8"]).max() <= 1.0


@pytest.mark.slow
def test_bfloat16_option(faceres_conv, emotion_conv, cases):
    # bf16 really runs: every convolution and dense layer of both networks multiplies bf16 operands; FaceRes's
    # expected age (probabilities . bin ages, an output statistic, not a layer) stays float32.
    face, emo_in = cases["faceres_input_u8"].astype(np.float32), cases["emotion_input"]
    for dtype, option, kept in (("bf16", dict(dtype=jnp.bfloat16), {"dot_general": 1}), ("f32", {}, None)):
        assert_contractions_in(dtype, functools.partial(faceres.apply, **option), faceres_conv.variables, face,
                               ops=("convolution", "dot_general"), float32_kept=kept)
        assert_contractions_in(dtype, functools.partial(emotion.apply, **option), emotion_conv.variables, emo_in)
    apply_bf16 = jax.jit(functools.partial(faceres.apply, dtype=jnp.bfloat16))
    out = apply_bf16(faceres_conv.variables, cases["faceres_input_u8"].astype(np.float32))
    assert out["descriptor"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out["gender"][:, 0] > 0.5).astype(np.int32), cases["is_male"])
    emo = jax.jit(functools.partial(emotion.apply, dtype=jnp.bfloat16))(emotion_conv.variables, cases["emotion_input"])
    np.testing.assert_array_equal(np.argmax(emo["probs"], -1), np.argmax(cases["emotion_probs"], -1))
