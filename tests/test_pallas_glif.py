"""The Pallas kernels against the plain ``lax.scan`` path: in Pallas's interpreter on the CPU,
compiled (Triton or Mosaic) where JAX's default backend is a GPU or TPU. The suite's conftest picks
the CPU unless ``JAX_PLATFORMS`` is set: ``JAX_PLATFORMS=cuda python -m pytest
tests/test_pallas_glif.py`` runs them compiled on a GPU."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glif_jax import neuron, pallas_glif, surrogates
from tests.test_neuron import random_input, random_params


def _outputs_and_gradients(params, x, weights, implementation, **options):
    """Spikes, membrane and the gradients of a loss that reads both (so both cotangents flow)."""

    def loss(params, x):
        spikes, membrane = neuron.glif(
            params, x, return_membrane=True, implementation=implementation, **options
        )
        value = jnp.sum(spikes.astype(jnp.float32) * weights) + jnp.sum(jnp.sin(membrane))
        return value, (spikes, membrane)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (grad_params, grad_x), (spikes, membrane) = grad(params, x)
    return spikes, membrane, grad_params, grad_x


def _assert_matches_scan(params, x, **options):
    weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
    want = _outputs_and_gradients(params, x, weights, "scan", **options)
    got = _outputs_and_gradients(params, x, weights, "pallas", **options)
    np.testing.assert_array_equal(got[0], want[0])  # spikes
    # The membrane to float32 rounding: XLA contracts multiply-adds into FMAs where it fuses them,
    # and the interpreter's loop fuses differently from the scan.
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
    for name in ("alpha", "beta", "gamma", "tau", "v_th", "leak", "v_reset", "conduct"):
        a, b = getattr(want[2], name), getattr(got[2], name)
        if a is None:
            assert b is None
            continue
        scale = float(jnp.abs(a).max()) + 1
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * scale, err_msg=name)
    np.testing.assert_allclose(
        np.asarray(got[3], np.float32), np.asarray(want[3], np.float32), rtol=2e-5, atol=2e-5
    )
    assert float(jnp.abs(got[2].v_th).sum()) > 0


@pytest.mark.parametrize("channel_wise", [True, False])
@pytest.mark.parametrize("mode", neuron.MODES)
def test_pallas_matches_scan_in_every_mode(mode, channel_wise):
    rng = np.random.default_rng(zlib.crc32(repr((mode, channel_wise)).encode()))
    shape = (4, 3, 5, 6)
    params = random_params(rng, shape[-1] if channel_wise else None, shape[0], mode=mode)
    _assert_matches_scan(params, random_input(rng, shape), mode=mode)


@pytest.mark.parametrize("surrogate", [surrogates.atan(), surrogates.sigmoid(4.0)])
def test_pallas_matches_scan_with_smooth_surrogates_and_detached_reset(surrogate):
    rng = np.random.default_rng(2)
    params = random_params(rng, 8, 3)
    x = random_input(rng, (3, 12, 8))
    _assert_matches_scan(params, x, surrogate=surrogate, detach_reset=True)


@pytest.mark.parametrize(
    "shape, channel_wise",
    [((3, 5, 7, 10), True), ((2, 300, 130), True), ((5, 37, 3), False)],
)
def test_pallas_matches_scan_on_shapes_that_do_not_divide_the_blocks(shape, channel_wise):
    # 35 rows of 10 channels; 130 channels, wider than one block of 128; a prime row count.
    rng = np.random.default_rng(3)
    params = random_params(rng, shape[-1] if channel_wise else None, shape[0])
    _assert_matches_scan(params, random_input(rng, shape))


@pytest.mark.parametrize("sub_rows", [None, 1, 4])
def test_pallas_sums_gradients_over_row_blocks_and_sub_tiles(sub_rows):
    rng = np.random.default_rng(4)
    params = random_params(rng, 16, 4)
    # 70 rows: 5 blocks of 16 rows, each 2 sub-tiles of 8 rows by default at T = 4 (or 16 of 1,
    # or 4 of 4).
    x = random_input(rng, (4, 70, 16))
    coeffs = neuron.coefficients(params)
    surrogate = surrogates.rectangle()
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def run(config):
        def spikes(x, coeffs):
            return pallas_glif.glif_pallas(x, coeffs, surrogate, False, False, config)

        return jax.vjp(spikes, x, coeffs)[1](g)

    small_blocks = run(pallas_glif.PallasConfig(block_rows=16, interpret=True, sub_rows=sub_rows))
    one_block = run(pallas_glif.PallasConfig(block_rows=128, interpret=True))
    for a, b in zip(jax.tree.leaves(one_block), jax.tree.leaves(small_blocks), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_pallas_keeps_bfloat16_inputs_and_matches_scan():
    rng = np.random.default_rng(5)
    params = random_params(rng, 6, 4)
    x = random_input(rng, (4, 20, 6)).astype(jnp.bfloat16)
    spikes = neuron.glif(params, x, implementation="pallas")
    assert spikes.dtype == jnp.bfloat16
    _assert_matches_scan(params, x)


def test_pallas_saves_only_the_input_for_the_backward_pass():
    params = random_params(np.random.default_rng(6), 8, 4)
    x = jnp.ones((4, 16, 8))
    _, vjp_fn = jax.vjp(lambda x: neuron.glif(params, x, implementation="pallas"), x)
    big = [leaf for leaf in jax.tree.leaves(vjp_fn) if getattr(leaf, "size", 0) >= x.size]
    assert sum(leaf.nbytes for leaf in big) <= 4 * x.size


@pytest.mark.parametrize(
    "config, message",
    [
        (pallas_glif.PallasConfig(block_rows=24), "block_rows must be a power of two, got 24"),
        (pallas_glif.PallasConfig(sub_rows=3), "sub_rows must be a power of two, got 3"),
        (pallas_glif.PallasConfig(sub_rows=4, backend="tpu", interpret=False), "multiple of 8"),
        (pallas_glif.PallasConfig(num_warps=6, backend="gpu"), "num_warps .* got 6"),
    ],
)
def test_bad_block_shapes_are_refused(config, message):
    params = random_params(np.random.default_rng(7), 4, 2)
    coeffs = neuron.coefficients(params)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(
            lambda x: pallas_glif.glif_pallas(
                x, coeffs, surrogates.rectangle(), False, False, config
            ),
            jnp.ones((2, 30, 4)),
        )


@pytest.mark.parametrize("backend, platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_kernels_lower_for_gpu_and_tpu(backend, platform):
    # Lowering runs Pallas's Triton and Mosaic rules (block shapes, dtypes, ops) without a device.
    params = neuron.init_params(100, 6)
    x = jnp.zeros((6, 2, 25, 100), jnp.bfloat16)
    config = pallas_glif.PallasConfig(backend=backend, interpret=False)

    def gradients(params, x):
        def loss(x, coeffs):
            spikes, membrane = pallas_glif.glif_pallas(
                x, coeffs, surrogates.atan(), False, True, config
            )
            return jnp.sum(spikes.astype(jnp.float32)) + jnp.sum(membrane)

        return jax.grad(loss, argnums=(0, 1))(x, neuron.coefficients(params))

    lowered = jax.jit(gradients).trace(params, x).lower(lowering_platforms=(platform,))
    assert "custom_call" in lowered.as_text()


@pytest.mark.parametrize(
    "backend, devices, steps, dtypes, expected",
    [
        ("gpu", 1, 4, (jnp.float32, jnp.float32), "pallas"),
        ("gpu", 1, 16, (jnp.bfloat16, jnp.float32), "pallas"),
        ("gpu", 1, 17, (jnp.float32, jnp.float32), "fused"),  # unrolled; timed up to T = 16
        ("gpu", 4, 4, (jnp.float32, jnp.float32), "fused"),  # sharded jit cannot split it
        ("gpu", 1, 4, (jnp.float32, jnp.float64), "fused"),  # checked in float32 only
        ("gpu", 1, 4, (jnp.float16, jnp.float32), "fused"),  # and from fp32 and bf16 inputs
        ("tpu", 1, 4, (jnp.float32, jnp.float32), "fused"),  # lowered for TPU, never run on one
        ("cpu", 1, 4, (jnp.float32, jnp.float32), "fused"),
    ],
)
def test_auto_runs_pallas_on_one_gpu_only(monkeypatch, backend, devices, steps, dtypes, expected):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    input_dtype, compute_dtype = map(jnp.dtype, dtypes)
    assert neuron._auto_implementation(steps, input_dtype, compute_dtype) == expected


def test_glif_asks_auto_which_path_to_run(monkeypatch):
    params = random_params(np.random.default_rng(8), 8, 4)
    x = random_input(np.random.default_rng(9), (4, 16, 8))

    def traced():
        return str(jax.make_jaxpr(lambda x: neuron.glif(params, x))(x))

    monkeypatch.setattr(jax, "device_count", lambda: 1)
    monkeypatch.setattr(neuron, "_PALLAS_BY_DEFAULT", ())
    assert "pallas_call" not in traced()
    # As if this backend were a GPU (on the CPU the kernels then run in the interpreter).
    monkeypatch.setattr(neuron, "_PALLAS_BY_DEFAULT", (jax.default_backend(),))
    assert "pallas_call" in traced()
