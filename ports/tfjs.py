"""TensorFlow.js graph models: a reader, and the converters of Human's ``faceres``, ``emotion``, ``blazeface``
and ``facemesh`` networks.

A TF.js graph model is ``model.json`` + binary weight shards::

    model.json  {"format": "graph-model", "generatedBy": ..., "modelTopology": {"node": [GraphDef nodes
                 with name/op/input/attr]}, "weightsManifest": [{"paths": ["model.bin", ...],
                 "weights": [{"name", "shape", "dtype", "quantization"?}, ...]}, ...]}
    *.bin       each group's shards, concatenated in ``paths`` order, hold that group's tensors back to
                back (little-endian, row-major, no padding) in ``weights`` order.

Supported tensor encodings: float32 and int32, and the quantised forms the TF.js converter writes:
``quantization.dtype`` float16 (plain half -> float32, subnormals kept) and uint8/uint16 with
``scale``/``min`` (``q * scale + min`` in float64, then float32; int32 tensors are rounded half up, as
TF.js does). Every problem is one :class:`~magec_jax.errors.FileFormatError` line naming the file.

The converters read the graph to confirm the architecture (every non-Const node, its op, inputs and
layout attributes must be exactly those of the network the Flax port computes), then fill the Flax
variables through a table of ``ports.tables.Rule`` rows (regex on the graph const name -> target leaf,
transform), asserting that every weight is consumed and every target leaf filled with the right shape. The MediaPipe graphs (BlazeFace,
FaceMesh) name most of their weights by position (``unknown_17``) or by layer with the layer number varying
by kind, so their expected graph and name table are built together by one walk over the architecture
(:class:`_Spec`): each weight is named once, where the node that reads it is.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import blazeface, emotion, facemesh, faceres
from magec_jax.weights import Converted, unflatten
from ports.tables import Rule, Transform, apply_table, constant, module_leaves, same

CONVERTER = "ports.tfjs/1"

# Plain encodings: manifest dtype -> numpy dtype of the stored bytes.
_PLAIN = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}
# Quantised encodings: quantization.dtype -> numpy dtype of the stored bytes.
_QUANTISED = {"float16": np.dtype("<f2"), "uint8": np.dtype("u1"), "uint16": np.dtype("<u2")}


@dataclasses.dataclass(frozen=True)
class Node:
    """One GraphDef node, with its attributes decoded (strings, ints, floats, bools and lists thereof)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GraphModel:
    """A TF.js graph model as read from disk.

    Attributes:
      path: the model .json.
      nodes: name -> node, in graph order.
      weights: const name -> array (dequantised: float32 or int32), in manifest order.
      metadata: the JSON's top-level fields other than the topology and manifest (``format``,
        ``generatedBy``, ``convertedBy``, ``signature``, ...).
    """

    path: Path
    nodes: dict[str, Node]
    weights: dict[str, np.ndarray]
    metadata: dict[str, Any]


def _decode_attr(value: dict[str, Any]) -> Any:
    """Decodes a JSON AttrValue: ``s`` (base64 bytes) -> str, ``i`` -> int, ``list`` -> tuple; others as is."""
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8", errors="replace")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    if "list" in value:
        items = value["list"]
        if "s" in items:
            return tuple(base64.b64decode(s).decode("utf-8", errors="replace") for s in items["s"])
        if "i" in items:
            return tuple(int(i) for i in items["i"])
        if "f" in items:
            return tuple(float(f) for f in items["f"])
        return ()
    return value


def _stored_dtype(entry: dict[str, Any], json_path: Path) -> np.dtype:
    """Validates a manifest entry and returns the numpy dtype of its stored elements."""
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    if not isinstance(name, str) or not isinstance(shape, list) or any(
        not isinstance(d, int) or d < 0 for d in shape
    ):
        raise FileFormatError(json_path, f"malformed weightsManifest entry {str(entry)[:80]!r}")
    quant = entry.get("quantization")
    if quant is None:
        if dtype not in _PLAIN:
            raise FileFormatError(json_path, f"weight {name!r} has unsupported dtype {dtype!r}")
        return _PLAIN[dtype]
    qdtype = quant.get("dtype")
    if qdtype not in _QUANTISED:
        raise FileFormatError(json_path, f"weight {name!r} has unsupported quantization dtype {qdtype!r}")
    if dtype not in _PLAIN or (qdtype == "float16" and dtype != "float32"):
        raise FileFormatError(json_path, f"weight {name!r}: cannot dequantise {qdtype} to {dtype!r}")
    if qdtype != "float16" and not all(isinstance(quant.get(k), (int, float)) for k in ("scale", "min")):
        raise FileFormatError(json_path, f"weight {name!r}: {qdtype} quantization without scale/min")
    return _QUANTISED[qdtype]


