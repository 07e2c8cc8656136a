"""The Pallas kernels' own settings, their lowering for GPU and TPU, and their data parallelism.

Their values and gradients against the scan are ``test_implementations.py``. Here they run in
Pallas's interpreter on the CPU, under the suite's four fake CPU devices; ``JAX_PLATFORMS=cuda
python -m pytest tests/glif_jax/kernels`` runs them compiled on a GPU.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from glif_jax import kernels, neuron, surrogates
from tests.support.glif_inputs import random_input, random_params


@pytest.mark.parametrize("sub_rows", [None, 1, 4])
def test_gradient_sums_are_the_same_over_any_row_blocks_and_sub_tiles(sub_rows):
    rng = np.random.default_rng(4)
    params = random_params(rng, 16, 4)
    # 70 rows: 5 blocks of 16 rows, each 2 sub-tiles of 8 rows by default at T = 4 (or 16 of 1,
    # or 4 of 4).
    x = random_input(rng, (4, 70, 16))
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def gradients(kernel):
        return jax.vjp(lambda p, x: neuron.glif(p, x, implementation=kernel), params, x)[1](g)

    small_blocks = gradients(kernels.Pallas(block_rows=16, sub_rows=sub_rows))
    one_block = gradients(kernels.Pallas(block_rows=128))
    for a, b in zip(jax.tree.leaves(one_block), jax.tree.leaves(small_blocks), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(block_rows=24), "block_rows must be a power of two, got 24"),
        (dict(sub_rows=3), "sub_rows must be a power of two, got 3"),
        (dict(num_warps=6), "num_warps must be a power of two, got 6"),
    ],
)
def test_tilings_that_are_not_powers_of_two_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        kernels.Pallas(**settings)


def test_tpu_sub_tiles_must_be_whole_tiles():
    params = random_params(np.random.default_rng(7), 4, 2)
    kernel = kernels.Pallas(sub_rows=4, backend="tpu", interpret=False)
    with pytest.raises(ValueError, match="sub_rows on TPU must be a multiple of 8"):
        jax.eval_shape(
            lambda x: neuron.glif(params, x, implementation=kernel), jnp.ones((2, 30, 4))
        )


def _gradients_of_both_outputs(kernel):
    def gradients(params, x):
        def loss(params, x):
            spikes, membrane = neuron.glif(
                params, x, surrogate=surrogates.atan(), return_membrane=True, implementation=kernel
            )
            return jnp.sum(spikes.astype(jnp.float32)) + jnp.sum(membrane)

        return jax.grad(loss, argnums=(0, 1))(params, x)

    return gradients


@pytest.mark.parametrize("backend, platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_kernels_lower_for_gpu_and_tpu(backend, platform):
    # Lowering runs Pallas's Triton and Mosaic rules (block shapes, dtypes, ops) without a device.
    params = neuron.init_params(100, 6)
    x = jnp.zeros((6, 2, 25, 100), jnp.bfloat16)
    kernel = kernels.Pallas(backend=backend, interpret=False)
    gradients = jax.jit(_gradients_of_both_outputs(kernel))
    lowered = gradients.trace(params, x).lower(lowering_platforms=(platform,))
    assert "custom_call" in lowered.as_text()


# ------------------------------------------------------------------------------------------------
# Under a mesh


@pytest.fixture
def mesh():
    assert jax.device_count() == 4  # the suite's conftest fakes four CPU devices
    return jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))


def _sharded(mesh, fn):
    """``fn(params, x)`` jitted with x's batch axis (axis 1) sharded over ``mesh``."""
    return jax.jit(
        fn, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data")))
    )


def _outputs_and_gradients(kernel):
    def run(params, x):
        def loss(params, x):
            spikes, membrane = neuron.glif(params, x, return_membrane=True, implementation=kernel)
            weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
            return jnp.sum(spikes * weights) + jnp.sum(jnp.sin(membrane)), (spikes, membrane)

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    return run


@pytest.mark.parametrize("channel_wise", [True, False])
def test_under_a_mesh_each_device_runs_its_shard_to_the_scan_results(mesh, channel_wise):
    rng = np.random.default_rng(10)
    params = random_params(rng, 6 if channel_wise else None, 4)
    x = random_input(rng, (4, 8, 3, 6))  # a batch of 8 over 4 devices
    want = jax.jit(_outputs_and_gradients("scan"))(params, x)
    pallas = _sharded(mesh, _outputs_and_gradients("pallas"))
    with jax.set_mesh(mesh):
        assert kernels.pallas.shard_plan(x.shape) is not None
        got = pallas(params, x)
    (grads_want, dx_want), (spikes_want, membrane_want) = want
    (grads, dx), (spikes, membrane) = got
    assert spikes.sharding.spec == P(None, "data")
    np.testing.assert_array_equal(spikes, spikes_want)
    np.testing.assert_allclose(membrane, membrane_want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx_want, rtol=2e-5, atol=2e-5)
    for a, b in zip(jax.tree.leaves(grads_want), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * (np.abs(a).max() + 1))


def test_a_batch_the_mesh_cannot_split_evenly_runs_unsharded(mesh):
    # Six examples over four devices: no per-device plan; the kernels run on the whole batch,
    # with the same results, and "auto" takes another path on a GPU (test_select.py).
    rng = np.random.default_rng(11)
    params = random_params(rng, 6, 4)
    x = random_input(rng, (4, 6, 6))
    want = jax.jit(_outputs_and_gradients("scan"))(params, x)
    with jax.set_mesh(mesh):
        assert kernels.pallas.shard_plan(x.shape) is None
        got = jax.jit(_outputs_and_gradients("pallas"))(params, x)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * (np.abs(a).max() + 1))


def _regions(text: str, opening: str) -> list[tuple[int, int]]:
    """The spans of the regions (``{ ... }``) of every op whose text starts with ``opening``."""
    spans = []
    for match in re.finditer(re.escape(opening), text):
        start = text.index("{", text.index(") {", match.end()))
        depth, end = 0, start
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        spans.append((start, end))
    return spans


def test_lowered_for_gpu_the_kernels_sit_inside_per_device_regions(mesh):
    params = neuron.init_params(16, 4, key=jax.random.key(0))
    x = jnp.zeros((4, 8, 3, 16))
    kernel = kernels.Pallas(backend="gpu", interpret=False)
    gradients = _sharded(mesh, _outputs_and_gradients(kernel))
    with jax.set_mesh(mesh):
        text = gradients.trace(params, x).lower(lowering_platforms=("cuda",)).as_text()
    regions = _regions(text, "sdy.manual_computation(")
    calls = [m.start() for m in re.finditer(r"custom_call @__gpu\$xla\.gpu\.triton", text)]
    assert len(calls) == 2  # the forward and the backward kernel
    assert all(any(a < call < b for a, b in regions) for call in calls)
    assert 'manual_axes={"data"}' in text
    # The only collective is the all-reduce of the parameter-gradient sums.
    assert "all_gather" not in text and "all_to_all" not in text
    assert text.count("all_reduce") == 1
