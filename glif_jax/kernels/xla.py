"""GLIF over time as one custom VJP in XLA: the ``"xla"`` implementation.

The forward pass keeps only the input x for the backward pass (4 bytes per neuron and step in
float32, 2 in bfloat16, against the 12 that autodiff of the scan keeps). The backward pass
recomputes the membrane from x and computes the gradients of x and of every coefficient in one
reverse pass. For T ≤ :data:`UNROLL_MAX_STEPS` (the short T of vision networks) the time loop is
unrolled in both directions, so that XLA fuses every step into a few passes over memory:

1. dx_t = g_u_t · input_scale_t for every t, one fused pass that recomputes both recurrences from
   x and the output cotangents: the only full-size write;
2. the parameter gradients: the :class:`~glif_jax.equations.GradientTerms` of every
   neuron, summed over neurons, one reduction per term (which XLA fuses into sibling reductions).
   On the CPU, :mod:`glif_jax.kernels.xla_cpu` computes the same sums in loops shaped for
   XLA:CPU instead.

Beyond that T the loop is a ``lax.scan`` in both directions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from glif_jax import equations, surrogates
from glif_jax.equations import GLIFCoefficients, GradientTerms
from glif_jax.kernels import xla_cpu

__all__ = ["UNROLL_MAX_STEPS", "Xla"]

UNROLL_MAX_STEPS = 8
"""Longest time loop that is unrolled; a ``lax.scan`` beyond."""


@dataclasses.dataclass(frozen=True)
class Xla:
    """The XLA custom-VJP implementation of the GLIF time loop (see the module docstring).

    Attributes:
      cpu_tuning: when lowered for the CPU, slice bfloat16 steps and sum the parameter gradients
        as :mod:`glif_jax.kernels.xla_cpu` does; ``False`` runs the generic form everywhere
        (the benchmarks compare the two).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from glif_jax import neuron, kernels
      >>> params = neuron.init_params(16, 4, key=jax.random.key(0))
      >>> x = jnp.ones((4, 8, 16))
      >>> spikes = neuron.glif(params, x, implementation=kernels.Xla())
      >>> bool((spikes == neuron.glif(params, x, implementation="scan")).all())
      True
    """

    name: ClassVar[str] = "xla"
    cpu_tuning: bool = True

    def __call__(
        self,
        x: jax.Array,
        coeffs: GLIFCoefficients,
        *,
        surrogate: surrogates.Surrogate,
        detach_reset: bool,
        return_membrane: bool,
    ):
        """Spikes ``(T, ..., C)`` in ``x``'s dtype, and with ``return_membrane`` the membrane in
        the coefficients' dtype; differentiable with respect to ``x`` and ``coeffs``."""
        return _glif_xla(x, coeffs, surrogate, detach_reset, return_membrane, self.cpu_tuning)


def split_steps(a: jax.Array | None, dtype) -> list[jax.Array] | None:
    """``a`` of shape ``(T, ...)`` as the list of its T steps in ``dtype`` (``None`` stays)."""
    if a is None:
        return None
    return [a[t].astype(dtype) for t in range(a.shape[0])]


def _steps(a, dtype, cpu_tuning: bool):
    if a is None or not cpu_tuning:
        return split_steps(a, dtype)
    return jax.lax.platform_dependent(
        a,
        cpu=functools.partial(xla_cpu.split_steps, dtype=dtype),
        default=functools.partial(split_steps, dtype=dtype),
    )


def sums_per_term(x, g_spikes, g_membrane, c: GLIFCoefficients, surrogate, detach_reset):
    """Every neuron's :class:`GradientTerms` summed over neurons, one reduction per term:
    ``(C,)`` arrays channel-wise, scalars layer-wise."""
    dtype = c.v_th.dtype
    terms = equations.gradient_terms(
        split_steps(x, dtype),
        split_steps(g_spikes, dtype),
        split_steps(g_membrane, dtype),
        c,
        surrogate,
        detach_reset,
    )
    axes = tuple(range(terms.leak.ndim - jnp.ndim(c.v_th)))
    return jax.tree.map(lambda term: jnp.sum(term, axis=axes), terms)


def _summed_terms(x, g_spikes, g_membrane, c, surrogate, detach_reset, cpu_tuning):
    args = (x, g_spikes, g_membrane, c, surrogate, detach_reset)
    if not cpu_tuning:
        return sums_per_term(*args)
    return jax.lax.platform_dependent(
        cpu=lambda: xla_cpu.summed_terms(*args, rest=sums_per_term),
        default=lambda: sums_per_term(*args),
    )


def _input_scale_rows(c: GLIFCoefficients, ndim: int) -> jax.Array:
    """``input_scale`` shaped to broadcast against ``(T, ..., C)`` arrays of rank ``ndim``."""
    shape = (-1,) + (1,) * (ndim - 1 - jnp.ndim(c.v_th)) + jnp.shape(c.v_th)
    return c.input_scale.reshape(shape)