def _decode_tensor(entry: dict[str, Any], stored: np.dtype, data: memoryview) -> np.ndarray:
    """Decodes one (validated) manifest entry from exactly its bytes ``data``."""
    raw = np.frombuffer(data, dtype=stored).reshape(entry["shape"])
    quant = entry.get("quantization")
    if quant is None:
        return raw.astype(stored.newbyteorder("="))
    if stored == _QUANTISED["float16"]:
        return raw.astype(np.float32)
    values = raw.astype(np.float64) * quant["scale"] + quant["min"]
    if entry["dtype"] == "int32":
        return np.floor(values + 0.5).astype(np.int32)
    return values.astype(np.float32)


def read_graph_model(path: str | Path) -> GraphModel:
    """Reads a TF.js graph model (``model.json`` and the shards it lists, found beside it).

    Raises:
      FileFormatError: bad JSON, not a graph model, a missing shard, shard sizes that disagree with the
        manifest, an unknown dtype or quantisation, or a duplicated weight name.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except OSError as e:
        raise FileFormatError(path, f"unreadable ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FileFormatError(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("modelTopology"), dict) or not isinstance(
        doc.get("weightsManifest"), list
    ):
        raise FileFormatError(path, "not a TF.js graph model (needs modelTopology and weightsManifest)")
    if doc.get("format", "graph-model") != "graph-model":
        raise FileFormatError(path, f"format is {doc['format']!r}, expected 'graph-model' (a layers model?)")

    nodes: dict[str, Node] = {}
    for raw in doc["modelTopology"].get("node", []):
        try:
            node = Node(
                name=raw["name"], op=raw["op"], inputs=tuple(raw.get("input", ())),
                attrs={k: _decode_attr(v) for k, v in raw.get("attr", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise FileFormatError(path, f"malformed graph node {str(raw)[:80]!r} ({e!r})") from None
        nodes[node.name] = node

    weights: dict[str, np.ndarray] = {}
    for group in doc["weightsManifest"]:
        if not isinstance(group, dict) or not isinstance(group.get("paths"), list):
            raise FileFormatError(path, f"malformed weightsManifest group {str(group)[:80]!r}")
        shards = [path.parent / p for p in group["paths"]]
        chunks = []
        for shard in shards:
            try:
                chunks.append(shard.read_bytes())
            except FileNotFoundError:
                raise FileFormatError(shard, f"missing weight shard listed in {path.name}") from None
            except OSError as e:
                raise FileFormatError(shard, f"unreadable weight shard ({e.strerror})") from None
        data = memoryview(b"".join(chunks))
        entries = group.get("weights", [])
        stored = [_stored_dtype(entry, path) for entry in entries]
        sizes = [int(np.prod(e["shape"], dtype=np.int64)) * st.itemsize for e, st in zip(entries, stored)]
        if sum(sizes) != len(data):
            where = shards[0] if len(shards) == 1 else path
            names = ", ".join(s.name for s in shards)
            raise FileFormatError(
                where, f"weight shard(s) {names} hold {len(data)} bytes but {path.name} lists {sum(sizes)}"
            )
        offset = 0
        for entry, st, size in zip(entries, stored, sizes):
            if entry["name"] in weights:
                raise FileFormatError(path, f"weight {entry['name']!r} listed twice in weightsManifest")
            weights[entry["name"]] = _decode_tensor(entry, st, data[offset : offset + size])
            offset += size
    metadata = {k: v for k, v in doc.items() if k not in ("modelTopology", "weightsManifest")}
    return GraphModel(path=path, nodes=nodes, weights=weights, metadata=metadata)


# ---------------------------------------------------------------------------------------------------------
# Architecture checks: the exact non-Const graph each Flax port computes.

# name -> (op, inputs, attributes that must match)
ExpectedGraph = dict[str, tuple[str, tuple[str, ...], dict[str, Any]]]


def _conv_attrs(stride: int, padding: str) -> dict[str, Any]:
    return {"strides": (1, stride, stride, 1), "padding": padding, "data_format": "NHWC",
            "dilations": (1, 1, 1, 1)}


def _faceres_graph() -> ExpectedGraph:
    """The faceres graph: MobileNet-v1 with folded BN, ReLU6 as Relu -> Minimum -> Maximum, three heads."""
    g: ExpectedGraph = {"input_1": ("Placeholder", (), {})}

    def relu6(prefix: str, x: str) -> str:
        g[f"{prefix}_relu/Relu"] = ("Relu", (x,), {})
        g[f"{prefix}_relu/clip_by_value/Minimum"] = ("Minimum", (f"{prefix}_relu/Relu", f"{prefix}_relu/Cast"), {})
        out = f"{prefix}_relu/clip_by_value"
        g[out] = ("Maximum", (f"{prefix}_relu/clip_by_value/Minimum", f"{prefix}_relu/Const_1"), {})
        return out

    def conv_bn(prefix: str, x: str, stride: int) -> str:
        bn = f"{prefix}_bn/batchnorm_1"
        g[f"{bn}/mul_1"] = ("Conv2D", (x, f"{prefix}/convolution/merged_input"), _conv_attrs(stride, "SAME"))
        g[f"{bn}/add_1"] = ("Add", (f"{bn}/mul_1", f"{bn}/sub"), {})
        return relu6(prefix, f"{bn}/add_1")

    x = conv_bn("conv1", "input_1", 2)
    for k, stride in enumerate(faceres.DW_STRIDES, start=1):
        dw, bn = f"conv_dw_{k}", f"conv_dw_{k}_bn/batchnorm_1"
        g[f"{dw}/depthwise"] = ("DepthwiseConv2dNative", (x, f"{dw}/depthwise_kernel"), _conv_attrs(stride, "SAME"))
        g[f"{bn}/mul_1"] = ("Mul", (f"{dw}/depthwise", f"{bn}/mul"), {})
        g[f"{bn}/add_1"] = ("Add", (f"{bn}/mul_1", f"{bn}/sub"), {})
        x = conv_bn(f"conv_pw_{k}", relu6(dw, f"{bn}/add_1"), 1)
    g["global_pooling/Mean"] = ("Mean", (x, "global_pooling/Mean/reduction_indices"), {"keep_dims": False})
    dense = {"transpose_a": False, "transpose_b": False}
    g["feats/Relu"] = ("_FusedMatMul", ("global_pooling/Mean", "feats/kernel", "feats/bias"),
                       {**dense, "fused_ops": ("BiasAdd", "Relu")})
    for head in ("gender_pred", "age_pred"):
        g[f"{head}/BiasAdd"] = ("_FusedMatMul", ("feats/Relu", f"{head}/kernel", f"{head}/bias"),
                                {**dense, "fused_ops": ("BiasAdd",)})
    g["gender_pred/Sigmoid"] = ("Sigmoid", ("gender_pred/BiasAdd",), {})
    g["age_pred/Softmax"] = ("Softmax", ("age_pred/BiasAdd",), {})
    return g


_EMO = "StatefulPartitionedCall/model_1/"


def _emotion_graph() -> ExpectedGraph:
    """The emotion graph (mini-Xception, two residual blocks).

    ``spec`` lists the nodes under ``_EMO`` without that prefix (it is added below); ``input_1``,
    ``Identity`` and the depthwise/head consts ``unknown_*`` have no prefix.
    """
    bias, bias_relu = ("BiasAdd",), ("BiasAdd", "Relu")

    def fused(x: str, layer: str, stride: int, padding: str, ops: tuple[str, ...]) -> tuple:
        weights = (f"{_EMO}{layer}_weights", f"{_EMO}{layer}_bn_offset")
        return ("_FusedConv2D", (x, *weights), {**_conv_attrs(stride, padding), "fused_ops": ops})

    def depthwise(x: str, const: str) -> tuple:
        return ("DepthwiseConv2dNative", (x, const), _conv_attrs(1, "SAME"))

    pool = {"ksize": (1, 3, 3, 1), "strides": (1, 2, 2, 1), "padding": "SAME", "data_format": "NHWC"}
    sep = "separable_conv2d_{}/separable_conv2d"
    spec: dict[str, tuple] = {
        "block1_conv1_act/Relu": fused("input_1", "conv2d_1/Conv2D", 2, "VALID", bias_relu),
        "block1_conv2_act/Relu": fused(f"{_EMO}block1_conv1_act/Relu", "conv2d_2/Conv2D", 1, "VALID", bias_relu),
        sep.format(1) + "/depthwise": depthwise(f"{_EMO}block1_conv2_act/Relu", "unknown_9"),
        "block2_sepconv2_act/Relu": fused(
            f"{_EMO}{sep.format(1)}/depthwise", sep.format(1), 1, "VALID", bias_relu),
        sep.format(2) + "/depthwise": depthwise(f"{_EMO}block2_sepconv2_act/Relu", "unknown_15"),
        "block2_sepconv2_bn/FusedBatchNormV3": fused(
            f"{_EMO}{sep.format(2)}/depthwise", sep.format(2), 1, "VALID", bias),
        "max_pooling2d_1/MaxPool": ("MaxPool", (f"{_EMO}block2_sepconv2_bn/FusedBatchNormV3",), pool),
        "batch_normalization_1/FusedBatchNormV3": fused(
            f"{_EMO}block1_conv2_act/Relu", "conv2d_3/Conv2D", 2, "SAME", bias),
        "add_1/add": ("AddV2", (f"{_EMO}max_pooling2d_1/MaxPool", f"{_EMO}batch_normalization_1/FusedBatchNormV3"),
                      {}),
        "block3_sepconv1_act/Relu": ("Relu", (f"{_EMO}add_1/add",), {}),
        sep.format(3) + "/depthwise": depthwise(f"{_EMO}block3_sepconv1_act/Relu", "unknown_26"),
        "block3_sepconv2_act/Relu": fused(
            f"{_EMO}{sep.format(3)}/depthwise", sep.format(3), 1, "VALID", bias_relu),
        sep.format(4) + "/depthwise": depthwise(f"{_EMO}block3_sepconv2_act/Relu", "unknown_32"),
        "block3_sepconv2_bn/FusedBatchNormV3": fused(
            f"{_EMO}{sep.format(4)}/depthwise", sep.format(4), 1, "VALID", bias),
        "max_pooling2d_2/MaxPool": ("MaxPool", (f"{_EMO}block3_sepconv2_bn/FusedBatchNormV3",), pool),
        "batch_normalization_2/FusedBatchNormV3": fused(f"{_EMO}add_1/add", "conv2d_4/Conv2D", 2, "SAME", bias),
        "add_2/add": ("AddV2", (f"{_EMO}max_pooling2d_2/MaxPool", f"{_EMO}batch_normalization_2/FusedBatchNormV3"),
                      {}),
        "conv2d_5/BiasAdd": ("_FusedConv2D", (f"{_EMO}add_2/add", "unknown_43", "unknown_44"),
                             {**_conv_attrs(1, "SAME"), "fused_ops": bias}),
        "global_average_pooling2d_1/Mean": (
            "Mean", (f"{_EMO}conv2d_5/BiasAdd", f"{_EMO}global_average_pooling2d_1/Mean/reduction_indices"),
            {"keep_dims": False}),
        "predictions/Softmax": ("Softmax", (f"{_EMO}global_average_pooling2d_1/Mean",), {}),
    }
    g: ExpectedGraph = {"input_1": ("Placeholder", (), {})}
    g.update({_EMO + name: node for name, node in spec.items()})
    g["Identity"] = ("Identity", (f"{_EMO}predictions/Softmax",), {})
    return g


# Ops whose inputs may come in either order (the MediaPipe graphs add the shortcut first or second).
_COMMUTATIVE = {"AddV2"}


def _check_graph(model: GraphModel, expected: ExpectedGraph, network: str) -> None:
    """Asserts that the graph's non-Const nodes are exactly ``expected`` and its consts are the weights."""
    computed = {name: node for name, node in model.nodes.items() if node.op != "Const"}
    missing = [name for name in expected if name not in computed]
    if missing:
        raise FileFormatError(
            model.path, f"not the {network} graph: no node {missing[0]!r} ({len(missing)} of "
            f"{len(expected)} expected nodes missing; generatedBy {model.metadata.get('generatedBy')!r})"
        )
    extra = [name for name in computed if name not in expected]
    if extra:
        raise FileFormatError(model.path, f"not the {network} graph: unexpected node {extra[0]!r}")
    for name, (op, inputs, attrs) in expected.items():
        node = computed[name]
        same_inputs = sorted(node.inputs) == sorted(inputs) if op in _COMMUTATIVE else node.inputs == inputs
        if node.op != op or not same_inputs:
            raise FileFormatError(
                model.path, f"not the {network} graph: node {name!r} is {node.op}{list(node.inputs)}, "
                f"expected {op}{list(inputs)}"
            )
        for key, want in attrs.items():
            if node.attrs.get(key) != want:
                raise FileFormatError(
                    model.path, f"not the {network} graph: node {name!r} has {key}={node.attrs.get(key)!r}, "
                    f"expected {want!r}"
                )
    consts = {name for name, node in model.nodes.items() if node.op == "Const"}
    if consts != set(model.weights):
        odd = sorted(consts ^ set(model.weights))[0]
        raise FileFormatError(model.path, f"const {odd!r} is in only one of the graph and the weightsManifest")


