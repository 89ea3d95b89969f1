"""Read NVIDIA StyleGAN network pickles without their code: PyTorch (stylegan2-ada) and TensorFlow (stylegan2).

* PyTorch training snapshots (``network-snapshot-*.pkl``, ``ffhq.pkl``): a dict such as
  ``{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}``. NVIDIA's ``torch_utils.persistence`` pickles
  every network module as ``_reconstruct_persistent_obj(meta)``, where ``meta`` carries the module's full
  Python source (``module_src``), which NVIDIA's loader executes. Here each becomes a
  :class:`PersistentModule` holding its ``state_dict`` tensors; the source is never executed (only its sha256
  is kept). Tensor storages are legacy ``torch.save`` streams (``torch.storage._load_from_bytes``), read by
  ``ports.torch_files``.
* TensorFlow releases (``stylegan2-ffhq-config-f.pkl``): a tuple ``(G, D, Gs)`` of
  ``dnnlib.tflib.network.Network`` objects pickled as new-object + state dict; each becomes a
  :class:`TFNetwork` (its ``build_module_src`` is never executed either).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from magec_jax.errors import FileFormatError
from ports.pickles import (
    NUMPY_GLOBALS,
    ZIP_MAGIC,
    CorruptData,
    PickledDict,
    check_file,
    describe_head,
    is_pickle_head,
    plain,
    read_head,
    restricted_load,
)
from ports.torch_files import TensorSpec, torch_globals

_TORCH_FILE = "is a torch.save file, not a network pickle; read it with load_torch (--format state-dict/rosinality)"
_TF_PICKLE = "is a TensorFlow StyleGAN pickle (dnnlib.tflib networks), not a PyTorch snapshot; use --format tf-pkl"
_TORCH_PICKLE = "is a PyTorch stylegan2-ada snapshot, not a TensorFlow pickle; use --format nvidia-pkl"


@dataclasses.dataclass
class PersistentModule:
    """One ``torch_utils.persistence`` module of an NVIDIA pickle, without its code.

    Attributes:
      class_name: e.g. ``"Generator"``, ``"SynthesisLayer"``.
      init_args: positional constructor arguments as pickled (usually empty).
      init_kwargs: constructor keyword arguments (nested dicts), e.g. ``z_dim``, ``synthesis_kwargs``.
      params: the module's ``state_dict``: parameters and persistent buffers, own and of all submodules,
        under flattened names such as ``"mapping.fc0.weight"``, in ``state_dict`` order; read-only arrays.
      attrs: plain attributes (``resolution``, ``conv_clamp``, ``weight_gain``, ``training``, ...).
      modules: direct submodules by name.
      version: the persistence format version (6 for stylegan2-ada-pytorch).
      module_src_sha256: sha256 of the embedded source, which is never executed.
    """

    class_name: str
    init_args: tuple
    init_kwargs: dict
    params: dict[str, np.ndarray]
    attrs: dict[str, Any]
    modules: dict[str, "PersistentModule"]
    version: int | None = None
    module_src_sha256: str = ""


@dataclasses.dataclass
class TFNetwork:
    """One ``dnnlib.tflib.network.Network`` of a TensorFlow StyleGAN pickle, without its code.

    Attributes:
      name: e.g. ``"G"``, ``"G_synthesis"``.
      build_func_name: e.g. ``"G_main"``, ``"G_synthesis_stylegan2"``.
      static_kwargs: the network's constructor kwargs (``resolution``, ``fmap_base``, ...).
      variables: own variables by name relative to this network (``"4x4/Conv/weight"``), in creation order;
        0-d variables (``lod``, ``noise_strength``) are 0-d arrays.
      components: sub-networks by their dict key (``"mapping"``, ``"synthesis"``).
      version: the pickle state version (2 to 4).
    """

    name: str
    build_func_name: str
    static_kwargs: dict
    variables: dict[str, np.ndarray]
    components: dict[str, "TFNetwork"]
    version: int | None = None


def _sha256(text: Any) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text or b"")
    return hashlib.sha256(data).hexdigest()


def _state_tensors(table: Any, what: str, skip: Any = ()) -> dict[str, np.ndarray]:
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise CorruptData(f"{what} is a {type(table).__name__}, not a dict")
    out = {}
    for name, value in table.items():
        if value is None or name in skip:
            continue
        if not isinstance(value, (np.ndarray, TensorSpec)):
            raise CorruptData(f"{what}[{name!r}] is a {type(value).__name__}, not a tensor")
        out[str(name)] = value
    return out


def _persistent_globals(path: Path) -> dict[str, Any]:
    """Allow-list of PyTorch snapshots: the torch tensor builders plus persistence objects and EasyDict."""

    def reconstruct_persistent_obj(meta: Any) -> PersistentModule:
        """torch_utils.persistence._reconstruct_persistent_obj(meta): the module's state, code not run."""
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CorruptData("persistent object meta is not {'type': 'class', 'state': {...}, ...}")
        state = meta["state"]
        params = _state_tensors(state.get("_parameters"), "_parameters")
        params.update(
            _state_tensors(state.get("_buffers"), "_buffers", skip=state.get("_non_persistent_buffers_set") or ())
        )
        modules: dict[str, PersistentModule] = {}
        for name, child in (state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentModule):
                raise CorruptData(f"submodule {name!r} is a {type(child).__name__}, not a persistent module")
            modules[str(name)] = child
            params.update((f"{name}.{key}", value) for key, value in child.params.items())
        return PersistentModule(
            class_name=str(meta.get("class_name")),
            init_args=tuple(plain(state.get("_init_args") or (), path)),
            init_kwargs=plain(state.get("_init_kwargs") or {}, path),
            params=params,
            attrs={k: plain(v, path) for k, v in state.items() if not str(k).startswith("_")},
            modules=modules,
            version=meta.get("version"),
            module_src_sha256=_sha256(meta.get("module_src")),
        )

    table = torch_globals(path)
    table["torch_utils.persistence._reconstruct_persistent_obj"] = reconstruct_persistent_obj
    table["dnnlib.util.EasyDict"] = PickledDict
    return table


