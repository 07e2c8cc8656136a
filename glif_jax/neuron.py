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
(:class:`GLIFCoefficients`, :func:`coefficients`)::

    u_t = decay · u_{t−1} · (1 − hard_reset·o_{t−1}) − leak + input_scale_t · x_t
          − soft_reset · o_{t−1}

so one time loop serves every mode. This module is the neuron's face: its parameters, their
initial values and checks (:class:`InitialValues`, :func:`init_params`), the gates and modes that
give the coefficients (:func:`coefficients`), and :func:`glif`, which runs the time loop. The
update in coefficient form, its step (:func:`glif_step`, :class:`GLIFState`, :func:`init_state`,
re-exported here) and its reverse are written once, in :mod:`glif_jax.equations`, which every
implementation reads. The implementations live in :mod:`glif_jax.kernels`, behind one contract:
the reference, a ``lax.scan`` of :func:`glif_step` under plain autodiff
(:class:`glif_jax.kernels.Scan`, ``implementation="scan"``), and the fast custom VJPs; :func:`glif`
dispatches to every one the same way.

:class:`GLIFParams`, :class:`GLIFCoefficients` and :class:`GLIFState` are pytrees registered for
:mod:`jax.export` serialization (as ``glif_jax.GLIFParams`` and so on), so that a function taking
or returning them can be exported, serialized and called back.

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
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from glif_jax import kernels
from glif_jax import surrogates as _surrogates
from glif_jax.equations import (
    GLIFCoefficients,
    GLIFState,
    glif_step,
    init_state,
    register_dataclass_serialization,
)

__all__ = [
    "GATE_NAMES",
    "IMPLEMENTATIONS",
    "LEAK_REFERENCE",
    "MODES",
    "PARAM_NAMES",
    "GLIFCoefficients",
    "GLIFParams",
    "GLIFState",
    "InitialValues",
    "check_implementation",
    "check_mode",
    "check_sizes",
    "coefficients",
    "glif",
    "glif_step",
    "init_params",
    "init_state",
    "param_label",
    "simplex_params",
]

Mode = Literal["soft", "hard", "static", "static_hard", "fused"]
MODES: tuple[str, ...] = ("soft", "hard", "static", "static_hard", "fused")
"""Gate modes. ``soft``: the paper's GLIF, gates σ(raw), all learnable. ``hard``: gates
1[σ(raw) > 0.5] forward with a straight-through gradient to σ(raw). ``static``: σ(raw) with no
gradient (GLIF_s, Table 5). ``static_hard``: 1[raw > 0] with no gradient (the simplex LIFs of
Table 4). ``fused``: every gate fully on and both resets applied, GLIF_f of Table 5 (the reference's
``LIFSpike_CW_softsimple``), which has no gate parameters."""

