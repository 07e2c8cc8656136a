"""The GLIF neuron as a pure function of its parameters and its input current.

Gated LIF (Yao et al., NeurIPS 2022, Eqs. 4-12), exactly as the reference code computes it. For
every time step ``t = 0 … T-1``, with ``u₋₁ = o₋₁ = 0`` and every parameter stored *raw* and used
through the logistic σ::

    I_t = x_t · (1 − β·(1 − g_t))
    u_t = (1 − α·(1 − τ)) · u_{t−1} · (1 − γ·o_{t−1}) − (1 − α)·ℓ + I_t − (1 − γ)·R·o_{t−1}
    o_t = H(u_t − V_th)

α, β, γ are the gates (σ(``alpha``), σ(``beta``), σ(``gamma``)); τ = σ(``tau``) is the
exponential decay, ℓ = σ(``leak``) the linear decay, R = σ(``v_reset``) the soft-reset voltage
(the reference's ``reVth``, a parameter separate from the threshold), V_th = σ(``v_th``) the
threshold and g_t = σ(``conduct[t]``) the time-dependent conductance. The reset is *deferred*: the
stored u_t is the membrane before reset, and the spike o_t resets it only while u_{t+1} is
computed. H is the strict Heaviside step, differentiated through a surrogate
(:mod:`glif_jax.surrogates`). The reset path is not detached (full BPTT), as in the reference.

Every mode of the neuron reduces to the same per-step update over six *coefficients*
(:class:`GLIFCoefficients`)::

    u_t = decay · u_{t−1} · (1 − hard_reset·o_{t−1}) − leak + input_scale_t · x_t
          − soft_reset · o_{t−1}

so one time loop, one fused forward/backward and one kernel serve every mode.

Axes: ``x`` is time-major and channel-last, ``(T, ..., C)``, with any number of middle axes
(``(T, B, C)`` after a linear layer, ``(T, B, H, W, C)`` after a convolution). Channel-wise
parameters have shape ``(C,)`` and ``conduct`` ``(T, C)``; layer-wise parameters are scalars and
``conduct`` has shape ``(T,)``.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from glif_jax import neuron
    >>> params = neuron.init_params(16, 4, key=jax.random.key(0))
    >>> x = jnp.ones((4, 8, 16))                 # (T, B, C)
    >>> neuron.glif(params, x).shape
    (4, 8, 16)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from glif_jax import surrogates as _surrogates

__all__ = [
    "IMPLEMENTATIONS",
    "LEAK_REFERENCE",
    "MODES",
    "GLIFCoefficients",
    "GLIFParams",
    "GLIFState",
    "coefficients",
    "glif",
    "glif_step",
    "init_params",
    "init_state",
    "simplex_params",
]

Mode = Literal["soft", "hard", "static", "static_hard", "fused"]
MODES: tuple[str, ...] = ("soft", "hard", "static", "static_hard", "fused")
"""Gate modes. ``soft``: the paper's GLIF, gates σ(raw), all learnable. ``hard``: gates
1[σ(raw) > 0.5] forward with a straight-through gradient to σ(raw). ``static``: σ(raw) with no
gradient (GLIF_s, Table 5). ``static_hard``: 1[raw > 0] with no gradient (the simplex LIFs of
Table 4). ``fused``: every gate fully on and both resets applied, GLIF_f of Table 5 (the reference's
``LIFSpike_CW_softsimple``), which has no gate parameters."""

Implementation = Literal["auto", "fused", "scan", "pallas"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "fused", "scan", "pallas")

LEAK_REFERENCE = 0.0625
"""The reference's linear-decay init, V_th/(2·4) computed with T = 4 whatever T is used."""

_GATE_FIELDS = ("alpha", "beta", "gamma")
_FIELDS = ("alpha", "beta", "gamma", "tau", "v_th", "leak", "v_reset", "conduct")
_UNROLL_MAX_T = 8  # vision networks use T ≤ 8: unrolled, XLA fuses every step into one pass.
# Backends on which implementation="auto" picks the Pallas kernel: those where it has been compiled
# and checked against the scan path (tests/test_pallas_glif.py) and timed faster than fused
# (experiments/benchmarks/results-gpu-h200.md). Not yet TPU, where it has only been lowered.
_PALLAS_BY_DEFAULT: tuple[str, ...] = ("gpu",)
# The kernels unroll the whole time loop and keep it in registers; timed up to T = 16.
_PALLAS_MAX_T = 16


