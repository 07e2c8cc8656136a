"""Flax NNX layers over the pure GLIF core: the neuron, tdBN, and time handling.

Axes: time-major and channel-last, ``(T, B, ..., C)``.
"""

from __future__ import annotations

from flax import nnx

from glif_jax.nn.glif_layer import GLIF, FiringRate
from glif_jax.nn.normalization import TDBatchNorm
from glif_jax.nn.recompute import recompute
from glif_jax.nn.temporal import (
    PerFrame,
    batch_major_to_time_major,
    direct_encode,
    fold_time,
    per_frame,
    unfold_time,
)

__all__ = [
    "GLIF",
    "FiringRate",
    "PerFrame",
    "TDBatchNorm",
    "batch_major_to_time_major",
    "direct_encode",
    "firing_rates",
    "fold_time",
    "glif_layers",
    "per_frame",
    "recompute",
    "unfold_time",
]


def glif_layers(model: nnx.Module) -> dict[str, GLIF]:
    """Every :class:`GLIF` layer of ``model``, keyed by its dotted path, in definition order."""
    return {
        ".".join(str(k) for k in path): module
        for path, module in nnx.iter_modules(model)
        if isinstance(module, GLIF)
    }


def firing_rates(model: nnx.Module, *args, **kwargs):
    """Run ``model(*args, **kwargs)`` and also return each GLIF layer's mean firing rate.

    The model's output is unchanged; recording is switched on only for this call.

    Returns:
      ``(output, rates)``, where ``rates`` maps each GLIF layer's dotted path to the fraction of
      its neurons that fired, averaged over time, batch and space (a float32 scalar).
    """
    layers = glif_layers(model)
    for layer in layers.values():
        layer.record_firing_rate = True
    try:
        output, recorded = nnx.capture(model, FiringRate)(*args, **kwargs)
    finally:
        for layer in layers.values():
            layer.record_firing_rate = False
    rates = {}
    for path, value in nnx.to_flat_state(recorded):
        # path ends with the sow name ('firing_rate'); the value is a tuple of sown values.
        key = ".".join(str(k) for k in path[:-1])
        sown = value.get_value()
        rates[key] = sown[0] if isinstance(sown, tuple) else sown
    return output, {name: rates[name] for name in layers if name in rates}