Implementation = Literal["auto", "scan", "xla", "pallas"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", *kernels.KERNELS)
"""How the time loop runs: a kernel of :data:`glif_jax.kernels.KERNELS`, ``"scan"`` (the
reference), ``"xla"`` or ``"pallas"``; or ``"auto"``, the one :func:`glif_jax.kernels.select`
picks."""

_RENAMED_IMPLEMENTATIONS = {"fused": "xla"}

LEAK_REFERENCE = 0.0625
"""The reference's linear-decay init, V_th/(2·4) computed with T = 4 whatever T is used."""


def _about(symbol: str, meaning: str, *, gate: bool = False) -> dict:
    """A :class:`GLIFParams` field's metadata: its symbol and meaning (for plots), and whether it
    is a gate."""
    return {"symbol": symbol, "meaning": meaning, "gate": gate}


@functools.partial(register_dataclass_serialization, serialized_name="glif_jax.GLIFParams")
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GLIFParams:
    """Raw (pre-sigmoid) GLIF parameters, as the reference stores them.

    Channel-wise: every field has shape ``(C,)`` except ``conduct``, ``(T, C)``. Layer-wise: every
    field is a scalar except ``conduct``, ``(T,)``. The gates are ``None`` for the GLIF_f neuron
    (``mode="fused"``), which has none. Every value is used through the logistic σ.

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

    alpha: jax.Array | None = dataclasses.field(metadata=_about("α", "decay gate", gate=True))
    beta: jax.Array | None = dataclasses.field(metadata=_about("β", "coding gate", gate=True))
    gamma: jax.Array | None = dataclasses.field(metadata=_about("γ", "reset gate", gate=True))
    tau: jax.Array = dataclasses.field(metadata=_about("τ", "exponential decay"))
    v_th: jax.Array = dataclasses.field(metadata=_about("V_th", "threshold"))
    leak: jax.Array = dataclasses.field(metadata=_about("ℓ", "linear decay"))
    v_reset: jax.Array = dataclasses.field(metadata=_about("V_reset", "soft reset"))
    conduct: jax.Array = dataclasses.field(metadata=_about("gᵗ", "conductance"))

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


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GLIFParams))
"""The fields of :class:`GLIFParams`, in order: the name of every GLIF parameter."""

GATE_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(GLIFParams) if f.metadata["gate"]
)
"""The gate parameters α, β, γ (``alpha``, ``beta``, ``gamma``)."""


def param_label(name: str) -> str:
    """A parameter's symbol and meaning, for plots and tables: ``"α (decay gate)"``."""
    field = {f.name: f for f in dataclasses.fields(GLIFParams)}[name]
    return f"{field.metadata['symbol']} ({field.metadata['meaning']})"


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


def check_sizes(channels, time_steps, function: str = "init_params") -> None:
    """Raise an error naming ``function`` unless ``channels`` (C) is a positive int or ``None``
    (layer-wise parameters) and ``time_steps`` (T) a positive int.

    Raises:
      ValueError: ``channels`` is neither a positive int nor ``None``, or ``time_steps`` is below 1.
      TypeError: ``time_steps`` is not an int.
    """
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


@dataclasses.dataclass(frozen=True)
class InitialValues:
    """The initial values of the GLIF parameters, each in (0, 1) and stored raw as its logit.

    The defaults are the reference's, and the defaults of :func:`init_params` and
    :class:`glif_jax.nn.GLIF` (read as ``InitialValues.tau`` and so on); the networks' GLIF options
    (:func:`glif_jax.models.glif_factory`) take them too.

    Attributes:
      tau: exponential decay τ.
      v_th: threshold V_th.
      leak: linear decay ℓ. The default 0.0625 is the reference's value for every T;
        ``"scaled"`` gives V_th/(2T) for the T used.
      v_reset: soft-reset voltage R (the reference initialises it to V_th).
      conduct: conductance gᵗ, the same at every step.
      gates: (α, β, γ) before the reference's mapping ``g' = (g − 0.5)/2 + 0.5``, which takes the
        default ``(0.6, 0.8, 0.6)`` to σ = (0.55, 0.65, 0.55); ``None`` for no gate parameters
        (GLIF_f).
    """

    tau: float = 0.25
    v_th: float = 0.5
    leak: float | Literal["scaled"] = LEAK_REFERENCE
    v_reset: float = 0.5
    conduct: float = 0.5
    gates: Sequence[float] | None = (0.6, 0.8, 0.6)

    def checked(self, time_steps: int, function: str = "init_params") -> InitialValues:
        """These values, each checked, as floats: ``leak="scaled"`` resolved for ``time_steps``
        and the gates a tuple.

        Raises:
          ValueError: a value outside (0, 1), a ``leak`` other than a number or ``"scaled"``, or
            ``gates`` that are not three values; the message names ``function``.
          TypeError: a value that is not a number.
        """
        leak = self.leak
        if isinstance(leak, str):
            if leak != "scaled":
                raise ValueError(
                    f"{function}: leak must be a number in (0, 1) or 'scaled', got {leak!r}."
                )
            leak = self.v_th / (2 * time_steps)
        values = {
            "tau": _check_unit_interval(function, "tau", self.tau),
            "v_th": _check_unit_interval(function, "v_th", self.v_th),
            "leak": _check_unit_interval(function, "leak", leak),
            "v_reset": _check_unit_interval(function, "v_reset", self.v_reset),
            "conduct": _check_unit_interval(function, "conduct", self.conduct),
        }
        gates = self.gates
        if gates is not None:
            gates = tuple(gates)
            if len(gates) != 3:
                raise ValueError(
                    f"{function}: gates must be three values (α, β, γ), got {gates!r}."
                )
            gates = tuple(
                _check_unit_interval(function, f"gates[{name}]", g)
                for name, g in zip(GATE_NAMES, gates, strict=True)
            )
        return InitialValues(**values, gates=gates)


def init_params(
    channels: int | None,
    time_steps: int,
    *,
    tau: float = InitialValues.tau,
    v_th: float = InitialValues.v_th,
    leak: float | Literal["scaled"] = InitialValues.leak,
    v_reset: float = InitialValues.v_reset,
    conduct: float = InitialValues.conduct,
    gates: Sequence[float] | None = InitialValues.gates,
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
      tau, v_th, leak, v_reset, conduct, gates: the initial values, as :class:`InitialValues`
        (whose defaults these are); ``gates=None`` for no gate parameters (GLIF_f).
      key: if given, draw the raw gates from U(−0.1, 0.1) (three independent draws).
      dtype: floating dtype of every field.

    Returns:
      A :class:`GLIFParams`: every field ``(C,)`` (``()`` layer-wise), ``conduct`` ``(T, C)``
      (``(T,)``).

    Raises:
      ValueError: a value outside (0, 1), non-positive ``channels`` or ``time_steps``;
        ``gates=None`` with a ``key`` (no gates, and gates to draw).
      TypeError: a value that is not a number, or a ``time_steps`` that is not an int.
    """
    fn = "init_params"
    check_sizes(channels, time_steps, fn)
    if gates is None and key is not None:
        raise ValueError(
            f"{fn}: gates=None asks for no gate parameters (GLIF_f) and key for drawn ones; "
            "pass one of them."
        )
    # Drawn gates replace the given ones, which are then not read.
    init = InitialValues(
        tau=tau,
        v_th=v_th,
        leak=leak,
        v_reset=v_reset,
        conduct=conduct,
        gates=gates if key is None else None,
    ).checked(time_steps, fn)
    shape = () if channels is None else (int(channels),)

    def full(value, shape=shape):
        return jnp.full(shape, _logit(value), dtype)

    fields = {name: full(getattr(init, name)) for name in ("tau", "v_th", "leak", "v_reset")}
    fields["conduct"] = full(init.conduct, (int(time_steps), *shape))
    if gates is None:
        fields.update(alpha=None, beta=None, gamma=None)
    elif key is not None:
        keys = jax.random.split(key, 3)
        for name, k in zip(GATE_NAMES, keys, strict=True):
            fields[name] = jax.random.uniform(k, shape, dtype, minval=-0.1, maxval=0.1)
    else:
        for name, g in zip(GATE_NAMES, init.gates, strict=True):
            fields[name] = full((g - 0.5) * 0.5 + 0.5)
    return GLIFParams(**fields)


def simplex_params(code: str, channels: int | None, time_steps: int, **init_kwargs) -> GLIFParams:
    """Parameters of a simplex LIF (Table 4): binary gates α, β, γ from a code such as ``"101"``.

    The gates are stored as the reference stores ``--gate 1 0 1`` (raw logit(0.75) for 1 and
    logit(0.25) for 0); use them with ``mode="static_hard"``, which reads the gates as 1[raw > 0].
    ``"101"`` (α, β, γ = 1, 0, 1) is the vanilla LIF ``u = τ·u·(1 − o) + x``.

    Args:
      code: three characters from ``{"0", "1"}``, for α, β, γ in that order.
      channels, time_steps, init_kwargs: as :func:`init_params` (but no ``gates`` or ``key``).
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
        for name, bit in zip(GATE_NAMES, code, strict=True)
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
    check_mode(mode)
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
# The time loop


def check_mode(mode, function: str = "glif") -> None:
    """Raise a ``ValueError`` naming ``function`` unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"{function}: unknown GLIF mode {mode!r}; expected one of {MODES}.")


def check_implementation(implementation, function: str = "glif") -> None:
    """Raise a ``ValueError`` naming ``function`` unless ``implementation`` is one of
    :data:`IMPLEMENTATIONS` or a kernel of :mod:`glif_jax.kernels` (such as
    ``kernels.Pallas(block_rows=32)``)."""
    if isinstance(implementation, str):
        if implementation in _RENAMED_IMPLEMENTATIONS:
            raise ValueError(
                f"{function}: implementation={implementation!r} is now "
                f"{_RENAMED_IMPLEMENTATIONS[implementation]!r} (the XLA custom VJP); "
                "mode='fused' is still GLIF_f."
            )
        if implementation in IMPLEMENTATIONS:
            return
    elif callable(implementation) and isinstance(getattr(implementation, "name", None), str):
        return
    raise ValueError(
        f"{function}: unknown implementation {implementation!r}; expected one of "
        f"{IMPLEMENTATIONS} or a kernel of glif_jax.kernels."
    )


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
    for name in PARAM_NAMES:
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
    implementation: Implementation | kernels.Kernel = "auto",
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
        and step: ``"scan"``, a ``lax.scan`` of :func:`glif_step` under plain autodiff, the
        reference (:class:`glif_jax.kernels.Scan`; it keeps 12 bytes of residuals per neuron and
        step, and is the only one that supports forward-mode differentiation, ``jax.jvp`` and
        ``jax.jacfwd``); ``"xla"``, one custom VJP over the whole time loop
        (:class:`glif_jax.kernels.Xla`, keeping only ``x``); ``"pallas"``, the same as Pallas
        kernels (:class:`glif_jax.kernels.Pallas`, keeping only ``x``; compiled on GPU and TPU,
        interpreted elsewhere; first derivatives only); ``"auto"``, the one
        :func:`glif_jax.kernels.select` picks for this input and backend; or a kernel instance
        with its own settings, e.g. ``kernels.Pallas(block_rows=32)``. All give
        the same spikes, except where a membrane lies within a rounding error of the threshold,
        and the same gradients up to float rounding. To recompute more than the neuron (the
        convolutions too), wrap whole layers in :func:`glif_jax.nn.recompute`, as the models'
        ``remat=True`` does. Which JAX transformations each supports: docs/neuron.md.

    Returns:
      The spikes o, ``(T, ..., C)`` in ``x``'s dtype; with ``return_membrane``, ``(o, u)`` where u
      has the same shape in the compute dtype (float32 for inputs of 32 bits or fewer).

    Raises:
      TypeError: ``x`` is not floating point, or ``surrogate`` is not a surrogate; or forward-mode
        differentiation (``jax.jvp``, ``jax.jacfwd``) reached a custom-VJP kernel, or a second
        derivative reached the Pallas kernels: the message names the implementation to use
        instead.
      ValueError: ``x`` has rank < 2, its channels or time steps do not match ``params``, or the
        mode, surrogate name or implementation is unknown.
    """
    _check_inputs(params, x)
    check_mode(mode)
    check_implementation(implementation)
    surrogate = _surrogates.get(surrogate)
    coeffs = coefficients(params, mode)
    # At least float32: bf16/fp16 currents are integrated in float32, float64 stays float64.
    bits = max(jnp.finfo(x.dtype).bits, jnp.finfo(coeffs.v_th.dtype).bits)
    compute_dtype = jnp.float64 if bits > 32 else jnp.float32
    coeffs = jax.tree.map(lambda c: c.astype(compute_dtype), coeffs)
    requested = implementation
    if implementation == "auto":
        implementation = kernels.select(x.shape, x.dtype, compute_dtype)
    kernel = kernels.get(implementation)
    described = _describe(requested, kernel)
    try:
        if kernels.differentiable_twice(kernel):
            return _kernel(kernel, surrogate, detach_reset, return_membrane, x, coeffs)
        return _kernel_differentiable_once(
            kernel, surrogate, detach_reset, return_membrane, described, x, coeffs
        )
    except TypeError as error:
        if not _is_forward_mode_refusal(error):
            raise
        # JAX's own message names neither the neuron nor the fix.
        raise TypeError(_forward_mode_message(described)) from None


def _describe(requested, kernel) -> str:
    if not isinstance(requested, str):
        return f"implementation={type(kernel).__name__}(...)"
    if requested != kernel.name:
        return f"implementation={requested!r} (here {kernel.name!r})"
    return f"implementation={requested!r}"


def _is_forward_mode_refusal(error: TypeError) -> bool:
    # JAX raises this here when tracing jax.jvp or jax.jacfwd meets the custom VJP; where only the
    # compilation meets it (jax.jvp under jax.jit), JAX raises it later, outside this function.
    message = str(error)
    return "forward-mode" in message and "custom_vjp" in message


def _forward_mode_message(described: str) -> str:
    return (
        f"glif: {described} is a custom VJP, which JAX differentiates in "
        "reverse mode only (jax.grad, jax.vjp, jax.jacrev), but forward mode (jax.jvp, "
        'jax.jacfwd) reached it; pass implementation="scan" (to glif, nn.GLIF or the models) '
        "for forward-mode derivatives."
    )


def _kernel(kernel, surrogate, detach_reset, return_membrane, x, coeffs):
    return kernel(
        x, coeffs, surrogate=surrogate, detach_reset=detach_reset, return_membrane=return_membrane
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _kernel_differentiable_once(
    kernel, surrogate, detach_reset, return_membrane, described, x, coeffs
):
    """The kernel, as a custom VJP whose forward pass refuses to be differentiated: a second
    derivative through a kernel without one fails there, with an error that names the fix."""
    return _kernel(kernel, surrogate, detach_reset, return_membrane, x, coeffs)


def _kernel_once_fwd(kernel, surrogate, detach_reset, return_membrane, described, x, coeffs):
    x, coeffs = _no_second_derivative(described, x, coeffs)
    # The kernel's own forward pass and pullback, run once: nothing is recomputed.
    return jax.vjp(
        functools.partial(_kernel, kernel, surrogate, detach_reset, return_membrane), x, coeffs
    )


def _kernel_once_bwd(kernel, surrogate, detach_reset, return_membrane, described, pullback, cts):
    return pullback(cts)


_kernel_differentiable_once.defvjp(_kernel_once_fwd, _kernel_once_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _no_second_derivative(described: str, x, coeffs):
    # The identity; only a derivative of the kernel's forward pass, which a first derivative never
    # takes, reaches the rule below.
    return x, coeffs


@_no_second_derivative.defjvp
def _no_second_derivative_jvp(described, primals, tangents):
    raise TypeError(
        f"glif: {described} differentiates once, in reverse mode (jax.grad, jax.vjp, "
        "jax.jacrev), but a second derivative (jax.hessian, a Hessian-vector product, the "
        'gradient of a gradient) reached it; pass implementation="xla" or "scan" (to glif, '
        "nn.GLIF or the models) for second derivatives."
    )