# ---------------------------------------------------------------------------------------------------------
# Name tables: ``ports.tables.Rule`` rows, regex on the const name -> target leaf, transform.


def _const(value: Any, meaning: str) -> Transform:
    """A rule transform checking a const that is not a parameter (the port builds it in) holds ``value``."""
    return constant(value, f"{np.asarray(value).tolist()}, {meaning}")


def _depthwise_to_hwio(w_HxWxCx1: np.ndarray) -> np.ndarray:
    """TF depthwise ``[kh, kw, C, 1]`` -> Flax grouped-conv ``[kh, kw, 1, C]``."""
    if w_HxWxCx1.ndim != 4 or w_HxWxCx1.shape[3] != 1:
        raise ValueError(f"depthwise kernel has shape {w_HxWxCx1.shape}, expected [kh, kw, C, 1]")
    return np.transpose(w_HxWxCx1, (0, 1, 3, 2))


_FACERES_TABLE = (
    Rule(r"(conv1|conv_pw_\d+)/convolution/merged_input", r"params/\1/kernel"),
    Rule(r"(conv1|conv_pw_\d+)_bn/batchnorm_1/sub", r"params/\1_bn/bias"),
    Rule(r"(conv_dw_\d+)/depthwise_kernel", r"params/\1/kernel", _depthwise_to_hwio),
    Rule(r"(conv_dw_\d+)_bn/batchnorm_1/mul", r"params/\1_bn/scale"),
    Rule(r"(conv_dw_\d+)_bn/batchnorm_1/sub", r"params/\1_bn/bias"),
    Rule(r"(feats|gender_pred|age_pred)/(kernel|bias)", r"params/\1/\2"),
    Rule(r"(conv1|conv_dw_\d+|conv_pw_\d+)_relu/Cast", None, _const(np.float32(6.0), "the ReLU6 upper clip")),
    Rule(r"(conv1|conv_dw_\d+|conv_pw_\d+)_relu/Const_1", None, _const(np.float32(0.0), "the ReLU6 lower clip")),
    Rule(r"global_pooling/Mean/reduction_indices", None, _const(np.array([1, 2], np.int32), "the mean over H, W")),
)

