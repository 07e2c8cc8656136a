"""The XLA:CPU tuning of the ``"xla"`` implementation against its generic form: the same sums of
the gradient terms, the same steps, and run only where it is lowered for the CPU. (That the whole
implementation, tuned or not, computes the scan's gradients is
``tests/glif_jax/kernels/test_implementations.py``.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glif_jax import kernels, neuron, surrogates
from glif_jax.kernels import xla, xla_cpu
from tests.support.glif_inputs import random_input, random_params


def _sums(x, g, g_membrane, coeffs, tuned: bool):
    args = (x, g, g_membrane, coeffs, surrogates.sigmoid(), False)
    if tuned:
        return xla_cpu.summed_terms(*args, rest=xla.sums_per_term)
    return xla.sums_per_term(*args)


@pytest.mark.parametrize("membrane_cotangent", [False, True])
@pytest.mark.parametrize("channel_wise", [True, False])
@pytest.mark.parametrize("time_steps", [3, 8])
@pytest.mark.parametrize("neuron_shape", [(4, 6), (4, 7), (19,)])
def test_loop_sums_equal_one_reduction_per_term(
    neuron_shape, time_steps, channel_wise, membrane_cotangent
):
    # 4·6 = 24 neurons make groups of eight, 4·7 = 28 groups of seven, 19 groups of eight with
    # three neurons left over; T = 8 has more terms than one loop takes.
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = random_params(rng, 5 if channel_wise else None, time_steps, dtype=np.float64)
        coeffs = neuron.coefficients(params, "soft")
        x = random_input(rng, (time_steps, *neuron_shape, 5), np.float64)
        g = random_input(rng, x.shape, np.float64)
        g_membrane = random_input(rng, x.shape, np.float64) if membrane_cotangent else None
        tuned = _sums(x, g, g_membrane, coeffs, tuned=True)
        generic = _sums(x, g, g_membrane, coeffs, tuned=False)
    assert len(tuned.input_scale) == time_steps
    for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(generic), strict=True):
        assert a.shape == jnp.shape(coeffs.v_th)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_wide_layers_are_summed_in_slices_to_the_same_sums(monkeypatch):
    # Five channels in slices of at most two: the sliced reduction against the whole one.
    rng = np.random.default_rng(8)
    with jax.enable_x64(True):
        params = random_params(rng, 5, 3, dtype=np.float64)
        coeffs = neuron.coefficients(params, "soft")
        x = random_input(rng, (3, 16, 5), np.float64)
        g = random_input(rng, x.shape, np.float64)
        whole = _sums(x, g, None, coeffs, tuned=True)
        monkeypatch.setattr(xla_cpu, "SUM_CHANNELS", 2)
        sliced = _sums(x, g, None, coeffs, tuned=True)
    for a, b in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bfloat16_steps_widen_exactly_for_every_bit_pattern():
    bits = jnp.arange(2**16, dtype=jnp.uint32).astype(jnp.uint16).reshape(2, 2**15)
    x = jax.lax.bitcast_convert_type(bits, jnp.bfloat16)  # every finite, infinite and NaN value
    want = np.asarray(x.astype(jnp.float32))
    for t, step in enumerate(jax.jit(xla_cpu.split_steps, static_argnums=1)(x, jnp.float32)):
        assert step.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(step), want[t])  # NaN equals NaN here


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_the_tuning_is_lowered_for_the_cpu_only(platform):
    params = neuron.init_params(8, 4, key=jax.random.key(0))
    x = jnp.ones((4, 16, 8), jnp.bfloat16)

    def loss(params, x):
        return jnp.sum(neuron.glif(params, x, implementation=kernels.Xla()).astype(jnp.float32))

    lowered = (
        jax.jit(jax.grad(loss, argnums=(0, 1)))
        .trace(params, x)
        .lower(lowering_platforms=(platform,))
        .as_text(debug_info=True)
    )
    assert (f"/{xla_cpu.SCOPE}/" in lowered) == (platform == "cpu")