@functools.partial(jax.tree_util.register_dataclass, data_fields=list(_FIELDS), meta_fields=[])
@dataclasses.dataclass(frozen=True)
class GLIFParams:
    """Raw (pre-sigmoid) GLIF parameters, as the reference stores them.

    Channel-wise: every field has shape ``(C,)`` except ``conduct``, ``(T, C)``. Layer-wise: every
    field is a scalar except ``conduct``, ``(T,)``. The gates are ``None`` for the GLIF_f neuron
    (``mode="fused"``), which has none.

    Attributes:
      alpha: gate α between exponential (α→1) and linear (α→0) decay.
      beta: gate β between time-dependent (β→1) and uniform (β→0) input coding.
      gamma: gate γ between hard (γ→1) and soft (γ→0) reset.
      tau: exponential decay factor τ.
      v_th: firing threshold V_th (the reference's ``Vth``).
      leak: linear decay ℓ (the reference's ``leak``).
      v_reset: soft-reset voltage R (the reference's ``reVth``).
      conduct: time-dependent conductance gᵗ, one row per time step.
    """

    alpha: jax.Array | None
    beta: jax.Array | None
    gamma: jax.Array | None
    tau: jax.Array
    v_th: jax.Array
    leak: jax.Array
    v_reset: jax.Array
    conduct: jax.Array

    @property
    def channel_wise(self) -> bool:
        return jnp.ndim(self.v_th) == 1

    @property
    def channels(self) -> int | None:
        """C for channel-wise parameters, ``None`` for layer-wise ones."""
        return int(jnp.shape(self.v_th)[0]) if self.channel_wise else None

    @property
    def time_steps(self) -> int:
        return int(jnp.shape(self.conduct)[0])

    @property
    def has_gates(self) -> bool:
        return self.alpha is not None

    def replace(self, **changes) -> GLIFParams:
        return dataclasses.replace(self, **changes)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["decay", "leak", "hard_reset", "soft_reset", "v_th", "input_scale"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class GLIFCoefficients:
    """The per-step update ``u_t = decay·u·(1 − hard_reset·o) − leak + input_scale_t·x_t −
    soft_reset·o`` of any GLIF mode, with the gates already applied.

    For the gated modes: ``decay = 1 − α(1 − τ)``, ``leak = (1 − α)ℓ``, ``hard_reset = γ``,
    ``soft_reset = (1 − γ)R``, ``input_scale = 1 − β(1 − g)``. For GLIF_f: ``decay = τ``,
    ``leak = ℓ``, ``hard_reset = 1``, ``soft_reset = R``, ``input_scale = g``. Shapes as
    :class:`GLIFParams` (``input_scale`` like ``conduct``).
    """

    decay: jax.Array
    leak: jax.Array
    hard_reset: jax.Array
    soft_reset: jax.Array
    v_th: jax.Array
    input_scale: jax.Array


class GLIFState(NamedTuple):
    """The carry of the time loop: the membrane u_{t−1} (before reset) and the spike o_{t−1}."""

    membrane: jax.Array
    spike: jax.Array


# ------------------------------------------------------------------------------------------------
# Initialisation


def _logit(value: float) -> float:
    # The reference's own formula, in float64 before the cast: -log(1/v - 1).
    return -math.log(1 / value - 1)


def _check_unit_interval(function: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{function}: {name} must be a number in (0, 1), got {value!r}.")
    if not 0 < float(value) < 1:
        raise ValueError(
            f"{function}: {name} must lie in the open interval (0, 1) because it is stored as "
            f"logit({name}) and used through a sigmoid; got {value!r}."
        )
    return float(value)


def _check_channels_and_steps(function: str, channels, time_steps) -> None:
    if channels is not None and (
        isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1
    ):
        raise ValueError(
            f"{function}: channels must be a positive int (channel-wise) or None (layer-wise), "
            f"got {channels!r}."
        )
    if isinstance(time_steps, bool) or not isinstance(time_steps, (int, np.integer)):
        raise TypeError(f"{function}: time_steps must be a positive int, got {time_steps!r}.")
    if time_steps < 1:
        raise ValueError(f"{function}: time_steps must be a positive int, got {time_steps!r}.")


def init_params(
    channels: int | None,
    time_steps: int,
    *,
    tau: float = 0.25,
    v_th: float = 0.5,
    leak: float | Literal["scaled"] = LEAK_REFERENCE,
    v_reset: float = 0.5,
    conduct: float = 0.5,
    gates: Sequence[float] | None = (0.6, 0.8, 0.6),
    key: jax.Array | None = None,
    dtype=jnp.float32,
) -> GLIFParams:
    """Raw GLIF parameters, initialised as the reference does.

    Every value is the sigmoid of its raw parameter, so ``raw = logit(value)``. The gates go through
    the reference's mapping ``g' = (g − 0.5)/2 + 0.5``: the default ``(0.6, 0.8, 0.6)`` gives
    σ = (0.55, 0.65, 0.55). With ``key``, the gates are instead drawn raw from U(−0.1, 0.1), the
    reference's ``--randomgate`` training default (σ ∈ (0.475, 0.525)).

    Args:
      channels: C for channel-wise parameters, or ``None`` for layer-wise (scalar) ones.
      time_steps: T, the number of rows of ``conduct``.
      tau: exponential decay τ ∈ (0, 1).
      v_th: threshold V_th ∈ (0, 1).
      leak: linear decay ℓ ∈ (0, 1). The default 0.0625 is the reference's value for every T;
        ``"scaled"`` gives V_th/(2T) for the T used.
      v_reset: soft-reset voltage R ∈ (0, 1) (the reference initialises it to V_th).
      conduct: conductance gᵗ ∈ (0, 1) at every step.
      gates: (α, β, γ) ∈ (0, 1)³ before the mapping, or ``None`` for no gate parameters (GLIF_f).
      key: if given, draw the raw gates from U(−0.1, 0.1) (three independent draws).
      dtype: floating dtype of every field.

    Returns:
      A :class:`GLIFParams`.

    Raises:
      ValueError: a value outside (0, 1), non-positive ``channels`` or ``time_steps``.
    """
    fn = "init_params"
    _check_channels_and_steps(fn, channels, time_steps)
    if isinstance(leak, str):
        if leak != "scaled":
            raise ValueError(f"{fn}: leak must be a number in (0, 1) or 'scaled', got {leak!r}.")
        leak = v_th / (2 * time_steps)
    values = {
        "tau": _check_unit_interval(fn, "tau", tau),
        "v_th": _check_unit_interval(fn, "v_th", v_th),
        "leak": _check_unit_interval(fn, "leak", leak),
        "v_reset": _check_unit_interval(fn, "v_reset", v_reset),
    }
    conduct = _check_unit_interval(fn, "conduct", conduct)
    shape = () if channels is None else (int(channels),)

    def full(value, shape=shape):
        return jnp.full(shape, _logit(value), dtype)

    fields = {name: full(value) for name, value in values.items()}
    fields["conduct"] = full(conduct, (int(time_steps), *shape))
    if gates is None:
        fields.update(alpha=None, beta=None, gamma=None)
    elif key is not None:
        keys = jax.random.split(key, 3)
        for name, k in zip(_GATE_FIELDS, keys, strict=True):
            fields[name] = jax.random.uniform(k, shape, dtype, minval=-0.1, maxval=0.1)
    else:
        gates = tuple(gates)
        if len(gates) != 3:
            raise ValueError(f"{fn}: gates must be three values (α, β, γ), got {gates!r}.")
        for name, g in zip(_GATE_FIELDS, gates, strict=True):
            g = _check_unit_interval(fn, f"gates[{name}]", g)
            fields[name] = full((g - 0.5) * 0.5 + 0.5)
    return GLIFParams(**fields)


def simplex_params(code: str, channels: int | None, time_steps: int, **init_kwargs) -> GLIFParams:
    """Parameters of a simplex LIF (Table 4): binary gates α, β, γ from a code such as ``"101"``.

    The gates are stored as the reference stores ``--gate 1 0 1`` (raw logit(0.75) for 1 and
    logit(0.25) for 0); use them with ``mode="static_hard"``, which reads the gates as 1[raw > 0].
    ``"101"`` (α, β, γ = 1, 0, 1) is the vanilla LIF ``u = τ·u·(1 − o) + x``.

    Args:
      code: three characters from ``{"0", "1"}``, for α, β, γ in that order.
      channels, time_steps, **init_kwargs: as :func:`init_params` (but no ``gates`` or ``key``).
    """
    if not (isinstance(code, str) and len(code) == 3 and set(code) <= {"0", "1"}):
        raise ValueError(
            f"simplex_params: code must be three characters from '0'/'1' for (α, β, γ), "
            f"e.g. '101'; got {code!r}."
        )
    for forbidden in ("gates", "key"):
        if forbidden in init_kwargs:
            raise ValueError(f"simplex_params: {forbidden} is set by the code; do not pass it.")
    # The reference's gate mapping (g - 0.5)/2 + 0.5 takes a gate of 1 to 0.75 and 0 to 0.25.
    params = init_params(channels, time_steps, gates=(0.5, 0.5, 0.5), **init_kwargs)
    raw = {
        name: jnp.full_like(params.v_th, _logit(0.75 if bit == "1" else 0.25))
        for name, bit in zip(_GATE_FIELDS, code, strict=True)
    }
    return params.replace(**raw)


# ------------------------------------------------------------------------------------------------
# Gates and coefficients


@jax.custom_vjp
def _straight_through_gate(g: jax.Array) -> jax.Array:
    # The reference's ArchAct: 1[σ(raw) > 0.5] forward, identity backward w.r.t. σ(raw).
    return (g > 0.5).astype(g.dtype)


_straight_through_gate.defvjp(lambda g: (_straight_through_gate(g), None), lambda _, ct: (ct,))


def _gates(params: GLIFParams, mode: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    raw = (params.alpha, params.beta, params.gamma)
    if mode == "soft":
        return tuple(jax.nn.sigmoid(r) for r in raw)
    if mode == "hard":
        return tuple(_straight_through_gate(jax.nn.sigmoid(r)) for r in raw)
    if mode == "static":
        return tuple(jax.lax.stop_gradient(jax.nn.sigmoid(r)) for r in raw)
    if mode == "static_hard":
        return tuple(jax.lax.stop_gradient((r > 0).astype(r.dtype)) for r in raw)
    raise AssertionError(mode)


def coefficients(params: GLIFParams, mode: Mode = "soft") -> GLIFCoefficients:
    """The per-step update coefficients of ``params`` under ``mode`` (differentiable).

    The gated modes compute the reference's terms in the reference's order, so that the
    membrane is bit-identical to it: ``decay = 1 − α(1 − τ)``, ``leak = (1 − α)ℓ``,
    ``soft_reset = (1 − γ)R``, ``input_scale = 1 − β(1 − g)``.
    """
    _check_mode(mode)
    sig = jax.nn.sigmoid
    tau, v_th, leak, v_reset = (
        sig(params.tau),
        sig(params.v_th),
        sig(params.leak),
        sig(params.v_reset),
    )
    conduct = sig(params.conduct)
    if mode == "fused":
        return GLIFCoefficients(
            decay=tau,
            leak=leak,
            hard_reset=jnp.ones_like(tau),
            soft_reset=v_reset,
            v_th=v_th,
            input_scale=conduct,
        )
    if not params.has_gates:
        raise ValueError(
            f"mode={mode!r} needs the gates alpha, beta, gamma, but these parameters have none "
            "(they were built for mode='fused'); build them with gates=... or a key."
        )
    alpha, beta, gamma = _gates(params, mode)
    return GLIFCoefficients(
        decay=1 - alpha * (1 - tau),
        leak=(1 - alpha) * leak,
        hard_reset=gamma,
        soft_reset=(1 - gamma) * v_reset,
        v_th=v_th,
        input_scale=1 - beta * (1 - conduct),
    )


# ------------------------------------------------------------------------------------------------
# One time step


def init_state(shape: Sequence[int], dtype=jnp.float32) -> GLIFState:
    """The state before the first step: u₋₁ = 0 and o₋₁ = 0, each of ``shape`` (``(..., C)``)."""
    zeros = jnp.zeros(shape, dtype)
    return GLIFState(membrane=zeros, spike=zeros)


def _membrane_update(u_prev, o_prev, x_t, input_scale_t, c: GLIFCoefficients):
    # Term order and grouping as the reference's extended_state_update, for bit-identical results.
    return ((c.decay * u_prev * (1 - c.hard_reset * o_prev) - c.leak) + x_t * input_scale_t) - (
        c.soft_reset * o_prev
    )


def glif_step(
    state: GLIFState,
    inputs: tuple[jax.Array, jax.Array],
    coeffs: GLIFCoefficients,
    *,
    surrogate: _surrogates.Surrogate = _surrogates.rectangle(),
    detach_reset: bool = False,
) -> tuple[GLIFState, jax.Array]:
    """One GLIF time step: the body that :func:`glif` scans over time.

    Args:
      state: u_{t−1} and o_{t−1}, each ``(..., C)`` (:func:`init_state` at t = 0).
      inputs: ``(x_t, input_scale_t)``: the input current ``(..., C)`` and the row t of
        ``coeffs.input_scale`` (``(C,)`` or scalar).
      coeffs: from :func:`coefficients`.
      surrogate: the spike's surrogate derivative.
      detach_reset: stop the gradient through o_{t−1} in the reset terms.

    Returns:
      ``(GLIFState(u_t, o_t), o_t)``.

    Example (online simulation, one step at a time)::

        coeffs = coefficients(params, "soft")
        state = init_state(x_t.shape)
        for t in range(T):
            state, spike = glif_step(state, (x[t], coeffs.input_scale[t]), coeffs)
    """
    x_t, input_scale_t = inputs
    o_prev = jax.lax.stop_gradient(state.spike) if detach_reset else state.spike
    u = _membrane_update(state.membrane, o_prev, x_t, input_scale_t, coeffs)
    o = _surrogates.spike(u - coeffs.v_th, surrogate)
    return GLIFState(u, o), o


# ------------------------------------------------------------------------------------------------
# The time loop


def _check_mode(mode) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown GLIF mode {mode!r}; expected one of {MODES}.")


def _check_inputs(params: GLIFParams, x) -> None:
    if not isinstance(params, GLIFParams):
        raise TypeError(
            f"glif: params must be a glif_jax.neuron.GLIFParams, got {type(params).__name__}."
        )
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"glif: x must be a floating-point array (the input current), got dtype {dtype}; "
            "cast spikes or integer data with x.astype(jnp.float32)."
        )
    if x.ndim < 2:
        raise ValueError(
            f"glif: x must be time-major and channel-last, shape (T, ..., C) with rank >= 2; "
            f"got shape {tuple(x.shape)}."
        )
    shape = jnp.shape(params.v_th)
    for name in _FIELDS:
        value = getattr(params, name)
        if value is None:
            continue
        expected = (params.time_steps, *shape) if name == "conduct" else shape
        if jnp.shape(value) != expected:
            raise ValueError(
                f"glif: params.{name} has shape {jnp.shape(value)}, expected {expected} "
                f"(params.v_th has shape {shape})."
            )
    if len(shape) > 1:
        raise ValueError(
            "glif: parameters must be channel-wise (C,) or layer-wise (), "
            f"got v_th of shape {shape}."
        )
    if shape and shape[0] != x.shape[-1]:
        raise ValueError(
            f"glif: x has {x.shape[-1]} channels on its last axis (shape {tuple(x.shape)}) but the "
            f"parameters are for {shape[0]} channels; x must be channel-last, (T, ..., C)."
        )
    if x.shape[0] != params.time_steps:
        raise ValueError(
            f"glif: x has T={x.shape[0]} time steps on its first axis (shape {tuple(x.shape)}) but "
            f"params.conduct has {params.time_steps} rows; x must be time-major, (T, ..., C)."
        )


def glif(
    params: GLIFParams,
    x: jax.Array,
    *,
    mode: Mode = "soft",
    surrogate: _surrogates.Surrogate | str = _surrogates.rectangle(),
    return_membrane: bool = False,
    detach_reset: bool = False,
    implementation: Implementation = "auto",
):
    """Run a GLIF layer over time: the spike train o of an input current x.

    Args:
      params: raw parameters (:func:`init_params`), channel-wise or layer-wise.
      x: input current, time-major and channel-last, ``(T, ..., C)``, floating dtype.
      mode: one of :data:`MODES`.
      surrogate: the spike's surrogate derivative, a :class:`~glif_jax.surrogates.Surrogate` or a
        name from :func:`glif_jax.surrogates.names`.
      return_membrane: also return the membrane trace u_t (before reset).
      detach_reset: stop the gradient through o_{t−1} in the reset terms (the reference does not).
      implementation: how the time loop runs, and so what the backward pass keeps per neuron
        and step. ``"fused"``: one custom VJP over the whole time loop; its forward pass keeps
        only ``x`` (4 bytes in float32, 2 in bfloat16) and its backward pass recomputes the
        membrane and computes every gradient in one reverse pass, unrolled for T ≤ 8 so that
        XLA runs all steps in a few passes over memory (a ``lax.scan`` beyond). ``"scan"``:
        ``lax.scan`` of :func:`glif_step` under plain autodiff, which stores the per-step
        residuals (12 bytes, in float32 whatever the input): the reference path. ``"pallas"``:
        the kernels of :mod:`glif_jax.pallas_glif`, keeping ``x`` like fused (compiled through
        Triton on GPU and Mosaic on TPU; on the CPU they run in Pallas's interpreter, for
        testing). ``"auto"``: pallas on a single GPU (float32 compute, T ≤ 16), fused
        everywhere else, TPU included until the kernel has run on one. Fused and
        scan give the same spikes and membrane, bit for bit under ``jit``; all three give the
        same gradients up to float rounding. To recompute more than the neuron (the
        convolutions too), wrap whole layers in :func:`glif_jax.nn.recompute`, as the models'
        ``remat=True`` does.

    Returns:
      The spikes o, ``(T, ..., C)`` in ``x``'s dtype; with ``return_membrane``, ``(o, u)`` where u
      has the same shape in the compute dtype (float32 for inputs of 32 bits or fewer).

    Raises:
      TypeError: ``x`` is not floating point, or ``surrogate`` is not a surrogate.
      ValueError: ``x`` has rank < 2, its channels or time steps do not match ``params``, or the
        mode, surrogate name or implementation is unknown.
    """
    _check_inputs(params, x)
    _check_mode(mode)
    surrogate = _surrogates.get(surrogate)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"glif: unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}."
        )
    coeffs = coefficients(params, mode)
    # At least float32: bf16/fp16 currents are integrated in float32, float64 stays float64.
    bits = max(jnp.finfo(x.dtype).bits, jnp.finfo(coeffs.v_th.dtype).bits)
    compute_dtype = jnp.float64 if bits > 32 else jnp.float32
    coeffs = jax.tree.map(lambda c: c.astype(compute_dtype), coeffs)
    if implementation == "auto":
        implementation = _auto_implementation(x.shape[0], x.dtype, compute_dtype)
    if implementation == "scan":
        spikes, membrane = _glif_scan(x, coeffs, surrogate, detach_reset)
        return (spikes, membrane) if return_membrane else spikes
    if implementation == "fused":
        return _glif_fused(x, coeffs, surrogate, detach_reset, return_membrane)
    from glif_jax import pallas_glif

    return pallas_glif.glif_pallas(x, coeffs, surrogate, detach_reset, return_membrane)


def _auto_implementation(steps: int, input_dtype, compute_dtype) -> str:
    """What ``implementation="auto"`` runs: the Pallas kernel on one GPU, fused elsewhere.

    Only on a single device: a Pallas kernel is a custom call that XLA's SPMD partitioner cannot
    split, so under ``jit`` with sharded inputs it would not run data-parallel (inside
    ``shard_map``, pass ``implementation="pallas"``). Only for the inputs it has been checked and
    timed with on the GPU: float32 or bfloat16, computed in float32, up to ``_PALLAS_MAX_T`` steps.
    """
    on_one_gpu = jax.default_backend() in _PALLAS_BY_DEFAULT and jax.device_count() == 1
    checked = (
        input_dtype in (jnp.float32, jnp.bfloat16)
        and compute_dtype == jnp.float32
        and steps <= _PALLAS_MAX_T
    )
    return "pallas" if on_one_gpu and checked else "fused"


def _glif_scan(x, coeffs, surrogate, detach_reset):
    def step(state, inputs):
        state, spike = glif_step(
            state, inputs, coeffs, surrogate=surrogate, detach_reset=detach_reset
        )
        return state, (spike, state.membrane)

    state = init_state(x.shape[1:], coeffs.v_th.dtype)
    _, (spikes, membrane) = jax.lax.scan(
        step,
        state,
        (x.astype(coeffs.v_th.dtype), coeffs.input_scale),
        # Unrolled for the short T of vision networks, so that XLA fuses across time steps.
        unroll=x.shape[0] <= _UNROLL_MAX_T,
    )
    return spikes.astype(x.dtype), membrane


# ------------------------------------------------------------------------------------------------
# The fused path: one custom VJP over the whole time loop.
#
# The forward pass keeps only x; the backward pass recomputes the membrane from it and computes
# the gradients of x and of every coefficient in one reverse pass. The step helpers below are
# elementwise over neurons, so the same code serves the unrolled path, the long-T scan and the
# Pallas kernel (glif_jax.pallas_glif), whose operands are (rows, channels) tiles.
#
# How the unrolled backward pass is laid out, and why. XLA emits each result of a fusion as its own
# loop over memory that recomputes the elementwise work it needs (on the CPU it neither merges
# sibling results into one loop nor runs the operands of a concatenation in one loop), and writing
# a fresh full-size buffer costs several times more than reading one. So:
#   1. dx_t = gu_t·s_t, all t in one concatenation that recomputes both recurrences from x and the
#      cotangents: the only full-size write;
#   2. the per-channel sums of every parameter's terms: on the CPU in one loop over the neurons
#      (two for T > 6) that computes both recurrences once per neuron and every term from them,
#      see _sums_in_loops; elsewhere one reduction per term, which XLA fuses into one kernel.
# For T > 8 (_UNROLL_MAX_T) the time loop is a lax.scan in both directions.

_MAX_GROUPS = 8  # neurons summed inside the loops of step 2, see _group_count.
_MAX_TERMS_PER_LOOP = 11  # beyond it LLVM stops sharing the recurrences between the terms.
_SUM_CHANNELS = 1024  # channels per reduction of the loops' partial sums, see _sum_over_rows.
# The per-neuron gradient terms, summed over time, in this order; then gu_t·x_t for every t.
_TERMS = ("decay", "hard_reset", "soft_reset", "v_th", "leak")


def _bit_patterns(a):
    """A bfloat16 array as its 16-bit patterns (``uint16``); any other array unchanged.

    XLA:CPU slices bfloat16 through float32 (convert, slice, convert back) and writes each of those
    slices out as an array of its own; the slices of the bit patterns, widened by
    :func:`_widened`, cost fewer such copies (bfloat16 T = 6 forward+backward: 157 → 133 ms).
    """
    return jax.lax.bitcast_convert_type(a, jnp.uint16) if a.dtype == jnp.bfloat16 else a


def _widened(a):
    """Undoes :func:`_bit_patterns` as float32, exactly: bfloat16 is float32's upper 16 bits."""
    if a.dtype != jnp.uint16:
        return a
    return jax.lax.bitcast_convert_type(a.astype(jnp.uint32) << 16, jnp.float32)


def _per_step(a):
    """``a`` of shape ``(T, ...)`` as a list of its T steps (``None`` stays ``None``); bfloat16
    steps come widened to float32."""
    if a is None:
        return None
    bits = _bit_patterns(a)
    return [_widened(bits[t]) for t in range(a.shape[0])]


def _forward_step(u_prev, o_prev, x_t, input_scale_t, coeffs: GLIFCoefficients):
    """One step of the forward recurrence, in the compute dtype: ``(u_t, o_t)``, o_t boolean.

    ``u_prev`` and ``o_prev`` are ``None`` at t = 0. The update is :func:`_membrane_update`'s own
    expression, so that XLA contracts it into the same fused multiply-adds as on the scan path and
    the membrane is bit-identical to it.
    """
    dtype = coeffs.v_th.dtype
    if u_prev is None:
        u_prev = o_prev = jnp.zeros(jnp.shape(x_t), dtype)
    else:
        o_prev = o_prev.astype(dtype)
    u = _membrane_update(u_prev, o_prev, x_t.astype(dtype), input_scale_t, coeffs)
    return u, u - coeffs.v_th > 0


def _reverse_step(gu_next, u, o, g_spike, g_membrane, coeffs: GLIFCoefficients, surrogate, detach):
    """One step of the reverse recurrence: ``(gu_t, gv_t)``, the gradients w.r.t. u_t and w.r.t.
    the threshold's argument u_t − V_th.

    ``gu_next`` is the gradient w.r.t. u_{t+1} (``None`` after the last step); ``o`` is the
    boolean spike o_t; ``g_spike`` and ``g_membrane`` are the cotangents of o_t and u_t
    (``g_membrane`` may be ``None``).
    """
    c = coeffs
    g_o = g_spike
    if gu_next is not None and not detach:
        # o_t also reaches u_{t+1}, through both reset terms.
        g_o = g_o + gu_next * (-(c.decay * u * c.hard_reset) - c.soft_reset)
    g_v = g_o * surrogate.derivative(u - c.v_th)
    g_u = g_v
    if gu_next is not None:
        g_u = g_u + gu_next * jnp.where(o, c.decay * (1 - c.hard_reset), c.decay)
    if g_membrane is not None:
        g_u = g_u + g_membrane
    return g_u, g_v


def _step_terms(g_u, g_v, u_prev, o_prev, coeffs: GLIFCoefficients):
    """Per-neuron gradient terms of one step, in the order of ``_TERMS``, before their sign.

    ``u_prev`` and ``o_prev`` (boolean) are ``None`` at t = 0, where the decay and reset terms
    vanish. Products with a spike are selections, as o ∈ {0, 1}.
    """
    if u_prev is None:
        return (None, None, None, g_v, g_u)
    return (
        g_u * jnp.where(o_prev, u_prev * (1 - coeffs.hard_reset), u_prev),
        g_u * jnp.where(o_prev, u_prev, 0),
        jnp.where(o_prev, g_u, 0),
        g_v,
        g_u,
    )


def _forward_trace(xs, coeffs: GLIFCoefficients):
    """Lists ``us, os`` over time: the membrane and the (boolean) spikes for the inputs ``xs``."""
    u = o = None
    us, os = [], []
    for t, x_t in enumerate(xs):
        u, o = _forward_step(u, o, x_t, coeffs.input_scale[t], coeffs)
        us.append(u)
        os.append(o)
    return us, os


def _reverse_trace(us, os, g_spikes, g_membranes, coeffs, surrogate, detach):
    """Lists ``gus, gvs`` over time, from per-step lists (``g_membranes`` may be ``None``)."""
    dtype = coeffs.v_th.dtype
    gus, gvs = [None] * len(us), [None] * len(us)
    g_u = None
    for t in reversed(range(len(us))):
        g_membrane = None if g_membranes is None else g_membranes[t].astype(dtype)
        g_spike = g_spikes[t].astype(dtype)
        g_u, gvs[t] = _reverse_step(
            g_u, us[t], os[t], g_spike, g_membrane, coeffs, surrogate, detach
        )
        gus[t] = g_u
    return gus, gvs


def _trace_terms(xs, us, os, gus, gvs, coeffs: GLIFCoefficients):
    """Every per-neuron gradient term, summed over time, from the per-step lists of both traces.

    Returns:
      The ``_TERMS``, then gu_t·x_t for every t: a list of arrays shaped like one step of ``xs``.
    """
    sums = [None] * len(_TERMS)
    for t in range(len(xs)):
        prev = (us[t - 1], os[t - 1]) if t > 0 else (None, None)
        for k, term in enumerate(_step_terms(gus[t], gvs[t], *prev, coeffs)):
            if term is not None:
                sums[k] = term if sums[k] is None else sums[k] + term
    sums = [jnp.zeros_like(us[0]) if s is None else s for s in sums]
    dtype = coeffs.v_th.dtype
    return sums + [g_u * x_t.astype(dtype) for g_u, x_t in zip(gus, xs, strict=True)]


def _gradient_terms(xs, g_spikes, g_membranes, coeffs: GLIFCoefficients, surrogate, detach):
    """:func:`_trace_terms` from x and the output cotangents, both traces recomputed."""
    us, os = _forward_trace(xs, coeffs)
    gus, gvs = _reverse_trace(us, os, g_spikes, g_membranes, coeffs, surrogate, detach)
    return _trace_terms(xs, us, os, gus, gvs, coeffs)


def _group_count(neurons: int) -> int:
    """J, the largest divisor of the neuron count N up to ``_MAX_GROUPS`` if it is at least half
    of that, else ``_MAX_GROUPS`` (the N mod J neurons left over are summed apart) or N if less."""
    divisor = max(d for d in range(1, _MAX_GROUPS + 1) if neurons % d == 0)
    return divisor if divisor >= _MAX_GROUPS // 2 else min(_MAX_GROUPS, neurons)


def _summed_terms(x, g_spikes, g_membrane, coeffs: GLIFCoefficients, surrogate, detach):
    """Every term of :func:`_gradient_terms` summed over every neuron: ``(K, C)``, or ``(K,)`` for
    layer-wise coefficients, K = ``len(_TERMS) + T``."""
    args = (x, g_spikes, g_membrane, coeffs, surrogate, detach)
    return jax.lax.platform_dependent(
        cpu=lambda: _sums_in_loops(*args), default=lambda: _sums_per_term(*args)
    )


def _sums_in_loops(x, g_spikes, g_membrane, coeffs: GLIFCoefficients, surrogate, detach):
    """:func:`_summed_terms` in few loops over the neurons, for XLA:CPU.

    In each loop the terms go along a new minor axis, each chosen by that axis's index: the loop
    over it is the innermost one and short, so LLVM unrolls it and computes the recurrences the
    terms share once per neuron (``jnp.stack`` would be a concatenation: one loop, and one
    recurrence, per term). Beyond ``_MAX_TERMS_PER_LOOP`` terms LLVM stops sharing them, so more
    terms are split over several loops. Each loop iteration first sums J groups of neurons (every
    J-th neuron from the j-th), so each loop writes ``N/J`` rows; when J does not divide N, the
    fewer than J neurons left over are summed apart.
    """
    steps, channels = x.shape[0], x.shape[-1]
    neurons = math.prod(x.shape[1:-1])
    groups = _group_count(neurons)
    grouped = neurons - neurons % groups
    arrays = [
        None if a is None else a.reshape(steps, neurons, channels)
        for a in (x, g_spikes, g_membrane)
    ]
    patterns = [None if a is None else _bit_patterns(a) for a in arrays]

    def group(a, j):
        return None if a is None else [_widened(a[t, j:grouped:groups]) for t in range(steps)]

    count = len(_TERMS) + steps
    loops = math.ceil(count / _MAX_TERMS_PER_LOOP)
    bounds = [round(i * count / loops) for i in range(loops + 1)]
    sums = []
    for first, stop in itertools.pairwise(bounds):
        totals = None
        for j in range(groups):
            terms = _gradient_terms(*(group(a, j) for a in patterns), coeffs, surrogate, detach)
            found = terms[first:stop]
            totals = (
                found if totals is None else [a + b for a, b in zip(totals, found, strict=True)]
            )
        shape = totals[0].shape  # (N/J, C)
        term = jax.lax.broadcasted_iota(jnp.int32, (*shape, len(totals)), len(shape))
        stacked = totals[-1][..., None]
        for k in reversed(range(len(totals) - 1)):
            stacked = jnp.where(term == k, totals[k][..., None], stacked)
        sums.append(_sum_over_rows(stacked, channel_wise=jnp.ndim(coeffs.v_th) == 1))
    sums = jnp.moveaxis(jnp.concatenate(sums, axis=-1), -1, 0)
    if grouped == neurons:
        return sums
    rest = [None if a is None else a[:, grouped:] for a in arrays]
    return sums + _sums_per_term(*rest, coeffs, surrogate, detach)


def _sum_over_rows(a, channel_wise: bool):
    """The partial sums ``a``, ``(N/J, C, K)``, summed over the neurons: ``(C, K)``, or ``(K,)``
    over the channels too for layer-wise coefficients.

    Channel-wise, in slices of at most ``_SUM_CHANNELS`` channels: XLA:CPU reduces a short leading
    axis of long rows slowly (128 × 4096 × 9 floats: 27 ms in one reduction, 1.5 ms in four).
    """
    if not channel_wise:
        return jnp.sum(a, axis=(0, 1))
    channels = a.shape[1]
    return jnp.concatenate(
        [
            jnp.sum(a[:, first : first + _SUM_CHANNELS], axis=0)
            for first in range(0, channels, _SUM_CHANNELS)
        ]
    )


def _sums_per_term(x, g_spikes, g_membrane, coeffs: GLIFCoefficients, surrogate, detach):
    """:func:`_summed_terms` as one reduction per term (XLA:GPU fuses sibling reductions)."""

    terms = _gradient_terms(
        _per_step(x), _per_step(g_spikes), _per_step(g_membrane), coeffs, surrogate, detach
    )
    axes = tuple(range(terms[0].ndim - jnp.ndim(coeffs.v_th)))
    return jnp.stack([jnp.sum(term, axis=axes) for term in terms])


def _coefficient_gradients(sums, coeffs: GLIFCoefficients) -> GLIFCoefficients:
    """The coefficient gradients from the sums of the ``_TERMS`` and of gu_t·x_t."""
    d_decay, d_hard, d_soft, d_vth, d_leak = (sums[k] for k in range(len(_TERMS)))
    return GLIFCoefficients(
        decay=d_decay,
        leak=-d_leak,
        hard_reset=-coeffs.decay * d_hard,
        soft_reset=-d_soft,
        v_th=-d_vth,
        input_scale=sums[len(_TERMS) :],
    )


def _unrolled_forward(x, coeffs: GLIFCoefficients):
    us, os = _forward_trace(_per_step(x), coeffs)
    return jnp.stack(us), jnp.stack(os)


def _unrolled_backward(x, coeffs, g_spikes, g_membrane, surrogate, detach):
    us, os = _forward_trace(_per_step(x), coeffs)
    gus, _ = _reverse_trace(
        us, os, _per_step(g_spikes), _per_step(g_membrane), coeffs, surrogate, detach
    )
    input_scale = coeffs.input_scale.reshape(_step_shape(coeffs, x.ndim))
    dx = (jnp.stack(gus) * input_scale).astype(x.dtype)
    sums = _summed_terms(x, g_spikes, g_membrane, coeffs, surrogate, detach)
    return dx, _coefficient_gradients(sums, coeffs)


def _step_shape(coeffs: GLIFCoefficients, ndim: int) -> tuple[int, ...]:
    """The shape that broadcasts ``input_scale`` against ``(T, ..., C)`` arrays of rank ``ndim``."""
    return (-1,) + (1,) * (ndim - 1 - jnp.ndim(coeffs.v_th)) + jnp.shape(coeffs.v_th)


def _scanned_forward(x, coeffs: GLIFCoefficients):
    def step(carry, inputs):
        u, o = _forward_step(*carry, *inputs, coeffs)
        return (u, o), (u, o)

    zeros = jnp.zeros(x.shape[1:], coeffs.v_th.dtype)
    _, (us, os) = jax.lax.scan(step, (zeros, zeros > 0), (x, coeffs.input_scale))
    return us, os


def _scanned_backward(x, coeffs, g_spikes, g_membrane, surrogate, detach):
    # Keeps the membrane trace (one full-size array) while it runs; spikes are read off it.
    dtype = coeffs.v_th.dtype
    us, _ = _scanned_forward(x, coeffs)
    axes = tuple(range(x.ndim - 1 - jnp.ndim(coeffs.v_th)))

    def spike(u):
        return u - coeffs.v_th > 0

    def step(carry, inputs):
        gu_next, sums = carry
        t, x_t, u, g_spike, g_membrane, input_scale_t = inputs
        g_u, g_v = _reverse_step(
            gu_next, u, spike(u), g_spike.astype(dtype), g_membrane, coeffs, surrogate, detach
        )
        # u_{t−1} and o_{t−1}; at t = 0 they are 0, which the mask below restores.
        u_prev = jax.lax.dynamic_index_in_dim(us, jnp.maximum(t - 1, 0), keepdims=False)
        u_prev = jnp.where(t > 0, u_prev, 0)
        o_prev = (t > 0) & spike(u_prev)
        terms = _step_terms(g_u, g_v, u_prev, o_prev, coeffs)
        sums = tuple(s + jnp.sum(term, axis=axes) for s, term in zip(sums, terms, strict=True))
        return (g_u, sums), (g_u * input_scale_t, jnp.sum(g_u * x_t.astype(dtype), axis=axes))

    g_membrane = None if g_membrane is None else g_membrane.astype(dtype)
    steps = jnp.arange(x.shape[0])
    inputs = (steps, x, us, g_spikes, g_membrane, coeffs.input_scale)
    carry = (jnp.zeros(x.shape[1:], dtype), (jnp.zeros_like(coeffs.v_th),) * len(_TERMS))
    (_, sums), (dx, input_sums) = jax.lax.scan(step, carry, inputs, reverse=True)
    sums = jnp.concatenate([jnp.stack(sums), input_sums])
    return dx.astype(x.dtype), _coefficient_gradients(sums, coeffs)


def _fused_forward(x, coeffs: GLIFCoefficients, return_membrane: bool):
    unrolled = x.shape[0] <= _UNROLL_MAX_T
    us, os = (_unrolled_forward if unrolled else _scanned_forward)(x, coeffs)
    spikes = os.astype(x.dtype)
    return (spikes, us) if return_membrane else spikes


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _glif_fused(x, coeffs, surrogate, detach_reset, return_membrane):
    return _fused_forward(x, coeffs, return_membrane)


def _glif_fused_fwd(x, coeffs, surrogate, detach_reset, return_membrane):
    # Only the input is kept: the backward pass recomputes the membrane from it.
    return _fused_forward(x, coeffs, return_membrane), (x, coeffs)


def _glif_fused_bwd(surrogate, detach_reset, return_membrane, residuals, cotangents):
    x, coeffs = residuals
    g_spikes, g_membrane = cotangents if return_membrane else (cotangents, None)
    unrolled = x.shape[0] <= _UNROLL_MAX_T
    backward = _unrolled_backward if unrolled else _scanned_backward
    return backward(x, coeffs, g_spikes, g_membrane, surrogate, detach_reset)


_glif_fused.defvjp(_glif_fused_fwd, _glif_fused_bwd)