_EMO_RE = re.escape(_EMO)
_EMOTION_TABLE = (
    Rule(_EMO_RE + r"(conv2d_\d)/Conv2D_weights", r"params/\1/kernel"),
    Rule(_EMO_RE + r"(conv2d_\d)/Conv2D_bn_offset", r"params/\1/bias"),
    Rule(_EMO_RE + r"(separable_conv2d_\d)/separable_conv2d_weights", r"params/\1/pointwise/kernel"),
    Rule(_EMO_RE + r"(separable_conv2d_\d)/separable_conv2d_bn_offset", r"params/\1/pointwise/bias"),
    Rule(r"unknown_9", "params/separable_conv2d_1/depthwise/kernel", _depthwise_to_hwio),
    Rule(r"unknown_15", "params/separable_conv2d_2/depthwise/kernel", _depthwise_to_hwio),
    Rule(r"unknown_26", "params/separable_conv2d_3/depthwise/kernel", _depthwise_to_hwio),
    Rule(r"unknown_32", "params/separable_conv2d_4/depthwise/kernel", _depthwise_to_hwio),
    Rule(r"unknown_43", "params/conv2d_5/kernel"),
    Rule(r"unknown_44", "params/conv2d_5/bias"),
    Rule(_EMO_RE + r"global_average_pooling2d_1/Mean/reduction_indices", None,
         _const(np.array([1, 2], np.int32), "the mean over H, W")),
)


