"""Recomputation: run a layer in the backward pass again instead of keeping its activations.

``jax.checkpoint`` (``nnx.remat``) marks what to recompute, but it leaves the scheduling to XLA,
and XLA:CPU computes the recomputation as early as its inputs allow: at the start of the backward
pass, before any gradient is known, all blocks at once. The activations are then alive together
and the peak memory is not reduced. :func:`recompute` makes the recomputation wait for the
gradient of the layer's output: the backward pass is a conditional on that gradient, which no
scheduler can move ahead of it. Only the layer's input is kept between the two passes.
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

    def gradients(params, x, g_y):
        _, vjp = jax.vjp(lambda p, x: _call(graph, p, rest, x)[0], params, x)
        return vjp(g_y)

    def not_finite(params, x, g_y):
        return jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), (params, x))

    # The conditional orders the recomputation after g_y exists (see the module docstring).
    finite = jnp.isfinite(jnp.sum(g_y.astype(jnp.float32)))
    d_params, d_x = jax.lax.cond(finite, gradients, not_finite, params, x, g_y)
    return d_params, jax.tree.map(_zero_cotangent, rest), d_x


_recomputed_call.defvjp(_forward, _backward)