def _unrolled_forward(x, c, cpu_tuning):
    us, os = equations.forward_trace(_steps(x, c.v_th.dtype, cpu_tuning), c)
    return jnp.stack(us), jnp.stack(os)


def _unrolled_backward(x, c, g_spikes, g_membrane, surrogate, detach_reset, cpu_tuning):
    dtype = c.v_th.dtype
    us, os = equations.forward_trace(_steps(x, dtype, cpu_tuning), c)
    g_us, _ = equations.reverse_trace(
        us,
        os,
        _steps(g_spikes, dtype, cpu_tuning),
        _steps(g_membrane, dtype, cpu_tuning),
        c,
        surrogate,
        detach_reset,
    )
    dx = (jnp.stack(g_us) * _input_scale_rows(c, x.ndim)).astype(x.dtype)
    sums = _summed_terms(x, g_spikes, g_membrane, c, surrogate, detach_reset, cpu_tuning)
    return dx, equations.coefficient_gradients(sums, c)


def _scanned_forward(x, c: GLIFCoefficients):
    def step(carry, inputs):
        u, o = equations.forward_step(*carry, *inputs, c)
        return (u, o), (u, o)

    zeros = jnp.zeros(x.shape[1:], c.v_th.dtype)
    _, (us, os) = jax.lax.scan(step, (zeros, zeros > 0), (x, c.input_scale))
    return us, os


def _scanned_backward(x, c: GLIFCoefficients, g_spikes, g_membrane, surrogate, detach_reset):
    # Keeps the membrane trace (one array of x's size) while it runs; spikes are read off it.
    dtype = c.v_th.dtype
    us, _ = _scanned_forward(x, c)
    axes = tuple(range(x.ndim - 1 - jnp.ndim(c.v_th)))

    def spike(u):
        return u - c.v_th > 0

    def step(carry, inputs):
        gu_next, sums = carry
        t, x_t, u, g_spike, g_membrane_t, input_scale_t = inputs
        g_u, g_v = equations.reverse_step(
            gu_next, u, spike(u), g_spike.astype(dtype), g_membrane_t, c, surrogate, detach_reset
        )
        # u_{t−1} and o_{t−1}; at t = 0 they are 0, which the mask restores.
        u_prev = jax.lax.dynamic_index_in_dim(us, jnp.maximum(t - 1, 0), keepdims=False)
        u_prev = jnp.where(t > 0, u_prev, 0)
        o_prev = (t > 0) & spike(u_prev)
        terms = equations.step_terms(g_u, g_v, x_t, u_prev, o_prev, c)
        summed = jax.tree.map(lambda term: jnp.sum(term, axis=axes), terms)
        # The carry holds the named sums; each step's input-scale sum is its own row.
        sums = sums.then(summed._replace(input_scale=()))
        return (g_u, sums), (g_u * input_scale_t, summed.input_scale[0])

    g_membrane = None if g_membrane is None else g_membrane.astype(dtype)
    zero = jnp.zeros_like(c.v_th)
    first = GradientTerms(zero, zero, zero, zero, zero, input_scale=())
    inputs = (jnp.arange(x.shape[0]), x, us, g_spikes, g_membrane, c.input_scale)
    carry = (jnp.zeros(x.shape[1:], dtype), first)
    (_, sums), (dx, input_sums) = jax.lax.scan(step, carry, inputs, reverse=True)
    sums = sums._replace(input_scale=tuple(input_sums))
    return dx.astype(x.dtype), equations.coefficient_gradients(sums, c)


def _forward(x, c, return_membrane, cpu_tuning):
    if x.shape[0] <= UNROLL_MAX_STEPS:
        us, os = _unrolled_forward(x, c, cpu_tuning)
    else:
        us, os = _scanned_forward(x, c)
    spikes = os.astype(x.dtype)
    return (spikes, us) if return_membrane else spikes


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _glif_xla(x, c, surrogate, detach_reset, return_membrane, cpu_tuning):
    return _forward(x, c, return_membrane, cpu_tuning)


def _glif_xla_fwd(x, c, surrogate, detach_reset, return_membrane, cpu_tuning):
    # Only the input is kept: the backward pass recomputes the membrane from it.
    return _forward(x, c, return_membrane, cpu_tuning), (x, c)


def _glif_xla_bwd(surrogate, detach_reset, return_membrane, cpu_tuning, residuals, cotangents):
    x, c = residuals
    g_spikes, g_membrane = cotangents if return_membrane else (cotangents, None)
    if x.shape[0] <= UNROLL_MAX_STEPS:
        return _unrolled_backward(x, c, g_spikes, g_membrane, surrogate, detach_reset, cpu_tuning)
    return _scanned_backward(x, c, g_spikes, g_membrane, surrogate, detach_reset)


_glif_xla.defvjp(_glif_xla_fwd, _glif_xla_bwd)