# ---------------------------------------------------------------------------------------------------------
# MediaPipe graphs (BlazeFace, FaceMesh): expected graph and name table built in one walk.


class _Spec:
    """An expected graph and its converter table under construction; each method returns the node's name."""

    def __init__(self) -> None:
        self.graph: ExpectedGraph = {}
        self.table: list[Rule] = []

    def node(self, name: str, op: str, inputs: tuple[str, ...], attrs: dict[str, Any] | None = None) -> str:
        self.graph[name] = (op, inputs, attrs or {})
        return name

    def param(self, const: str, leaf: str, transform: Transform = same) -> str:
        self.table.append(Rule(re.escape(const), leaf, transform))
        return const

    def const(self, const: str, value: Any, meaning: str) -> str:
        self.table.append(Rule(re.escape(const), None, _const(value, meaning)))
        return const

    def fused_conv(self, name: str, x: str, weights: tuple[str, ...], stride: int, padding: str,
                   ops: tuple[str, ...]) -> str:
        return self.node(name, "_FusedConv2D", (x, *weights), {**_conv_attrs(stride, padding), "fused_ops": ops})

    def depthwise(self, name: str, x: str, const: str, leaf: str, stride: int) -> str:
        kernel = self.param(const, leaf, _depthwise_to_hwio)
        return self.node(name, "DepthwiseConv2dNative", (x, kernel), _conv_attrs(stride, "SAME"))

    def channel_pad(self, name: str, x: str, const: str, extra: int) -> str:
        paddings = self.const(const, [[0, 0], [0, 0], [0, 0], [0, extra]], f"zero-pad {extra} channels")
        return self.node(name, "Pad", (x, paddings))


