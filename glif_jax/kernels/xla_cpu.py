"""XLA:CPU tuning of the ``"xla"`` implementation (:mod:`glif_jax.kernels.xla`).

:mod:`glif_jax.kernels.xla` calls these functions only when it is lowered for the CPU (through
``jax.lax.platform_dependent``); other backends never run them, and with
``Xla(cpu_tuning=False)`` the CPU runs the generic form too. They compute what the generic form
computes, arranged for how XLA:CPU emits loops:

* XLA:CPU emits each result of a fusion as its own loop over memory that recomputes the
  elementwise work it needs, and it runs the operands of a concatenation as separate loops. The
  parameter gradients need 5 + T sums over the neurons, each of a term that depends on both
  recurrences; one reduction per term would recompute both recurrences 5 + T times.
  :func:`summed_terms` instead computes them in few loops over the neurons (see there).
* XLA:CPU slices bfloat16 arrays through float32 (convert, slice, convert back) and writes each
  slice out as an array of its own; :func:`split_steps` slices their 16-bit patterns instead and
  widens them exactly.

The benchmarks time ``"xla"`` against ``Xla(cpu_tuning=False)`` (``--paths xla,xla/cpu_tuning=0``,
``experiments/benchmarks/results-cpu-2core-xla-cpu.md``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from glif_jax import equations, placement
from glif_jax.equations import GLIFCoefficients, GradientTerms

__all__ = ["split_steps", "summed_terms"]

MAX_GROUPS = 8
"""Neurons summed inside one iteration of a loop of :func:`summed_terms`."""

MAX_TERMS_PER_LOOP = 11
"""Terms computed in one loop of :func:`summed_terms`; beyond it LLVM stops sharing the
recurrences between them, so more terms are split over several loops."""

SUM_CHANNELS = 1024
"""Channels per reduction of the loops' partial sums (:func:`_sum_over_rows`)."""

SCOPE = "xla_cpu"
"""The name scope of everything this module adds to a program."""


def _bit_patterns(a: jax.Array) -> jax.Array:
    """A bfloat16 array as its 16-bit patterns (``uint16``); any other array unchanged."""
    return jax.lax.bitcast_convert_type(a, jnp.uint16) if a.dtype == jnp.bfloat16 else a


def _widened(a: jax.Array, dtype) -> jax.Array:
    """Undoes :func:`_bit_patterns` exactly (bfloat16 is float32's upper 16 bits), in ``dtype``."""
    if a.dtype == jnp.uint16:
        a = jax.lax.bitcast_convert_type(a.astype(jnp.uint32) << 16, jnp.float32)
    return a.astype(dtype)


def split_steps(a: jax.Array, dtype) -> list[jax.Array]:
    """``a`` of shape ``(T, ...)`` as the list of its T steps in ``dtype``, as
    :func:`glif_jax.kernels.xla.split_steps`, bfloat16 sliced as bit patterns."""
    with jax.named_scope(SCOPE):
        bits = _bit_patterns(a)
        return [_widened(bits[t], dtype) for t in range(a.shape[0])]


def group_count(neurons: int, *, divisor_only: bool = False) -> int:
    """J, the neurons one loop iteration sums: the largest divisor of ``neurons`` up to
    :data:`MAX_GROUPS` when it is at least half of that (or whatever it is, with
    ``divisor_only``), else :data:`MAX_GROUPS` (the ``neurons mod J`` left over are summed
    apart), or ``neurons`` if fewer."""
    divisor = max(d for d in range(1, MAX_GROUPS + 1) if neurons % d == 0)
    if divisor_only or divisor >= MAX_GROUPS // 2:
        return divisor
    return min(MAX_GROUPS, neurons)


