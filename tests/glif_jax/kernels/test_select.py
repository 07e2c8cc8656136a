"""What ``implementation="auto"`` runs (glif_jax.kernels.select): always one of the
implementations, Pallas only where its kernels apply, and glif runs what it names."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from glif_jax import kernels, neuron
from glif_jax.kernels import pallas
from tests.support.glif_inputs import random_input, random_params

F32, BF16, F16, F64 = jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64
NAMES = {"scan", *kernels.KERNELS}
INPUT_DTYPES = (F32, BF16, F16, F64)
COMPUTE_DTYPES = (F32, F64)
STEPS = (1, 2, 3, 4, 6, 8, 9, 12, pallas.MAX_STEPS, pallas.MAX_STEPS + 1, 4 * pallas.MAX_STEPS)


def _kernels_apply(input_dtype, compute_dtype, steps) -> bool:
    """Where the Pallas kernels are checked: float32 or bfloat16 input, float32 compute, and no
    more steps than they unroll."""
    return input_dtype in (F32, BF16) and compute_dtype == F32 and steps <= pallas.MAX_STEPS


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_auto_names_an_implementation_and_pallas_only_where_it_applies(backend, devices):
    for input_dtype, compute_dtype, steps in itertools.product(INPUT_DTYPES, COMPUTE_DTYPES, STEPS):
        case = (backend, devices, input_dtype, compute_dtype, steps)
        choice = kernels.select(
            (steps, 8, 16), input_dtype, compute_dtype, backend=backend, device_count=devices
        )
        assert choice in NAMES, case
        if choice == "pallas":
            assert _kernels_apply(input_dtype, compute_dtype, steps), case
            # Several devices and no mesh in context: nothing splits the batch.
            assert devices == 1, case
        if backend == "cpu":  # Pallas only interprets there
            assert choice != "pallas", case
        if backend == "gpu" and devices == 1 and _kernels_apply(input_dtype, compute_dtype, steps):
            # On a GPU the kernels ran fastest at every T they apply to.
            assert choice == "pallas", case


def test_under_a_mesh_pallas_needs_a_batch_that_the_mesh_splits():
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        for steps, batch in itertools.product(STEPS, (1, 2, 3, 4, 6, 8, 12)):
            choice = kernels.select((steps, batch, 16), F32, F32, backend="gpu")
            assert choice in NAMES
            if batch % 4:
                assert choice != "pallas", (steps, batch)
            elif steps <= pallas.MAX_STEPS:
                assert choice == "pallas", (steps, batch)  # each device runs its shard
        # A layer without a batch axis has nothing to split.
        assert kernels.select((4, 16), F32, F32, backend="gpu") != "pallas"


@pytest.mark.parametrize(
    "shape, dtype", [((4, 16, 8), F32), ((3, 2, 5, 8), BF16), ((20, 6, 8), F32), ((2, 8), F32)]
)
def test_auto_computes_the_spikes_and_gradients_of_the_path_it_names(shape, dtype):
    rng = np.random.default_rng(3)
    params = random_params(rng, shape[-1], shape[0])
    x = random_input(rng, shape, dtype)
    g = jnp.asarray(rng.normal(size=shape), dtype)
    named = kernels.select(shape, dtype, F32)

    def spikes_and_gradients(implementation):
        layer = lambda p, x: neuron.glif(p, x, implementation=implementation)
        spikes, vjp = jax.vjp(layer, params, x)
        return spikes, vjp(g)

    auto, expected = spikes_and_gradients("auto"), spikes_and_gradients(named)
    assert 0 < float(auto[0].mean()) < 1
    for got, want in zip(jax.tree.leaves(auto), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)


def test_glif_runs_what_auto_selects(monkeypatch):
    params = random_params(np.random.default_rng(8), 8, 4)
    x = random_input(np.random.default_rng(9), (4, 16, 8))

    def traced():
        return str(jax.make_jaxpr(lambda x: neuron.glif(params, x))(x))

    for choice, marker in (("pallas", "pallas_call"), ("xla", "custom_vjp"), ("scan", "scan")):
        monkeypatch.setattr(kernels, "select", lambda *args, choice=choice, **kwargs: choice)
        jaxpr = traced()
        assert marker in jaxpr
        if choice == "scan":
            assert "pallas_call" not in jaxpr and "custom_vjp" not in jaxpr