def _pool_attrs(padding: str) -> dict[str, Any]:
    return {"ksize": (1, 2, 2, 1), "strides": (1, 2, 2, 1), "padding": padding, "data_format": "NHWC"}


def _prelu_alpha(w_1x1xC: np.ndarray) -> np.ndarray:
    """The graph's PReLU alpha ``[1, 1, C]`` -> ``[C]``."""
    if w_1x1xC.ndim != 3 or w_1x1xC.shape[:2] != (1, 1):
        raise ValueError(f"PReLU alpha has shape {w_1x1xC.shape}, expected [1, 1, C]")
    return w_1x1xC.reshape(-1)


_BLAZE = "StatefulPartitionedCall/functional_1/"


def _blazeface_spec() -> _Spec:
    """The BlazeFace back-camera graph (see :mod:`magec_jax.models.blazeface`).

    Its weights are ``unknown``, ``unknown_0`` (first conv), then ``unknown_{4k+1}`` (depthwise) and
    ``unknown_{4k+3}``/``unknown_{4k+4}`` (pointwise kernel/bias) for blocks ``k = 0..31``, then the heads.
    """
    s, p = _Spec(), _BLAZE
    bias, bias_relu = ("BiasAdd",), ("BiasAdd", "Relu")

    def conv(name: str, x: str, layer: str, kernel: str, bias_const: str, stride: int, padding: str,
             ops: tuple[str, ...]) -> str:
        weights = (s.param(kernel, f"params/{layer}/kernel"), s.param(bias_const, f"params/{layer}/bias"))
        return s.fused_conv(p + name, x, weights, stride, padding, ops)

    x = conv("conv2d/Relu", s.node("input", "Placeholder", ()), "conv2d", "unknown", "unknown_0", 2, "SAME",
             bias_relu)
    pools = {7: "max_pooling2d", 15: "max_pooling2d_1", 23: "max_pooling2d_2"}
    pads = {15: "tf_op_layer_Pad/Pad", 23: "tf_op_layer_Pad_1/Pad_1"}
    channels = 24
    for k, (stride, features) in enumerate(blazeface.BLOCKS):
        sfx = f"_{k}" if k else ""
        dw = s.depthwise(f"{p}depthwise_conv2d{sfx}/depthwise", x, f"unknown_{4 * k + 1}",
                         f"params/depthwise_conv2d{sfx}/kernel", stride)
        pw = conv(f"conv2d_{k + 1}/BiasAdd", dw, f"conv2d_{k + 1}", f"unknown_{4 * k + 3}", f"unknown_{4 * k + 4}",
                  1, "VALID", bias)
        shortcut = x
        if stride == 2:
            shortcut = s.node(f"{p}{pools[k]}/MaxPool", "MaxPool", (x,), _pool_attrs("SAME"))
        if features > channels:
            shortcut = s.channel_pad(p + pads[k], shortcut, f"{p}{pads[k]}/paddings", features - channels)
        x = s.node(f"{p}re_lu{sfx}/Relu", "Relu", (s.node(f"{p}add{sfx}/add", "AddV2", (shortcut, pw)),))
        channels = features
    map16 = x
    dw = s.depthwise(f"{p}depthwise_conv2d_31/depthwise", x, "unknown_125", "params/depthwise_conv2d_31/kernel", 2)
    map8 = conv("re_lu_31/Relu", dw, "conv2d_32", "unknown_127", "unknown_128", 1, "VALID", bias_relu)
    # (output, graph layer, feature map, its weights, anchors per cell x values per anchor)
    heads = (("Identity", "classificators_1", map16, 33, (135, 136), 512, 1),
             ("Identity_2", "regressors_1", map16, 35, (131, 132), 512, 16),
             ("Identity_1", "classificators_2", map8, 34, (133, 134), 384, 1),
             ("Identity_3", "regressors_2", map8, 36, (129, 130), 384, 16))
    for identity, layer, feature_map, index, (kernel, bias_const), count, width in heads:
        y = conv(f"conv2d_{index}/BiasAdd", feature_map, f"conv2d_{index}", f"unknown_{kernel}",
                 f"unknown_{bias_const}", 1, "SAME", bias)
        reshape = f"{p}tf_op_layer_{layer}/{layer}"
        shape = s.const(f"{reshape}/shape", [1, count, width], f"reshape to [1, {count}, {width}]")
        s.node(identity, "Identity", (s.node(reshape, "Reshape", (y, shape)),))
    return s


