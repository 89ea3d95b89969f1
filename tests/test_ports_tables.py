"""``ports.tables``: the one converter-table mechanism, on a toy table (each refusal names the file and offender)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magec_jax.errors import FileFormatError
from ports.tables import Rule, apply_table, constant, linear_to_dense, module_leaves, oihw_to_hwio, scalar


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(2, name="fc")(x.mean(axis=(1, 2)))


TARGETS = module_leaves(_Toy(), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
TABLE = (
    Rule(r"(conv)\.weight", r"params/\1/kernel", oihw_to_hwio),
    Rule(r"(conv|fc)\.bias", r"params/\1/bias"),
    Rule(r"fc\.weight", "params/fc/kernel", linear_to_dense),
    Rule(r"conv\.gain", None, constant(1.0, "a unit gain")),
)


def _state_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "conv.gain": np.ones((), np.float32),
        "fc.weight": rng.standard_normal((2, 4)).astype(np.float32),
        "fc.bias": rng.standard_normal(2).astype(np.float32),
    }


def _refusal(sources, *needles, table=TABLE, **kwargs) -> str:
    with pytest.raises(FileFormatError) as err:
        apply_table(table, sources, TARGETS, what="a toy state dict", **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_every_leaf_filled_with_its_layout():
    sd = _state_dict()
    flat = apply_table(TABLE, [("toy.pth", sd)], TARGETS, what="a toy state dict")
    assert sorted(flat) == sorted(TARGETS) == ["params/conv/bias", "params/conv/kernel", "params/fc/bias",
                                               "params/fc/kernel"]
    np.testing.assert_array_equal(flat["params/conv/kernel"], sd["conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["params/fc/kernel"], sd["fc.weight"].T)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable for a in flat.values())


def test_sources_from_two_files_and_nested_names():
    sd = _state_dict()
    heads = {"fc": {"weight": sd.pop("fc.weight"), "bias": sd.pop("fc.bias")}}  # read as 'fc/weight', 'fc/bias'
    table = (*TABLE[:1], Rule(r"conv\.bias", "params/conv/bias"), TABLE[3],
             Rule(r"fc/weight", "params/fc/kernel", linear_to_dense), Rule(r"fc/bias", "params/fc/bias"))
    flat = apply_table(table, [("trunk.pth", sd), ("heads.pth", heads)], TARGETS, what="a toy state dict")
    np.testing.assert_array_equal(flat["params/fc/kernel"], heads["fc"]["weight"].T)
    # A leaf missing from both files is reported against both.
    del heads["fc"]["bias"]
    _refusal([("trunk.pth", sd), ("heads.pth", heads)], "trunk.pth + heads.pth: incomplete: 1 leaves missing for "
             "a toy state dict: no tensor for 'params/fc/bias'", table=table)


def test_fill_later_leaves_are_left_to_the_caller():
    sd = _state_dict()
    del sd["fc.bias"]
    flat = apply_table(TABLE, [("toy.pth", sd)], TARGETS, what="a toy state dict", fill_later=("params/fc/bias",))
    assert "params/fc/bias" not in flat and len(flat) == 3


@pytest.mark.parametrize(
    "edit,needles",
    [
        ("unknown", ("toy.pth: 1 tensor(s) that a toy state dict does not have: 'conv.extra' matches no rule",)),
        ("foreign", ("toy.pth: not a toy state dict: no tensor name matches (found 'bn1.bias', 'bn1.weight')",)),
        ("shape", ("'fc.bias' has shape (3,), which gives 'params/fc/bias' (3,) where (2,) is expected",)),
        ("constant", ("'conv.gain' (shape ()) holds 2.0, not a unit gain",)),
        ("not_array", ("'fc.bias' is a list, expected an array",)),
        ("no_place", ("'fc.weight' has no place in the network (would be 'params/fc2/kernel')",)),
    ],
)
def test_refusals_name_the_file_and_the_offender(edit, needles):
    sd, table = _state_dict(), TABLE
    if edit == "unknown":
        sd["conv.extra"] = np.zeros(1, np.float32)
    elif edit == "foreign":
        sd = {"bn1.weight": np.ones(2, np.float32), "bn1.bias": np.zeros(2, np.float32)}
    elif edit == "shape":
        sd["fc.bias"] = np.zeros(3, np.float32)
    elif edit == "constant":
        sd["conv.gain"] = np.full((), 2.0, np.float32)
    elif edit == "not_array":
        sd["fc.bias"] = [0.0, 0.0]
    else:
        table = (*TABLE[:2], Rule(r"fc\.weight", "params/fc2/kernel", linear_to_dense), TABLE[3])
    _refusal([("toy.pth", sd)], *needles, table=table)


def test_a_table_whose_rules_overlap_is_refused():
    table = (*TABLE, Rule(r"conv\.(weight|bias)", None))
    _refusal([("toy.pth", _state_dict())], "'conv.weight' matches 2 rules", table=table)


def test_a_leaf_filled_twice_is_refused():
    sd = dict(_state_dict(), **{"conv.bias_copy": np.zeros(4, np.float32)})
    table = (*TABLE, Rule(r"conv\.bias_copy", "params/conv/bias"))
    _refusal([("toy.pth", sd)], "'params/conv/bias'", "which another tensor already filled", table=table)


def test_scalar_and_constant_transforms():
    assert scalar(np.full((1, 1), 3.0, np.float32)).shape == ()
    with pytest.raises(ValueError, match="has 2 elements"):
        scalar(np.zeros(2))
    near = constant(np.ones(2, np.float32), "ones", atol=1e-6)
    near(np.ones(2, np.float32) + 1e-7)
    with pytest.raises(ValueError, match="an array of shape"):
        constant(np.zeros(20), "zeros")(np.ones(20))
