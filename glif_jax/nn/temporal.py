"""Time handling for spiking networks: encoders and per-frame application of stateless layers.

Convention, everywhere in glif_jax: time-major and channel-last, ``(T, B, ..., C)``. Only the
neuron loops over time; every stateless layer (convolution, linear, pooling, normalisation) sees
time folded into the batch, ``(T·B, ..., C)``, row ``t·B + b`` as the reference's
``SeqToANNContainer``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "PerFrame",
    "batch_major_to_time_major",
    "direct_encode",
    "fold_time",
    "per_frame",
    "unfold_time",
]


def fold_time(x: jax.Array) -> jax.Array:
    """``(T, B, ...)`` → ``(T·B, ...)``, row ``t·B + b``."""
    if x.ndim < 2:
        raise ValueError(f"fold_time: expected (T, B, ...), got shape {tuple(x.shape)}.")
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_time(x: jax.Array, time_steps: int) -> jax.Array:
    """``(T·B, ...)`` → ``(T, B, ...)``, the inverse of :func:`fold_time`."""
    if x.shape[0] % time_steps:
        raise ValueError(
            f"unfold_time: the leading axis {x.shape[0]} is not a multiple of T={time_steps}."
        )
    return x.reshape(time_steps, x.shape[0] // time_steps, *x.shape[1:])


def per_frame(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Apply a per-frame (stateless) function to every time step at once.

    Folds ``x`` of shape ``(T, B, ...)`` to ``(T·B, ...)``, applies ``fn`` and unfolds the result.
    """
    return unfold_time(fn(fold_time(x)), x.shape[0])


class PerFrame(nnx.Module):
    """Wraps layers (conv, pooling, linear, BN...) so that they run on ``(T, B, ...)`` inputs with
    time folded into the batch, like the reference's ``SeqToANNContainer``. The layers run in order.
    """

    def __init__(self, *layers: Callable[[jax.Array], jax.Array]):
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        def run(y):
            for layer in self.layers:
                y = layer(y)
            return y

        return per_frame(run, x)


def direct_encode(images: jax.Array, time_steps: int) -> jax.Array:
    """Direct encoding: repeat a batch of analog images over T, ``(B, ...)`` → ``(T, B, ...)``.

    Every time step sees the same normalised image (the reference's
    ``x.unsqueeze(0).repeat(T, 1, 1, 1, 1)``); the first spikes come from the stem's neurons.
    """
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"direct_encode: time_steps must be a positive int, got {time_steps!r}.")
    return jnp.broadcast_to(images[None], (time_steps, *images.shape))


def batch_major_to_time_major(frames: jax.Array) -> jax.Array:
    """Event frames ``(B, T, ...)`` (as datasets store them) → ``(T, B, ...)``."""
    if frames.ndim < 2:
        raise ValueError(
            f"batch_major_to_time_major: expected (B, T, ...), got shape {tuple(frames.shape)}."
        )
    return jnp.swapaxes(frames, 0, 1)
