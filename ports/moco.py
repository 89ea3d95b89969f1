"""Converter of MoCo v2 checkpoints (facebookresearch/moco ``main_moco.py``) into the identity trunk that
encoder4editing's ``MocoLoss`` loads (:mod:`magec_jax.models.moco`).

    python -m ports.convert moco_v2_800ep_pretrain.pth.tar weights/moco     # format 'moco', detected by its keys

An official checkpoint is ``torch.save({'epoch', 'arch', 'state_dict', 'optimizer'})`` (zip or legacy format).
The state dict is the ``DistributedDataParallel``-wrapped ``MoCo`` module, so every key starts with ``module.``
(dropped by ``select_state_dict``):

    queue [dim, K], queue_ptr [1]                    the negatives' queue                ignored
    encoder_q.<torchvision resnet50 key, not fc>     the query encoder's trunk (318)     kept, renamed to the key
    encoder_q.fc.0.*, encoder_q.fc.2.*               MoCo v2's MLP projection head       ignored
    encoder_k.*                                      the momentum (key) encoder          ignored

``optimizer`` and ``epoch`` are not read; ``arch`` must be ``resnet50`` when present. This is exactly what
e4e keeps (keys starting ``module.encoder_q`` but not ``module.encoder_q.fc``). A MoCo v1 checkpoint (one
Linear head ``encoder_q.fc.weight``) or any other file is refused in one line naming the file and the reason.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from magec_jax.errors import FileFormatError
from magec_jax.models import moco
from magec_jax.weights import Converted, unflatten
from ports.loss_nets import IN_MEMORY, RESNET50_RULES, read_weights, select_state_dict
from ports.tables import Rule, apply_table, few, module_leaves

ARCH = "resnet50"
QUERY = "encoder_q."
MLP_HEAD = ("encoder_q.fc.0.weight", "encoder_q.fc.2.weight")

MOCO_V2_RULES: tuple[Rule, ...] = (
    # The query encoder's trunk: torchvision's ResNet-50 table under the 'encoder_q.' prefix, without fc.
    *(Rule(rf"encoder_q\.{r.pattern}", r.target, r.transform)
      for r in RESNET50_RULES if not r.pattern.startswith("fc")),
    Rule(r"encoder_q\.fc\.[02]\.(?:weight|bias)", None),  # the MLP projection head: e4e drops it
    Rule(r"encoder_k\..+", None),  # the momentum encoder: e4e drops it
    Rule(r"queue|queue_ptr", None),  # the queue of negatives and its pointer
)


def _check_moco_v2(state_dict: Mapping[str, Any], source: str) -> None:
    """A one-line refusal of anything that is not a MoCo v2 state dict (``module.`` already removed)."""
    names = [str(k) for k in state_dict]
    if not any(k.startswith(QUERY) for k in names):
        raise FileFormatError(
            source, f"not a MoCo v2 checkpoint: no 'module.encoder_q.*' tensors in its state_dict (found {few(names)})"
        )
    if not all(k in state_dict for k in MLP_HEAD):
        if "encoder_q.fc.weight" in state_dict:
            raise FileFormatError(
                source, "a MoCo v1 checkpoint (one Linear head 'encoder_q.fc.weight'), not MoCo v2 (MLP head "
                "'encoder_q.fc.0' + 'encoder_q.fc.2'), whose trunk e4e's MocoLoss uses"
            )
        raise FileFormatError(source, "not a MoCo v2 checkpoint: encoder_q has no MLP head "
                                      "('encoder_q.fc.0.weight' + 'encoder_q.fc.2.weight')")


@functools.lru_cache(maxsize=1)
def _trunk_leaves() -> Mapping[str, jax.ShapeDtypeStruct]:
    """The trunk's variable shapes (tracing a ResNet-50 init takes seconds: once per process)."""
    image = jax.ShapeDtypeStruct((1, moco.INPUT_SIZE, moco.INPUT_SIZE, 3), jnp.float32)
    return types.MappingProxyType(module_leaves(moco.MocoResNet50(), image))


def convert_moco_state_dict(
    state_dict: Mapping[str, Any], *, source: str = IN_MEMORY, extra: Mapping[str, Any] | None = None
) -> Converted:
    """The identity trunk from a MoCo v2 state dict of numpy arrays (keys without ``module.``)."""
    _check_moco_v2(state_dict, source)
    leaves = apply_table(MOCO_V2_RULES, [(source, state_dict)], _trunk_leaves(), what="a MoCo v2 ResNet-50 checkpoint")
    head = state_dict[MLP_HEAD[1]]
    queue = state_dict.get("queue")
    info = {"projection_dim": int(head.shape[0]), "ignored": "encoder_q.fc (MLP head), encoder_k, queue, optimizer"}
    if queue is not None and getattr(queue, "ndim", 0) == 2:
        info["queue_size"] = int(queue.shape[1])
    manifest = {"converter": "ports.moco.convert_moco/1", "extra": {**info, **(extra or {})}}
    return Converted(kind=moco.KIND, config=dict(moco.CONFIG), variables=unflatten(leaves), manifest=manifest)


def convert_moco(path: str | Path, *, network: str | None = None) -> Converted:
    """MoCo v2 (``main_moco.py --mlp``) checkpoint -> e4e's MoCo identity trunk; see the module docstring.

    ``network`` names the entry holding the state dict when it is not ``state_dict``.
    """
    obj = read_weights(path)
    extra: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        arch = obj.get("arch")
        if arch is not None and arch != ARCH:
            raise FileFormatError(path, f"a MoCo checkpoint of a {arch!r} encoder; e4e's MocoLoss uses {ARCH}")
        extra = {k: obj[k] for k in ("arch", "epoch") if isinstance(obj.get(k), (str, int))}
    return convert_moco_state_dict(select_state_dict(obj, path, network), source=str(path), extra=extra)