def _check_pickle(path: str | os.PathLike) -> Path:
    path = check_file(path)
    head = read_head(path)
    if head.startswith(ZIP_MAGIC) or (is_pickle_head(head) and head[2:4] == b"\x8a\x0a"):
        raise FileFormatError(path, _TORCH_FILE)
    if not is_pickle_head(head):
        raise FileFormatError(path, f"not a torch/pickle checkpoint ({describe_head(head)})")
    return path


def _found(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)
        return f"a dict with keys {keys[:8]}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    return f"a {type(obj).__name__}"


def load_nvidia_pkl(path: str | os.PathLike) -> dict[str, Any]:
    """Reads an NVIDIA stylegan2-ada-pytorch (or stylegan3) network pickle without executing its code.

    Args:
      path: the ``.pkl`` file: a training snapshot ``{'G', 'D', 'G_ema', 'augment_pipe',
        'training_set_kwargs', ...}`` or any dict holding persistent networks (e.g. ``{'G_ema': ...}``).

    Returns:
      The pickled dict with each network as a :class:`PersistentModule` and EasyDicts as plain dicts.

    Raises:
      FileFormatError: one line naming the file -- missing/empty/truncated/corrupt, not a pickle, a torch or
        TensorFlow file instead, no network inside, or a global outside the allow-list (code).
    """
    path = _check_pickle(path)
    with open(path, "rb") as f:
        obj = restricted_load(
            f, path=path, allowed=_persistent_globals(path), wrong_kind={"dnnlib.tflib.": _TF_PICKLE}
        )
    obj = plain(obj, path)
    if not isinstance(obj, dict) or not any(isinstance(v, PersistentModule) for v in obj.values()):
        raise FileFormatError(path, f"not an NVIDIA network pickle (found {_found(obj)} without networks)")
    return obj


class _PickledNetwork:
    """Stand-in for ``dnnlib.tflib.network.Network``: created by NEWOBJ, given its state dict by BUILD."""

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        """Keeps the state dict (``version, name, static_kwargs, components, ..., variables``)."""
        if not isinstance(state, dict):
            raise CorruptData("dnnlib Network state is not a dict")
        self.state = state


def _tf_network(obj: Any, path: Path, where: str) -> TFNetwork:
    if not isinstance(obj, _PickledNetwork) or not hasattr(obj, "state"):
        raise FileFormatError(path, f"not a TF StyleGAN pickle ({where} is {_found(obj)}, not a dnnlib Network)")
    state = obj.state
    try:
        variables = {}
        for name, value in state["variables"]:
            value = plain(value, path)
            if isinstance(value, np.generic):
                value = np.asarray(value)
                value.flags.writeable = False
            if not isinstance(value, np.ndarray):
                raise CorruptData(f"variable {name!r} is a {type(value).__name__}")
            variables[str(name)] = value
        components = {
            str(key): _tf_network(sub, path, f"{where}.components[{key!r}]")
            for key, sub in (state.get("components") or {}).items()
        }
        return TFNetwork(
            name=str(state["name"]),
            build_func_name=str(state["build_func_name"]),
            static_kwargs=plain(state.get("static_kwargs") or {}, path),
            variables=variables,
            components=components,
            version=state.get("version"),
        )
    except (KeyError, TypeError, ValueError, CorruptData) as e:
        raise FileFormatError(path, f"corrupt dnnlib Network state in {where} ({type(e).__name__}: {e})") from None


def load_tf_pkl(path: str | os.PathLike) -> dict[str, TFNetwork]:
    """Reads an NVIDIA TensorFlow StyleGAN(2) pickle ``(G, D, Gs)`` without TensorFlow and without its code.

    Returns:
      ``{'G': TFNetwork, 'D': TFNetwork, 'Gs': TFNetwork}``; ``Gs`` is the moving-average generator.

    Raises:
      FileFormatError: as :func:`load_nvidia_pkl`, or when the pickle is not a 3-tuple of dnnlib networks.
    """
    path = _check_pickle(path)
    allowed = dict(NUMPY_GLOBALS)
    allowed["dnnlib.tflib.network.Network"] = _PickledNetwork
    allowed["dnnlib.util.EasyDict"] = PickledDict
    with open(path, "rb") as f:
        obj = restricted_load(f, path=path, allowed=allowed, wrong_kind={"torch_utils.": _TORCH_PICKLE})
    if not (isinstance(obj, tuple) and len(obj) == 3):
        raise FileFormatError(path, f"not a TF StyleGAN pickle (expected a tuple (G, D, Gs), found {_found(obj)})")
    return {name: _tf_network(net, path, name) for name, net in zip(("G", "D", "Gs"), obj, strict=True)}
