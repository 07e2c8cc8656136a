"""What the backward pass of a GLIF layer keeps: bytes per neuron and time step, for each choice
between storing residuals and recomputing them.

Counted from the closure that ``jax.vjp`` returns (the residuals autodiff saves for the backward
pass), keeping every array of at least one time step's worth of neurons; the input x is counted
when it is kept (the XLA and Pallas kernels keep it and nothing else). Small arrays (per-channel
coefficients) are left out: they do not grow with the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from glif_jax import neuron

# Each choice: a name, how to run the layer, and the implementation of glif underneath.
CHOICES: tuple[tuple[str, str, bool], ...] = (
    ("scan (plain autodiff)", "scan", False),
    ("scan under jax.checkpoint", "scan", True),
    ("xla", "xla", False),
    ("xla under jax.checkpoint", "xla", True),
    ("pallas", "pallas", False),
)


def saved_bytes(layer: Callable[[jax.Array], jax.Array], x: jax.Array) -> int:
    """Bytes of the arrays of at least one step of x's size that ``jax.vjp(layer, x)`` keeps."""
    _, vjp_fn = jax.vjp(layer, x)
    one_step = math.prod(x.shape[1:])
    leaves = jax.tree.leaves(vjp_fn)
    return sum(leaf.nbytes for leaf in leaves if getattr(leaf, "size", 0) >= one_step)


def measure(time_steps: int, shape: Sequence[int], dtypes: Sequence[str]) -> list[dict]:
    """One row per (choice, dtype): the bytes kept per neuron and time step.

    Args:
      time_steps: T.
      shape: ``(..., C)`` of one time step (small: the count does not depend on it).
      dtypes: input dtypes, ``"float32"`` and/or ``"bfloat16"``.
    """
    params = neuron.init_params(shape[-1], time_steps, key=jax.random.key(0))
    rows = []
    for dtype in dtypes:
        x = jnp.full((time_steps, *shape), 0.7, dtype)
        for name, implementation, checkpoint in CHOICES:

            def layer(x, implementation=implementation):
                return neuron.glif(params, x, implementation=implementation)

            if checkpoint:
                layer = jax.checkpoint(layer)
            rows.append(
                {
                    "choice": name,
                    "dtype": dtype,
                    "bytes_per_neuron_step": saved_bytes(layer, x) / x.size,
                }
            )
    return rows