_MESH = "StatefulPartitionedCall/model_1/"


def _facemesh_spec() -> _Spec:
    """The FaceMesh graph (see :mod:`magec_jax.models.facemesh`).

    Each folded convolution ``conv2d_c`` is computed by a node named ``batch_normalization_p`` after the
    PReLU ``p`` that follows it; ``add_d`` and ``max_pooling2d_*`` belong to depthwise block ``d``.
    """
    s, m = _Spec(), _MESH
    pools = {3: 1, 6: 2, 9: 3, 12: 4, 15: 5, 19: 6, 23: 7}  # depthwise block -> max_pooling2d_i
    pads = {3: 1, 6: 2, 9: 3}  # depthwise block -> channel_padding_i

    def alpha(prelu: int) -> str:
        return s.param(f"{m}p_re_lu_{prelu}/Neg", f"params/p_re_lu_{prelu}/alpha", _prelu_alpha)

    def folded(x: str, conv: int, prelu: int, stride: int, padding: str, with_prelu: bool) -> str:
        weights = (s.param(f"{m}conv2d_{conv}/Conv2D_weights", f"params/conv2d_{conv}/kernel"),
                   s.param(f"{m}conv2d_{conv}/Conv2D_bn_offset", f"params/conv2d_{conv}/bias"))
        if with_prelu:
            weights = (*weights, alpha(prelu))
        ops = ("BiasAdd", "Prelu") if with_prelu else ("BiasAdd",)
        return s.fused_conv(f"{m}batch_normalization_{prelu}/FusedBatchNormV3", x, weights, stride, padding, ops)

    def block(x: str, dw: int, conv: int, prelu: int, stride: int, channels: int, features: int) -> str:
        y = s.depthwise(f"{m}depthwise_conv2d_{dw}/depthwise", x, f"{m}depthwise_conv2d_{dw}/depthwise/ReadVariableOp",
                        f"params/depthwise_conv2d_{dw}/kernel", stride)
        y = folded(y, conv, prelu, 1, "VALID", with_prelu=False)
        if stride == 2:
            x = s.node(f"{m}max_pooling2d_{pools[dw]}/MaxPool", "MaxPool", (x,), _pool_attrs("VALID"))
        if features > channels:
            name = f"{m}channel_padding_{pads[dw]}/Pad"
            x = s.channel_pad(name, x, f"{name}/paddings", features - channels)
        add = s.node(f"{m}add_{dw}/add", "AddV2", (x, y))
        return s.node(f"{m}p_re_lu_{prelu}/Relu", "Prelu", (add, alpha(prelu)))

    x = folded(s.node("input_1", "Placeholder", ()), 1, 1, 2, "SAME", with_prelu=True)
    channels = 16
    for dw, (stride, features) in facemesh.TRUNK_BLOCKS.items():
        x = block(x, dw, dw + 1, dw + 1, stride, channels, features)
        channels = features
    trunk = x
    outputs = {"mesh": ("output_mesh", "Identity_2"), "contours": ("output_contours", "Identity"),
               "face_flag": ("output_faceflag", "Identity_1")}
    for h in facemesh.HEADS:
        x = trunk
        for i in range(h.count):
            x = block(x, h.first_dw + i, h.first_conv + i, h.first_prelu + i, 2 if i == 0 else 1, 128, 128)
        x = folded(x, h.first_conv + h.count, h.first_prelu + h.count, 1, "VALID", with_prelu=True)
        x = block(x, h.narrow_dw, h.first_conv + h.count + 1, h.first_prelu + h.count + 1, 1, 32, 32)
        weights = (s.param(f"{m}conv2d_{h.out}/Conv2D/ReadVariableOp", f"params/conv2d_{h.out}/kernel"),
                   s.param(f"{m}conv2d_{h.out}/BiasAdd/ReadVariableOp", f"params/conv2d_{h.out}/bias"))
        x = s.fused_conv(f"{m}conv2d_{h.out}/BiasAdd", x, weights, 3, "VALID", ("BiasAdd",))
        if h.name == "face_flag":
            x = s.node(f"{m}activation_1/Sigmoid", "Sigmoid", (x,))
        layer, identity = outputs[h.name]
        shape = s.const(f"{m}{layer}/Const", [-1, h.width], f"reshape to [-1, {h.width}]")
        s.node(identity, "Identity", (s.node(f"{m}{layer}/Reshape", "Reshape", (x, shape)),))
    return s


