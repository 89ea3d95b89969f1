"""Converter of StyleFlow's conditional CNF prior (``flow_weight/modellarge10k.pt`` of RameenAbdal/StyleFlow).

    python -m ports.convert modellarge10k.pt weights/styleflow      # format 'styleflow', detected

The file is ``torch.save(prior.state_dict())`` of ``cnf(512, '512-512-512-512-512', 17, 1)`` (zip or legacy
format; tensors saved from CUDA are read like CPU ones), read by ``ports.torch_files.load_torch`` without
torch and without running code from it. The architecture is read off the file: the latent width from
``chain.0.weight``, the context size from ``_hyper_gate.weight`` (its inputs are time + context), the hidden
widths from each ``layers.N._layer.weight`` and the number of CNF blocks from the ``chain.N`` indices. Then
one table maps every tensor (torch ``Linear`` weights ``[out, in]`` -> Dense kernels ``[in, out]``) into
:class:`magec_jax.models.styleflow.StyleFlow`'s variables; the training counters ``step`` and ``_num_evals``
are read and dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import styleflow
from magec_jax.weights import Converted, unflatten
from ports.loss_nets import IN_MEMORY, select_state_dict
from ports.tables import Rule, apply_table, few, linear_to_dense, module_leaves, scalar
from ports.torch_files import load_torch

_ODENET = r"chain\.(\d*[13579])\.odefunc\.diffeq\.layers\.(\d+)"

STYLEFLOW_RULES: tuple[Rule, ...] = (
    # MovingBatchNorm1d at the even chain positions.
    Rule(r"chain\.(\d*[02468])\.(weight|bias)", r"params/chain.\1/\2"),
    Rule(r"chain\.(\d*[02468])\.(running_mean|running_var)", r"batch_stats/chain.\1/\2"),
    Rule(r"chain\.\d*[02468]\.step", None),  # training-step counter; unused in eval
    # CNF blocks at the odd positions.
    Rule(r"chain\.(\d*[13579])\.sqrt_end_time", r"params/chain.\1/sqrt_end_time", scalar),
    Rule(r"chain\.\d*[13579]\.odefunc\._num_evals", None),  # evaluation counter
    Rule(rf"{_ODENET}\.(_layer|_hyper_gate|_hyper_bias)\.weight",
         r"params/chain.\1/odefunc/diffeq/layers.\2/\3/kernel", linear_to_dense),
    Rule(rf"{_ODENET}\.(_layer|_hyper_gate)\.bias", r"params/chain.\1/odefunc/diffeq/layers.\2/\3/bias"),
)

_WHAT = "a StyleFlow prior state dict (cnf(...) of RameenAbdal/StyleFlow)"


def _shape(state_dict: Mapping[str, Any], name: str, ndim: int, source: str) -> tuple[int, ...]:
    value = state_dict.get(name)
    if not isinstance(value, np.ndarray) or value.ndim != ndim:
        found = "missing" if value is None else f"shape {getattr(value, 'shape', type(value).__name__)}"
        raise FileFormatError(source, f"not {_WHAT}: {name!r} is {found}, expected a {ndim}-d tensor "
                              f"(found {few(state_dict)})")
    return value.shape


def config_from_state_dict(state_dict: Mapping[str, Any], *, source: str = IN_MEMORY) -> styleflow.StyleFlowConfig:
    """The architecture a StyleFlow state dict holds (one-line error naming ``source`` if it is not one)."""
    (w_dim,) = _shape(state_dict, "chain.0.weight", 1, source)
    chain = {int(m[1]) for k in state_dict if (m := re.match(r"chain\.(\d+)\.", k))}
    num_blocks = max(chain) // 2
    if num_blocks < 1 or chain != set(range(2 * num_blocks + 1)):
        raise FileFormatError(source, f"not {_WHAT}: chain positions {sorted(chain)} are not BatchNorm, CNF, "
                              "BatchNorm, ...")
    prefix = "chain.1.odefunc.diffeq.layers"
    layers = sorted({int(m[1]) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\._layer\.", k))})
    if layers != list(range(len(layers))) or len(layers) < 2:
        raise FileFormatError(source, f"not {_WHAT}: ODE net layers {layers}, expected 0..N with N >= 1")
    widths = [_shape(state_dict, f"{prefix}.{i}._layer.weight", 2, source)[0] for i in layers]
    gate_in = _shape(state_dict, f"{prefix}.0._hyper_gate.weight", 2, source)[1]
    if widths[-1] != w_dim:
        raise FileFormatError(source, f"not {_WHAT}: the ODE net ends at width {widths[-1]}, the latents are "
                              f"{w_dim} wide")
    return styleflow.StyleFlowConfig(w_dim=int(w_dim), context_dim=int(gate_in) - 1,
                                     hidden_dims=tuple(int(w) for w in widths[:-1]), num_blocks=num_blocks)


def convert_styleflow_state_dict(state_dict: Mapping[str, Any], *, source: str = IN_MEMORY) -> Converted:
    """The prior from an in-memory state dict of numpy arrays (names as ``prior.state_dict()``)."""
    config = config_from_state_dict(state_dict, source=source)
    model = styleflow.StyleFlow(config)
    x = jax.ShapeDtypeStruct((1, 1, config.w_dim), jnp.float32)
    ctx = jax.ShapeDtypeStruct((1, config.context_dim), jnp.float32)
    flat = apply_table(STYLEFLOW_RULES, [(source, state_dict)], module_leaves(model, x, ctx), what=_WHAT)
    manifest = {"converter": "ports.styleflow.convert_styleflow/1"}
    return Converted(kind=styleflow.KIND, config=config.to_dict(), variables=unflatten(flat), manifest=manifest)


def convert_styleflow(path: str | Path, *, network: str | None = None) -> Converted:
    """The prior from a ``torch.save(prior.state_dict())`` file (``network`` selects a nested dict)."""
    state_dict = select_state_dict(load_torch(path), path, network)
    return convert_styleflow_state_dict(state_dict, source=str(path))
