"""Recomputation: run a layer in the backward pass again instead of keeping its activations.

``jax.checkpoint`` (``nnx.remat``) marks what to recompute, but it leaves the scheduling to XLA,
and XLA:CPU computes the recomputation as early as its inputs allow: at the start of the backward
pass, before any gradient is known, all blocks at once. The activations are then alive together
and the peak memory is not reduced. :func:`recompute` makes the recomputation wait for the
gradient of the layer's output: the recomputation reads the layer's input through a select on
whether that gradient is finite, a data dependence that no scheduler can move ahead of it. Only
the layer's input is kept between the two passes.

(``lax.optimization_barrier`` does not order them on XLA:CPU, which drops barriers before it
schedules; a ``lax.cond`` on the gradient does, but XLA:CPU runs the weight gradient of a
convolution inside a conditional branch about a hundred times slower.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["recompute"]


def recompute(layer: nnx.Module, x: jax.Array) -> jax.Array:
    """``layer(x)``, with ``layer``'s intermediate activations recomputed in the backward pass.

    The results and gradients are those of ``layer(x)``, except that a non-finite gradient of the
    output (inf or NaN anywhere) gives NaN gradients for the parameters and the input. State the
    layer updates in its forward pass (BatchNorm statistics) is updated as by ``layer(x)``.

    Args:
      layer: an NNX module called as ``layer(x)``.
      x: its input.

    Returns:
      ``layer(x)``.
    """
    graph, params, rest = nnx.split(layer, nnx.Param, ...)
    y, rest = _recomputed_call(graph, params, rest, x)
    nnx.update(layer, rest)
    return y


def _call(graph, params, rest, x):
    layer = nnx.merge(graph, params, rest, copy=True)
    y = layer(x)
    _, _, rest = nnx.split(layer, nnx.Param, ...)
    return y, rest


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recomputed_call(graph, params, rest, x):
    return _call(graph, params, rest, x)


def _forward(graph, params, rest, x):
    return _call(graph, params, rest, x), (params, rest, x)


def _zero_cotangent(value):
    value = jnp.asarray(value)
    if jnp.issubdtype(value.dtype, jnp.inexact):
        return jnp.zeros_like(value)
    return np.zeros(value.shape, jax.dtypes.float0)


def _backward(graph, residuals, cotangents):
    params, rest, x = residuals
    g_y, _ = cotangents  # the updated state has no gradient

    # The select orders the recomputation after g_y exists (see the module docstring).
    finite = jnp.isfinite(jnp.sum(g_y.astype(jnp.float32)))
    x = jnp.where(finite, x, jnp.nan if jnp.issubdtype(x.dtype, jnp.inexact) else 0)
    _, vjp = jax.vjp(lambda p, x: _call(graph, p, rest, x)[0], params, x)
    d_params, d_x = vjp(g_y)
    return d_params, jax.tree.map(_zero_cotangent, rest), d_x


_recomputed_call.defvjp(_forward, _backward)