def _convert(
    path: str | Path, network: str | None, *, kind: str, description: str, expected: ExpectedGraph,
    table: Sequence[Rule], module: nn.Module, config: dict[str, Any],
) -> Converted:
    path = Path(path)
    if network not in (None, kind):
        raise FileFormatError(path, f"a TF.js graph model holds one network; --network {network!r} does not apply")
    model = read_graph_model(path)
    _check_graph(model, expected, description)
    image = jax.ShapeDtypeStruct((1, *config["input_shape"]), jnp.float32)
    flat = apply_table(table, [(path, model.weights)], module_leaves(module, image), what=f"the {description} graph")
    extra = {k: model.metadata[k] for k in ("generatedBy", "convertedBy") if k in model.metadata}
    return Converted(kind=kind, config=config, variables=unflatten(flat),
                     manifest={"converter": CONVERTER, "extra": extra})


def convert_faceres(path: str | Path, *, network: str | None = None) -> Converted:
    """Converts Human's ``faceres.json`` (+ shard) to :class:`magec_jax.models.faceres.FaceRes` variables."""
    return _convert(
        path, network, kind="faceres", description="faceres (HSE FaceRec MobileNet)", expected=_faceres_graph(),
        table=_FACERES_TABLE, module=faceres.FaceRes(),
        config={"input_shape": [faceres.INPUT_SIZE, faceres.INPUT_SIZE, 3]},
    )


def convert_emotion(path: str | Path, *, network: str | None = None) -> Converted:
    """Converts Human's ``emotion.json`` (+ shard) to :class:`magec_jax.models.emotion.Emotion` variables."""
    return _convert(
        path, network, kind="emotion", description="emotion (mini-Xception)", expected=_emotion_graph(),
        table=_EMOTION_TABLE, module=emotion.Emotion(),
        config={"input_shape": [emotion.INPUT_SIZE, emotion.INPUT_SIZE, 1], "labels": list(emotion.LABELS)},
    )


def convert_blazeface(path: str | Path, *, network: str | None = None) -> Converted:
    """Converts Human's ``blazeface.json`` (+ shard) to :class:`magec_jax.models.blazeface.BlazeFace` variables."""
    spec = _blazeface_spec()
    size = blazeface.INPUT_SIZE
    return _convert(
        path, network, kind="blazeface", description="BlazeFace (back camera, 256 px)", expected=spec.graph,
        table=spec.table, module=blazeface.BlazeFace(), config={"input_shape": [size, size, 3]},
    )


def convert_facemesh(path: str | Path, *, network: str | None = None) -> Converted:
    """Converts Human's ``facemesh.json`` (+ shard) to :class:`magec_jax.models.facemesh.FaceMesh` variables."""
    spec = _facemesh_spec()
    size = facemesh.INPUT_SIZE
    return _convert(
        path, network, kind="facemesh", description="FaceMesh (468 landmarks, 192 px)", expected=spec.graph,
        table=spec.table, module=facemesh.FaceMesh(), config={"input_shape": [size, size, 3]},
    )
