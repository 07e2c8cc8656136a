"""The GLIF neuron's equations, in coefficient form: the one place they are written.

Every mode of the neuron reduces to one update over six coefficients, :class:`GLIFCoefficients`,
with the gates already applied (:func:`glif_jax.neuron.coefficients` computes them from the
parameters, the paper's Eqs. 4-12). For every step ``t = 0 … T-1``, with ``u₋₁ = o₋₁ = 0``::

    u_t = decay · u_{t−1} · (1 − hard_reset · o_{t−1}) − leak + input_scale_t · x_t
          − soft_reset · o_{t−1}
    o_t = H(u_t − v_th)

This module holds that update (:func:`membrane_update`), the step that differentiates the spike
through a surrogate (:func:`glif_step`, the body of the reference ``lax.scan``), the step the
custom-VJP kernels recompute (:func:`forward_step`), its reverse (:func:`reverse_step`: the
gradient with respect to u_t), and what each step contributes to the gradient of every
coefficient, as a named structure (:class:`GradientTerms`). :mod:`glif_jax.neuron` is its face:
it re-exports the state and the step. Every implementation of :mod:`glif_jax.kernels` imports this
module and nothing of the others.

Imports run one way: :mod:`glif_jax.surrogates` → this module → :mod:`glif_jax.kernels` →
:mod:`glif_jax.neuron`.

Every step function is elementwise over neurons, so the same code runs on whole arrays under XLA
and on tiles held in registers inside a kernel. Spikes are booleans inside :func:`forward_step`
and :func:`reverse_step`: the products with a spike are selections, as o ∈ {0, 1}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from glif_jax import surrogates

__all__ = [
    "GLIFCoefficients",
    "GLIFState",
    "GradientTerms",
    "coefficient_gradients",
    "forward_step",
    "forward_trace",
    "glif_step",
    "gradient_terms",
    "init_state",
    "membrane_update",
    "register_dataclass_serialization",
    "reverse_step",
    "reverse_trace",
    "step_terms",
    "trace_terms",
]


_Dataclass = TypeVar("_Dataclass", bound=type)


def register_dataclass_serialization(cls: _Dataclass, serialized_name: str) -> _Dataclass:
    """Let :mod:`jax.export` serialize ``cls``, a dataclass registered as a pytree, by name.

    An exported function whose arguments or results hold ``cls`` stores ``serialized_name`` and
    the field names; deserialising it rebuilds ``cls`` and refuses a set of fields that has since
    changed, rather than pairing values with the wrong fields.

    Args:
      cls: a dataclass registered with :func:`jax.tree_util.register_dataclass`.
      serialized_name: the name stored in serialized exports, independent of the module path.

    Returns:
      ``cls``.
    """
    fields = [field.name for field in dataclasses.fields(cls)]

    def from_children(names, children):
        if names != fields:
            raise ValueError(
                f"the serialized {serialized_name} has fields {names}, but "
                f"{cls.__module__}.{cls.__qualname__} has fields {fields}; export the function "
                "again with this version of glif_jax."
            )
        return cls(**dict(zip(names, children, strict=True)))

    return jax.export.register_pytree_node_serialization(
        cls,
        serialized_name=serialized_name,
        serialize_auxdata=lambda _: json.dumps(fields).encode(),
        deserialize_auxdata=lambda data: json.loads(data.decode()),
        from_children=from_children,
    )


@functools.partial(register_dataclass_serialization, serialized_name="glif_jax.GLIFCoefficients")
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GLIFCoefficients:
    """The per-step update of any GLIF mode, gates applied (see the module docstring).

    For the gated modes ``decay = 1 − α(1 − τ)``, ``leak = (1 − α)ℓ``, ``hard_reset = γ``,
    ``soft_reset = (1 − γ)R``, ``input_scale = 1 − β(1 − g)``; for GLIF_f ``decay = τ``,
    ``leak = ℓ``, ``hard_reset = 1``, ``soft_reset = R``, ``input_scale = g``
    (:func:`glif_jax.neuron.coefficients`). Registered for :mod:`jax.export` serialization as
    ``glif_jax.GLIFCoefficients``.

    Attributes:
      decay: multiplies the membrane, ``(C,)`` channel-wise or ``()`` layer-wise.
      leak: subtracted every step, shaped as ``decay``.
      hard_reset: the fraction of the decayed membrane a spike removes, shaped as ``decay``.
      soft_reset: subtracted after a spike, shaped as ``decay``.
      v_th: the firing threshold V_th, shaped as ``decay``.
      input_scale: multiplies the input current, one row per step: ``(T, C)`` or ``(T,)``.
    """

    decay: jax.Array
    leak: jax.Array
    hard_reset: jax.Array
    soft_reset: jax.Array
    v_th: jax.Array
    input_scale: jax.Array


def membrane_update(u_prev, o_prev, x_t, input_scale_t, c: GLIFCoefficients):
    """The membrane equation: u_t from u_{t−1}, o_{t−1} and the input x_t.

    ``u_t = decay · u_{t−1} · (1 − hard_reset · o_{t−1}) − leak + input_scale_t · x_t
    − soft_reset · o_{t−1}``. The terms are grouped and ordered as the reference code computes
    them, so that the membrane is bit-identical to it (docs/reference.md §1.3).

    Args:
      u_prev: the membrane u_{t−1} (before reset), ``(..., C)``.
      o_prev: the spike o_{t−1} as a number, 0 or 1, shaped as ``u_prev``.
      x_t: the input current, shaped as ``u_prev``.
      input_scale_t: row t of ``c.input_scale``, ``(C,)`` or ``()``.
      c: the coefficients.

    Returns:
      u_t, shaped as ``u_prev``.
    """
    return ((c.decay * u_prev * (1 - c.hard_reset * o_prev) - c.leak) + x_t * input_scale_t) - (
        c.soft_reset * o_prev
    )


@functools.partial(
    jax.export.register_namedtuple_serialization, serialized_name="glif_jax.GLIFState"
)
class GLIFState(NamedTuple):
    """The carry of the time loop: the membrane u_{t−1} (before reset) and the spike o_{t−1},
    each ``(..., C)``. Registered for :mod:`jax.export` serialization as ``glif_jax.GLIFState``."""

    membrane: jax.Array
    spike: jax.Array


def init_state(shape: Sequence[int], dtype=jnp.float32) -> GLIFState:
    """The state before the first step: u₋₁ = 0 and o₋₁ = 0, each of ``shape`` (``(..., C)``)."""
    zeros = jnp.zeros(shape, dtype)
    return GLIFState(membrane=zeros, spike=zeros)


def glif_step(
    state: GLIFState,
    inputs: tuple[jax.Array, jax.Array],
    coeffs: GLIFCoefficients,
    *,
    surrogate: surrogates.Surrogate = surrogates.rectangle(),
    detach_reset: bool = False,
) -> tuple[GLIFState, jax.Array]:
    """One GLIF time step, u_t by :func:`membrane_update` and ``o_t = H(u_t − v_th)`` with the
    surrogate's derivative: the body that the reference ``lax.scan`` runs over time
    (:class:`glif_jax.kernels.Scan`).

    Args:
      state: u_{t−1} and o_{t−1}, each ``(..., C)`` (:func:`init_state` at t = 0).
      inputs: ``(x_t, input_scale_t)``: the input current ``(..., C)`` and the row t of
        ``coeffs.input_scale`` (``(C,)`` or scalar).
      coeffs: from :func:`glif_jax.neuron.coefficients`.
      surrogate: the spike's surrogate derivative.
      detach_reset: stop the gradient through o_{t−1} in the reset terms.

    Returns:
      ``(GLIFState(u_t, o_t), o_t)``.

    Example:
      Online simulation, one step at a time, gives the spikes of :func:`glif_jax.neuron.glif`:

      >>> import jax, jax.numpy as jnp
      >>> from glif_jax import neuron
      >>> params = neuron.init_params(8, 3, key=jax.random.key(0))
      >>> x = jax.random.normal(jax.random.key(1), (3, 2, 8))
      >>> coeffs = neuron.coefficients(params, "soft")
      >>> state = neuron.init_state(x.shape[1:])
      >>> spikes = []
      >>> for t in range(3):
      ...     state, spike = neuron.glif_step(state, (x[t], coeffs.input_scale[t]), coeffs)
      ...     spikes.append(spike)
      >>> bool((jnp.stack(spikes) == neuron.glif(params, x)).all())
      True
    """
    x_t, input_scale_t = inputs
    o_prev = jax.lax.stop_gradient(state.spike) if detach_reset else state.spike
    u = membrane_update(state.membrane, o_prev, x_t, input_scale_t, coeffs)
    o = surrogates.spike(u - coeffs.v_th, surrogate)
    return GLIFState(u, o), o


def forward_step(u_prev, o_prev, x_t, input_scale_t, c: GLIFCoefficients):
    """One step of the forward recurrence in the coefficients' dtype, the spike without a
    derivative: ``(u_t, o_t)``, u_t by :func:`membrane_update` and o_t = ``u_t − v_th > 0``
    boolean, each shaped as ``x_t`` (``(..., C)``).

    ``u_prev`` and ``o_prev`` (boolean) are ``None`` at t = 0 (u₋₁ = o₋₁ = 0).
    """
    dtype = c.v_th.dtype
    if u_prev is None:
        u_prev = o_prev = jnp.zeros(jnp.shape(x_t), dtype)
    else:
        o_prev = o_prev.astype(dtype)
    u = membrane_update(u_prev, o_prev, x_t.astype(dtype), input_scale_t, c)
    return u, u - c.v_th > 0


def reverse_step(
    gu_next,
    u,
    o,
    g_spike,
    g_membrane,
    c: GLIFCoefficients,
    surrogate: surrogates.Surrogate,
    detach_reset: bool,
):
    """One step of the reverse recurrence: ``(g_u, g_v)``, the gradients with respect to u_t and
    to the threshold's argument v_t = u_t − V_th.

    Args:
      gu_next: the gradient with respect to u_{t+1}; ``None`` after the last step.
      u: the membrane u_t.
      o: the spike o_t, boolean.
      g_spike: the cotangent of o_t.
      g_membrane: the cotangent of u_t, or ``None``.
      c: the coefficients.
      surrogate: the spike's surrogate derivative.
      detach_reset: whether o_t reaches u_{t+1} only forward (no gradient through the resets).
    """
    g_o = g_spike
    if gu_next is not None and not detach_reset:
        # o_t also reaches u_{t+1}, through both reset terms.
        g_o = g_o + gu_next * (-(c.decay * u * c.hard_reset) - c.soft_reset)
    g_v = g_o * surrogate.derivative(u - c.v_th)
    g_u = g_v
    if gu_next is not None:
        g_u = g_u + gu_next * jnp.where(o, c.decay * (1 - c.hard_reset), c.decay)
    if g_membrane is not None:
        g_u = g_u + g_membrane
    return g_u, g_v


def forward_trace(xs: Sequence[jax.Array], c: GLIFCoefficients):
    """The membranes and (boolean) spikes of every step, as lists, for the inputs ``xs``."""
    u = o = None
    us, os = [], []
    for t, x_t in enumerate(xs):
        u, o = forward_step(u, o, x_t, c.input_scale[t], c)
        us.append(u)
        os.append(o)
    return us, os


def reverse_trace(us, os, g_spikes, g_membranes, c: GLIFCoefficients, surrogate, detach_reset):
    """Lists ``g_us, g_vs`` over time from the per-step lists of the forward trace and of the
    cotangents (``g_membranes`` may be ``None``)."""
    dtype = c.v_th.dtype
    g_us, g_vs = [None] * len(us), [None] * len(us)
    g_u = None
    for t in reversed(range(len(us))):
        g_membrane = None if g_membranes is None else g_membranes[t].astype(dtype)
        g_u, g_vs[t] = reverse_step(
            g_u, us[t], os[t], g_spikes[t].astype(dtype), g_membrane, c, surrogate, detach_reset
        )
        g_us[t] = g_u
    return g_us, g_vs


@functools.partial(
    jax.export.register_namedtuple_serialization, serialized_name="glif_jax.GradientTerms"
)
class GradientTerms(NamedTuple):
    """What the neurons contribute to the gradient of each coefficient, per neuron or summed.

    With g_u_t and g_v_t from :func:`reverse_step` and the previous step's u_{t−1}, o_{t−1}
    (zero at t = 0), each field is a sum over t of one term:

    Attributes:
      decay: g_u_t · u_{t−1} · (1 − hard_reset · o_{t−1}); the gradient of ``decay``.
      hard_reset: g_u_t · u_{t−1} · o_{t−1}; the gradient of ``hard_reset`` is −decay times it.
      soft_reset: g_u_t · o_{t−1}; the gradient of ``soft_reset`` is minus it.
      v_th: g_v_t; the gradient of ``v_th`` is minus it.
      leak: g_u_t; the gradient of ``leak`` is minus it.
      input_scale: g_u_t · x_t for every t, a tuple of T terms; the gradient of row t of
        ``input_scale``.
    """

    decay: jax.Array
    hard_reset: jax.Array
    soft_reset: jax.Array
    v_th: jax.Array
    leak: jax.Array
    input_scale: tuple[jax.Array, ...]

    @staticmethod
    def count(steps: int) -> int:
        """How many arrays :meth:`rows` gives for T = ``steps``."""
        return len(GradientTerms._fields) - 1 + steps

    def rows(self) -> list[jax.Array]:
        """The terms as one list, the fields in order and then the T input-scale terms: the order
        in which the kernels pack them."""
        return [*self[:-1], *self.input_scale]

    @classmethod
    def from_rows(cls, rows: Sequence[jax.Array]) -> GradientTerms:
        """The inverse of :meth:`rows`."""
        named = len(cls._fields) - 1
        return cls(*rows[:named], input_scale=tuple(rows[named:]))

    def then(self, later: GradientTerms) -> GradientTerms:
        """The terms of this stretch of time followed by those of a ``later`` one: the named
        terms added (``None`` counts as zero), the input-scale terms of both kept in order."""

        def add(a, b):
            return b if a is None else a if b is None else a + b

        named = {name: add(getattr(self, name), getattr(later, name)) for name in self._fields[:-1]}
        return GradientTerms(**named, input_scale=self.input_scale + later.input_scale)


def step_terms(g_u, g_v, x_t, u_prev, o_prev, c: GLIFCoefficients) -> GradientTerms:
    """One step's :class:`GradientTerms` (``input_scale`` holds its one term g_u·x_t).

    ``u_prev`` and ``o_prev`` (boolean) are ``None`` at t = 0, where the decay and reset terms
    vanish: they are ``None`` too.
    """
    input_term = (g_u * x_t.astype(g_u.dtype),)
    if u_prev is None:
        return GradientTerms(None, None, None, g_v, g_u, input_term)
    return GradientTerms(
        decay=g_u * jnp.where(o_prev, u_prev * (1 - c.hard_reset), u_prev),
        hard_reset=g_u * jnp.where(o_prev, u_prev, 0),
        soft_reset=jnp.where(o_prev, g_u, 0),
        v_th=g_v,
        leak=g_u,
        input_scale=input_term,
    )


def trace_terms(xs, us, os, g_us, g_vs, c: GLIFCoefficients) -> GradientTerms:
    """Every neuron's :class:`GradientTerms`, summed over time, from both traces."""
    total = GradientTerms(None, None, None, None, None, input_scale=())
    for t, x_t in enumerate(xs):
        prev = (us[t - 1], os[t - 1]) if t > 0 else (None, None)
        total = total.then(step_terms(g_us[t], g_vs[t], x_t, *prev, c))
    # With T = 1 the decay and reset terms never appear.
    missing = {name: jnp.zeros_like(us[0]) for name, v in total._asdict().items() if v is None}
    return total._replace(**missing)


def gradient_terms(xs, g_spikes, g_membranes, c: GLIFCoefficients, surrogate, detach_reset):
    """:func:`trace_terms` from the per-step inputs and cotangents, both traces recomputed."""
    us, os = forward_trace(xs, c)
    g_us, g_vs = reverse_trace(us, os, g_spikes, g_membranes, c, surrogate, detach_reset)
    return trace_terms(xs, us, os, g_us, g_vs, c)


def coefficient_gradients(sums: GradientTerms, c: GLIFCoefficients) -> GLIFCoefficients:
    """The gradient of every coefficient from the :class:`GradientTerms` summed over neurons."""
    return GLIFCoefficients(
        decay=sums.decay,
        leak=-sums.leak,
        hard_reset=-c.decay * sums.hard_reset,
        soft_reset=-sums.soft_reset,
        v_th=-sums.v_th,
        input_scale=jnp.stack(sums.input_scale),
    )
