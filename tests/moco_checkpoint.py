"""The ``moco_v2_id`` fixture's MoCo v2 checkpoint, rebuilt bit-exactly from its specs (fixture README,
"Rebuilding the checkpoint in a test") and written as ``torch.save`` would, without torch.

* backbone: ``resnet50_attr/state_dict_spec.json`` (``loss_net_helpers.make_state_dict``), without ``fc.*``;
* MLP head and queue: ``head_and_queue_spec.json`` decoded by the same spec reader as the backbone;
* ``state_dict``: the 646 entries of ``checkpoint_layout.json`` in order, each from its source (``spec:``,
  ``head_and_queue_spec:`` or ``same_as:``), every sha256 checked;
* ``optimizer``: SGD's ``state`` (zero momentum buffers) and ``param_groups`` from the layout.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from loss_net_helpers import load_fixture_state_dict
from tools.torch_writers import tensor, write_torch_zip


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).hexdigest()


def build_checkpoint(fixture: Path, resnet_spec: Path) -> dict[str, Any]:
    """``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with numpy arrays, as ``main_moco.py`` saves it."""
    layout = json.loads((fixture / "checkpoint_layout.json").read_text())
    _, backbone = load_fixture_state_dict(resnet_spec)
    _, head_queue = load_fixture_state_dict(fixture / "head_and_queue_spec.json")
    state_dict: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, shape, dtype, sha, source in layout["state_dict"]["entries"]:
        kind, _, name = source.partition(":")
        value = {"spec": backbone, "head_and_queue_spec": head_queue, "same_as": state_dict}[kind][name]
        assert list(value.shape) == shape and value.dtype == np.dtype(dtype) and _sha(value) == sha, key
        state_dict[key] = value
    top = {entry["key"]: entry.get("value") for entry in layout["top_level"]}
    group = {k: v for k, v in layout["optimizer"]["param_groups"][0].items() if k != "params"}
    group["params"] = list(range(layout["optimizer"]["param_groups"][0]["params"]["len"]))
    momentum = {}
    for index, key, fields in layout["optimizer"]["state"]["entries"]:
        shape, dtype = fields["momentum_buffer"]
        assert list(state_dict[key].shape) == shape, key
        momentum[int(index)] = {"momentum_buffer": np.zeros(shape, np.dtype(dtype))}
    return {
        "epoch": top["epoch"],
        "arch": top["arch"],
        "state_dict": state_dict,
        "optimizer": {"state": momentum, "param_groups": [group]},
    }


def perturbed(state_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """What e4e ignores written with other values: every float ``encoder_k`` entry, both MLP heads and the queue
    (274 entries). Negated, as in the README's check, except ``running_var``, which is doubled instead so that a
    loader reading ``encoder_k`` by mistake computes finite (and wrong) features rather than NaNs."""
    out = OrderedDict()
    for key, value in state_dict.items():
        changed = value.dtype == np.float32 and (
            key.startswith("module.encoder_k.") or key.startswith("module.encoder_q.fc.") or key == "module.queue"
        )
        if changed:
            value = value * np.float32(2) if key.endswith("running_var") else -value
        out[key] = value
    return out


def as_torch_objects(obj: Any) -> Any:
    """Arrays -> ``tools.torch_writers`` tensors (dicts, OrderedDicts and lists walked; other values kept)."""
    if isinstance(obj, np.ndarray):
        return tensor(obj)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, as_torch_objects(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: as_torch_objects(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_torch_objects(v) for v in obj]
    return obj


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> Path:
    """Writes ``checkpoint`` in torch's zip format (what torch >= 1.6 ``torch.save`` writes)."""
    write_torch_zip(path, as_torch_objects(checkpoint))
    return path
