"""Random GLIF parameters and inputs spread so that every term of the neuron matters."""

import jax.numpy as jnp
import numpy as np

from glif_jax import neuron
from tests.support.oracles import JAX_TO_REFERENCE


def random_params(rng, channels, time_steps, *, mode="soft", dtype=np.float32, spread=1.0):
    """Raw parameters spread around the reference's init, so that every term matters."""
    shape = () if channels is None else (channels,)
    base = {"tau": -1.0986, "v_th": 0.0, "leak": -2.708, "v_reset": 0.0}
    fields = {k: v + spread * rng.normal(size=shape) for k, v in base.items()}
    fields["conduct"] = spread * rng.normal(size=(time_steps, *shape))
    for gate in ("alpha", "beta", "gamma"):
        fields[gate] = None if mode == "fused" else 1.5 * rng.normal(size=shape)
    return neuron.GLIFParams(
        **{k: None if v is None else jnp.asarray(v, dtype) for k, v in fields.items()}
    )


def to_reference(params):
    """The raw parameters as float64 arrays keyed by the reference's names."""
    return {
        JAX_TO_REFERENCE[name]: np.asarray(value, np.float64)
        for name, value in vars(params).items()
        if value is not None
    }


def random_input(rng, shape, dtype=np.float32):
    """An input current around 0.3 with spread 0.8: both resets fire."""
    return jnp.asarray(0.8 * rng.normal(size=shape) + 0.3, dtype)
