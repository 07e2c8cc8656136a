"""glif_jax: the gated leaky integrate-and-fire neuron (GLIF) and its spiking networks in JAX.

The pure functional core is :mod:`glif_jax.neuron` (with the spike functions of
:mod:`glif_jax.surrogates`); :mod:`glif_jax.nn` holds the Flax NNX layers over it and
:mod:`glif_jax.models` the paper's networks.
"""

from glif_jax import neuron, surrogates
from glif_jax.neuron import GLIFParams, glif, glif_step, init_params, simplex_params

__version__ = "0.1.0"

__all__ = [
    "GLIFParams",
    "glif",
    "glif_step",
    "init_params",
    "neuron",
    "simplex_params",
    "surrogates",
]
