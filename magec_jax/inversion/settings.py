"""The typed settings of an inversion: loss-weight phases, the optimiser, and how the step is computed.

The paper's values (METHOD.md) are the defaults of :class:`InversionSettings`; ``magec_jax.inversion.protocols``
builds the other protocols from them. A phase weights loss terms BY NAME (``magec_jax.inversion.terms``), so a
term registered by a user is weighted exactly like the four built-in ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Literal, Mapping, Sequence

import jax
import numpy as np
import optax

from magec_jax.errors import ConfigError
from magec_jax.inversion.magec_loss import EditMode


@dataclasses.dataclass(frozen=True, init=False)
class Phase:
    """A run of optimisation steps with fixed loss weights, by term name.

    ``Phase(100, mse=1e-3, lpips=0.5)`` or ``Phase(100, {"mse": 1e-3, "my_prior": 0.1})``. A term absent from
    a phase has weight 0 there. Weights are stored as sorted ``(name, weight)`` pairs, so equal phases compare
    and hash equal whatever order they were written in.
    """

    steps: int
    weights: tuple[tuple[str, float], ...]

    def __init__(self, steps: int, weights: Mapping[str, float] | Iterable[tuple[str, float]] = (), **named: float):
        merged = dict(weights)
        merged.update(named)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        for term, weight in merged.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"the weight of {term!r} must be a finite number, got {weight!r}")
        object.__setattr__(self, "steps", int(steps))
        object.__setattr__(self, "weights", tuple(sorted((str(t), float(w)) for t, w in merged.items())))

    def weight(self, term: str) -> float:
        """This phase's weight of ``term`` (0 when the phase does not name it)."""
        return dict(self.weights).get(term, 0.0)

    @classmethod
    def from_config_value(cls, value: object, where: str) -> Phase:
        """A phase as a config writes it, ``dict(steps=100, mse=1e-3, lpips=0.5)`` (the
        ``magec_jax.configdicts`` hook); a bad one is a :class:`ConfigError` naming ``where``."""
        if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):  # a dict or a ConfigDict
            terms = ", ".join(("steps",) + tuple(PAPER_PHASE1))
            raise ConfigError(f"{where} must be a dict of steps and loss weights by term name ({terms}, or a "
                              f"registered term's name), got {value!r}")
        try:
            return cls(**dict(value))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_config_value(self) -> dict[str, int | float]:
        """The phase as a config writes it: ``dict(steps=..., <term>=<weight>, ...)``."""
        return dict(steps=self.steps, **dict(self.weights))


# The paper's loss weights (METHOD.md): phase 1 reconstructs mostly perceptually, phase 2 adds the pixel MSE.
PAPER_PHASE1 = dict(mse=1e-3, lpips=0.5, id=3e-4, magec=3e-4)
PAPER_PHASE2 = dict(mse=0.5, lpips=0.5, id=3e-4, magec=3e-4)


@dataclasses.dataclass(frozen=True)
class NoisePhase:
    """The Image2StyleGAN++ noise stage: optimise the noise maps with the latent frozen."""

    steps: int
    lr: float = 0.07
    mse: float = 1.0
    lpips: float = 1.0

    @property
    def weights(self) -> dict[str, float]:
        """The stage's loss weights by term name."""
        return dict(mse=self.mse, lpips=self.lpips)


@dataclasses.dataclass(frozen=True)
class NetworkCompute:
    """What the compute options ask of the networks themselves (their static callables; weights unchanged).

    Attributes:
      fused_modulation: the generator's modulated convolutions as per-sample kernels (one grouped
        convolution) instead of scaled activations with one shared kernel.
      dtype: compute dtype of the generator's convolutions and the LPIPS trunk (``"float32"`` or
        ``"bfloat16"``); styles, demodulation, the skip image and every loss stay float32.
      remat: rematerialise each generator block in the backward pass (``jax.checkpoint``).
    """

    fused_modulation: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False


