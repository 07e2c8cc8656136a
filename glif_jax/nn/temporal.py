"""Time handling for spiking networks: encoders and per-frame application of stateless layers.

Convention, everywhere in glif_jax: time-major and channel-last, ``(T, B, ..., C)``. Only the
neuron loops over time; every stateless layer (convolution, linear, pooling, normalisation) sees
time folded into the batch, ``(T·B, ..., C)``, as the reference's ``SeqToANNContainer`` does.

**Data parallelism.** :func:`fold_time` puts row ``t·B + b`` first-to-last, time major. When the
batch is sharded over a mesh in context, that order would interleave every device's rows, and no
split of the folded axis keeps them on their device: XLA would gather the whole batch onto every
device. :func:`per_frame` therefore folds at device granularity: with the batch split into ``n``
shards (:func:`glif_jax.placement.batch_split`) it views ``(T, B)`` as ``(T, n, B/n)``, moves ``n``
first and merges, so that the folded axis is ``n`` blocks of ``T·B/n`` rows, each block one
device's own frames, time major. On each device the move is of an axis of size 1, a relabelling,
not a copy. The layers it wraps are stateless or reduce over all rows (tdBN), so the order of the
rows changes nothing they compute; with one device the two orders are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from glif_jax import placement

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
    Under a mesh that splits the batch into ``n`` shards the folded rows are ordered device by
    device (see the module's docstring), so that no device needs another's frames; ``fn`` must
    then treat rows alike (per-row layers, or reductions over all rows).
    """
    split = placement.batch_split(x.shape[1]) if x.ndim >= 2 else None
    if split is None:
        return unfold_time(fn(fold_time(x)), x.shape[0])
    steps, batch, shards = x.shape[0], x.shape[1], split.shards

    def device_major(y):  # (T, B, ...) -> (n, T, B/n, ...), split over n
        y = jnp.swapaxes(y.reshape(steps, shards, batch // shards, *y.shape[2:]), 0, 1)
        return jax.lax.with_sharding_constraint(y, split.spec(0))

    folded = device_major(x).reshape(steps * batch, *x.shape[2:])
    y = fn(folded)
    y = y.reshape(shards, steps, batch // shards, *y.shape[1:])
    y = jax.lax.with_sharding_constraint(y, split.spec(0))
    return jnp.swapaxes(y, 0, 1).reshape(steps, batch, *y.shape[3:])


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