def summed_terms(
    x,
    g_spikes,
    g_membrane,
    c: GLIFCoefficients,
    surrogate,
    detach_reset: bool,
    *,
    rest: Callable[..., GradientTerms],
) -> GradientTerms:
    """Every neuron's :class:`~glif_jax.equations.GradientTerms` summed over the
    neurons, in few loops.

    In each loop the terms go along a new minor axis, each chosen by that axis's index: the loop
    over it is the innermost one and short, so LLVM unrolls it and computes the recurrences the
    terms share once per neuron (``jnp.stack`` would be a concatenation: one loop, and one
    recurrence, per term). Each loop iteration first sums J groups of neurons (every J-th neuron
    from the j-th, :func:`group_count`), so each loop writes ``N/J`` rows of partial sums.

    Args:
      x, g_spikes, g_membrane: the input and the output cotangents, ``(T, ..., C)``
        (``g_membrane`` may be ``None``).
      c, surrogate, detach_reset: as :func:`glif_jax.equations.reverse_step`.
      rest: the generic sums, same arguments, for the neurons left over when J does not divide N.
    """
    with jax.named_scope(SCOPE):
        return _summed_terms(x, g_spikes, g_membrane, c, surrogate, detach_reset, rest)


def _summed_terms(x, g_spikes, g_membrane, c, surrogate, detach_reset, rest):
    steps, channels = x.shape[0], x.shape[-1]
    dtype = c.v_th.dtype
    neurons = math.prod(x.shape[1:-1])
    # With the batch split over devices, groups never straddle two devices' neurons, and none are
    # left over: each device then sums its own neurons, and only the sums cross devices.
    split = placement.batch_split(x.shape[1]) if x.ndim >= 3 else None
    if split is None:
        groups = group_count(neurons)
    else:
        groups = group_count(neurons // split.shards, divisor_only=True)
    grouped = neurons - neurons % groups
    arrays = [
        None if a is None else a.reshape(steps, neurons, channels)
        for a in (x, g_spikes, g_membrane)
    ]
    # Neuron n·J + j of group j as row n of (T, N/J, J, C): a split of the neuron axis rather
    # than a strided slice, so that a batch sharded over devices stays split the same way.
    patterns = [
        None if a is None else _bit_patterns(a[:, :grouped]).reshape(steps, -1, groups, channels)
        for a in arrays
    ]

    def group(a, j):
        if a is None:
            return None
        return [_widened(a[t, :, j], dtype) for t in range(steps)]

    count = GradientTerms.count(steps)
    loops = math.ceil(count / MAX_TERMS_PER_LOOP)
    bounds = [round(i * count / loops) for i in range(loops + 1)]
    sums = []
    for first, stop in itertools.pairwise(bounds):
        totals = None
        for j in range(groups):
            terms = equations.gradient_terms(
                *(group(a, j) for a in patterns), c, surrogate, detach_reset
            )
            found = terms.rows()[first:stop]
            if totals is not None:
                found = [a + b for a, b in zip(totals, found, strict=True)]
            totals = found
        shape = totals[0].shape  # (N/J, C)
        index = jax.lax.broadcasted_iota(jnp.int32, (*shape, len(totals)), len(shape))
        stacked = totals[-1][..., None]
        for k in reversed(range(len(totals) - 1)):
            stacked = jnp.where(index == k, totals[k][..., None], stacked)
        sums.append(_sum_over_rows(stacked, channel_wise=jnp.ndim(c.v_th) == 1))
    sums = GradientTerms.from_rows(list(jnp.moveaxis(jnp.concatenate(sums, axis=-1), -1, 0)))
    if grouped == neurons:
        return sums
    left_over = [None if a is None else a[:, grouped:] for a in arrays]
    return jax.tree.map(jnp.add, sums, rest(*left_over, c, surrogate, detach_reset))


def _sum_over_rows(a: jax.Array, channel_wise: bool) -> jax.Array:
    """The partial sums ``a``, ``(N/J, C, K)``, summed over the neurons: ``(C, K)``, or ``(K,)``
    over the channels too for layer-wise coefficients.

    Channel-wise, in slices of at most :data:`SUM_CHANNELS` channels: XLA:CPU reduces a short
    leading axis of long rows slowly, and in slices it does not.
    """
    if not channel_wise:
        return jnp.sum(a, axis=(0, 1))
    return jnp.concatenate(
        [
            jnp.sum(a[:, first : first + SUM_CHANNELS], axis=0)
            for first in range(0, a.shape[1], SUM_CHANNELS)
        ]
    )