_CHOICES = dict(
    modulation=("auto", "fused", "non_fused"),
    precision=("auto", "float32", "tf32", "bf16"),
    loop=("auto", "dispatch", "scan"),
    donate=("auto", "on", "off"),
    remat=("auto", "on", "off"),
)
# jax_default_matmul_precision of each precision: float32 pins full float32 (XLA:GPU would otherwise use
# TF32), tf32 allows TF32 on GPUs (3-pass bf16 on TPUs); bf16 computes the big convolution trunks in bfloat16
# (NetworkCompute.dtype) and lets the rest run at the backend's default precision.
_MATMUL_PRECISION = dict(float32="highest", tf32="tensorfloat32", bf16="default")


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """How an inversion step is computed; never what it computes (each choice gives the same latents within
    its precision's tolerance).

    Attributes:
      modulation: ``"fused"`` (per-sample kernels, NVIDIA's eval path) or ``"non_fused"`` (scaled
        activations, one shared kernel).
      precision: ``"float32"``, ``"tf32"`` (float32 storage, TF32 matrix units on GPUs) or ``"bf16"`` (the
        generator and the LPIPS trunk compute in bfloat16).
      loop: ``"dispatch"`` (one jitted call per step; the host queues them asynchronously) or ``"scan"``
        (``lax.scan`` over ``InversionSettings.chunk_steps`` steps per call).
      donate: ``"on"`` lets each call reuse the state's buffers for its output.
      remat: ``"on"`` rematerialises the generator's blocks in the backward pass (less memory, about one more
        generator forward pass per step), so that larger batches fit.

    Every field may be ``"auto"``: the platform's choice in :data:`AUTO`, see :meth:`resolved`.
    """

    modulation: Literal["auto", "fused", "non_fused"] = "auto"
    precision: Literal["auto", "float32", "tf32", "bf16"] = "auto"
    loop: Literal["auto", "dispatch", "scan"] = "auto"
    donate: Literal["auto", "on", "off"] = "auto"
    remat: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"config.inversion.compute.{name} must be one of {', '.join(allowed)}, got {value!r}")

    def resolved(self, backend: str | None = None) -> ComputeOptions:
        """Every ``"auto"`` replaced by ``AUTO[backend]`` (default: ``jax.default_backend()``)."""
        backend = backend or jax.default_backend()
        if backend not in AUTO:
            raise ConfigError(f"config.inversion.compute: no automatic choices for platform {backend!r} "
                              f"(known: {', '.join(AUTO)})")
        auto = AUTO[backend]
        return dataclasses.replace(
            self, **{f.name: getattr(auto, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) == "auto"}
        )

    @property
    def matmul_precision(self) -> str:
        """``jax_default_matmul_precision`` the engine traces with (options resolved)."""
        return _MATMUL_PRECISION[self.precision]

    @property
    def networks(self) -> NetworkCompute:
        """What these (resolved) options ask of the networks."""
        return NetworkCompute(
            fused_modulation=self.modulation == "fused",
            dtype="bfloat16" if self.precision == "bf16" else "float32",
            remat=self.remat == "on",
        )


# The platform choices behind "auto". CPU: measured on a 2-core AMD EPYC (Zen 4) with jax 0.10.2
# (benchmarks/results): under vmap the fused modulation's grouped convolutions ran ~5x slower in the backward
# pass; the best loop depends on the networks: on the config-f networks one call per step beat a while loop
# (1.6-3.7x at 256 and 1024 with an earlier step; 1.14x at 256, batch 1, with today's MAGEC step:
# benchmarks/results/loop_paper256.json), but on the demo bundle's 64x64 networks the scan is 1.9x faster at
# batches 1-16 (loop_demo_bundle.json; configs/demo.py sets it), so "auto" keeps dispatch, the choice for the
# paper's sizes; bf16 made the 256
# MSE + LPIPS step 25% slower (2.58 against 2.06 CPU seconds); remat saves 11% of the memory per image at
# 1024 and costs time. GPU and TPU: chosen before any accelerator run (TF32 / bf16 matrix units, scan to drop
# per-step host work); benchmarks/device_suite.py measures every alternative: set these from its JSON.
AUTO: dict[str, ComputeOptions] = {
    "cpu": ComputeOptions(modulation="non_fused", precision="float32", loop="dispatch", donate="on", remat="off"),
    "gpu": ComputeOptions(modulation="non_fused", precision="tf32", loop="scan", donate="on", remat="off"),
    "tpu": ComputeOptions(modulation="non_fused", precision="bf16", loop="scan", donate="on", remat="off"),
}


@dataclasses.dataclass(frozen=True)
class InversionSettings:
    """Everything that decides the optimisation (METHOD.md defaults)."""

    phases: tuple[Phase, ...] = (Phase(100, PAPER_PHASE1), Phase(100, PAPER_PHASE2))
    lr: float = 0.07
    lr_decay: float = 0.8
    lr_decay_every: int = 25
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    latent_space: str = "w+"  # "w+" (num_ws x w_dim) or "w" (one w_dim vector for every layer)
    magec_alpha: float = 3.0
    magec_mode: EditMode = "flip"
    styleflow_alpha: float = 2.0  # magec_styleflow: context moved by this many training standard deviations
    styleflow_steps: int = 8  # magec_styleflow: RK4 steps per solve (a fixed grid: one cost, one compile)
    noise_phase: NoisePhase | None = None
    chunk_steps: int = 25  # steps between progress reports (the only host reads of device values); scan length
    compute: ComputeOptions = ComputeOptions()

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def weighted_terms(self) -> tuple[str, ...]:
        """The names of the terms with a non-zero weight in some phase (the only ones a step computes), sorted."""
        return tuple(sorted({t for p in self.phases for t, w in p.weights if w != 0}))

    def uses(self, term: str) -> bool:
        """Whether a loss term has a non-zero weight in any phase (inactive terms are not computed)."""
        return term in self.weighted_terms

    def weight_table(self, terms: Sequence[str]) -> np.ndarray:
        """``[total_steps, len(terms)]`` float32 loss weights of ``terms``, one row per step."""
        rows = [[p.weight(t) for t in terms] for p in self.phases for _ in range(p.steps)]
        return np.asarray(rows, np.float32).reshape(-1, len(terms))

    def schedule(self) -> optax.Schedule:
        """lr * decay ** (step // every), never restarted between phases."""
        return optax.exponential_decay(
            self.lr, transition_steps=self.lr_decay_every, decay_rate=self.lr_decay, staircase=True
        )
