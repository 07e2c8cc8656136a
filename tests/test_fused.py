"""The fused path's backward pass against plain autodiff of the scan, in the cases it treats apart:
long sequences (the scanned backward), lengths whose parameter sums take two loops, a vanishing
input scale, narrow inputs, and neuron counts without small divisors (the grouped sums); and the
two forms of the parameter sums (XLA:CPU's and the other backends') against each other."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glif_jax import neuron, surrogates
from tests.test_neuron import random_input, random_params


def _gradients(params, x, implementation, *, membrane_cotangent, **options):
    weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

    def loss(params, x):
        spikes, membrane = neuron.glif(
            params, x, return_membrane=True, implementation=implementation, **options
        )
        value = jnp.sum(spikes.astype(jnp.float32) * weights)
        return value + jnp.sum(jnp.sin(membrane)) if membrane_cotangent else value

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def _assert_fused_matches_scan(params, x, rtol, **options):
    want = _gradients(params, x, "scan", **options)
    got = _gradients(params, x, "fused", **options)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * (np.abs(a).max() + 1))
    return got


@pytest.mark.parametrize("membrane_cotangent", [False, True])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("channel_wise", [True, False])
def test_long_sequences_match_scan_in_float64(channel_wise, detach_reset, membrane_cotangent):
    # T = 12 > 8 takes the scanned backward pass.
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        params = random_params(rng, 5 if channel_wise else None, 12, dtype=np.float64)
        x = random_input(rng, (12, 3, 5), np.float64)
        _assert_fused_matches_scan(
            params,
            x,
            1e-10,
            detach_reset=detach_reset,
            membrane_cotangent=membrane_cotangent,
            surrogate=surrogates.atan(),
        )


@pytest.mark.parametrize("time_steps", [1, 7, 8])
def test_unrolled_lengths_match_scan(time_steps):
    # T = 7 and 8 have more parameter terms than one loop of sums takes (5 + T > 11).
    rng = np.random.default_rng(6)
    params = random_params(rng, 5, time_steps)
    x = random_input(rng, (time_steps, 6, 5))
    _assert_fused_matches_scan(params, x, 2e-5, membrane_cotangent=True)


@pytest.mark.parametrize("membrane_cotangent", [False, True])
@pytest.mark.parametrize("channel_wise", [True, False])
@pytest.mark.parametrize("time_steps", [3, 8])
@pytest.mark.parametrize("neuron_shape", [(4, 6), (4, 7), (19,)])
def test_sums_in_loops_match_sums_per_term(
    neuron_shape, time_steps, channel_wise, membrane_cotangent
):
    # On the CPU the fused path takes _sums_in_loops; GPU and TPU take _sums_per_term, which the
    # public API cannot reach here: both against each other, in float64. 4·6 = 24 neurons make
    # groups of eight, 4·7 = 28 groups of seven, 19 groups of eight and three neurons left over.
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = random_params(rng, 5 if channel_wise else None, time_steps, dtype=np.float64)
        coeffs = neuron.coefficients(params, "soft")
        x = random_input(rng, (time_steps, *neuron_shape, 5), np.float64)
        g = random_input(rng, x.shape, np.float64)
        g_membrane = random_input(rng, x.shape, np.float64) if membrane_cotangent else None
        args = (x, g, g_membrane, coeffs, surrogates.sigmoid(), False)
        in_loops = neuron._sums_in_loops(*args)
        per_term = neuron._sums_per_term(*args)
        assert in_loops.shape == per_term.shape == (5 + time_steps, *jnp.shape(coeffs.v_th))
        np.testing.assert_allclose(in_loops, per_term, rtol=1e-12, atol=1e-12)


def test_sums_in_loops_reduce_wide_channels_in_slices(monkeypatch):
    # Channel-wise sums over more than _SUM_CHANNELS channels are reduced in slices of at most
    # that many (here 2, 2 and 1 of five channels), to the same sums.
    rng = np.random.default_rng(8)
    with jax.enable_x64(True):
        params = random_params(rng, 5, 3, dtype=np.float64)
        coeffs = neuron.coefficients(params, "soft")
        x = random_input(rng, (3, 16, 5), np.float64)
        g = random_input(rng, x.shape, np.float64)
        whole = neuron._sums_in_loops(x, g, None, coeffs, surrogates.sigmoid(), False)
        monkeypatch.setattr(neuron, "_SUM_CHANNELS", 2)
        jaxpr = jax.make_jaxpr(neuron._sums_in_loops, static_argnums=(2, 4, 5))(
            x, g, None, coeffs, surrogates.sigmoid(), False
        )
        sliced = neuron._sums_in_loops(x, g, None, coeffs, surrogates.sigmoid(), False)
    widths = [
        eqn.outvars[0].aval.shape[0]
        for eqn in jaxpr.eqns
        if eqn.primitive.name == "reduce_sum" and eqn.outvars[0].aval.ndim == 2
    ]
    assert sorted(widths) == [1, 2, 2]
    np.testing.assert_allclose(sliced, whole, rtol=1e-12, atol=1e-12)


def test_fused_backward_on_the_cpu_has_no_loop_or_conditional():
    # T ≤ 8 is unrolled, and the parameter sums pick their form when lowered, not when run.
    params = neuron.init_params(8, 4, key=jax.random.key(0))
    x = jnp.ones((4, 3, 8))

    def loss(params, x):
        return jnp.sum(neuron.glif(params, x, implementation="fused"))

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    assert " conditional(" not in hlo
    assert " while(" not in hlo


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_sums_take_their_form_for_the_platform_they_are_lowered_for(platform):
    # Only XLA:CPU gets the loops with a term axis (an iota picks the terms); GPU and TPU get one
    # reduction per term. Lowering for another platform needs no device of it.
    params = neuron.init_params(8, 4, key=jax.random.key(0))
    x = jnp.ones((4, 16, 8))

    def loss(params, x):
        return jnp.sum(neuron.glif(params, x, implementation="fused"))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    lowered = grad.trace(params, x).lower(lowering_platforms=(platform,)).as_text()
    assert ("iota" in lowered) == (platform == "cpu")
    if platform != "cpu":
        assert lowered.count("stablehlo.reduce") >= len(neuron._TERMS) + 4


@pytest.mark.parametrize("channel_wise", [True, False])
def test_vanishing_input_scale_keeps_exact_input_gradients(channel_wise):
    # GLIF_f's input scale is σ(conduct): at conduct = -30 it is ~1e-13, where dx_t = gu_t·s_t
    # could not give back gu_t; the gradients of conduct there must still be right.
    rng = np.random.default_rng(3)
    params = random_params(rng, 6 if channel_wise else None, 4, mode="fused")
    params = params.replace(conduct=params.conduct.at[1].set(-30.0))
    x = random_input(rng, (4, 7, 6))
    assert float(jnp.min(neuron.coefficients(params, "fused").input_scale)) < 2.0**-20
    grads = _assert_fused_matches_scan(params, x, 1e-5, mode="fused", membrane_cotangent=True)
    assert float(jnp.abs(grads[0].conduct[1]).max()) > 0


def test_bfloat16_inputs_give_the_gradients_of_scan():
    rng = np.random.default_rng(4)
    params = random_params(rng, 6, 4)
    x = random_input(rng, (4, 9, 6)).astype(jnp.bfloat16)
    grads = _assert_fused_matches_scan(params, x, 2e-5, membrane_cotangent=True)
    assert grads[1].dtype == jnp.bfloat16


def test_bfloat16_steps_widen_exactly_for_every_bit_pattern():
    bits = jnp.arange(2**16, dtype=jnp.uint32).astype(jnp.uint16).reshape(2, 2**15)
    x = jax.lax.bitcast_convert_type(bits, jnp.bfloat16)  # every finite, infinite and NaN value
    want = np.asarray(x.astype(jnp.float32))
    for t, step in enumerate(jax.jit(neuron._per_step)(x)):
        assert step.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(step), want[t])  # NaN equals NaN here


@pytest.mark.parametrize("channel_wise", [True, False])
@pytest.mark.parametrize("neurons", [17, 19, 210, 3, 1])
def test_neuron_counts_without_small_divisors_match_scan(neurons, channel_wise):
    # 17 and 19 have no divisor from 2 to 8: groups of eight and one or three neurons summed
    # apart; 210 = 30·7 makes seven groups, 3 three groups of one; 1 neuron per channel: (T, C).
    rng = np.random.default_rng(5)
    params = random_params(rng, 3 if channel_wise else None, 4)
    shape = (4, neurons, 3) if neurons > 1 else (4, 3)
    _assert_fused_matches_scan(params, random_input(rng, shape), 2e-5, membrane_cotangent=False)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's buffer assignment")
def test_fused_backward_needs_a_fraction_of_the_scratch_of_scan():
    # The parameter sums run off x and the cotangent without a stored trace; the scan's backward
    # pass keeps per-step residuals of several arrays of x's size. (XLA:GPU fuses the fused path
    # differently and needs more scratch: 2.5× x's size; there the default is the Pallas kernel.)
    params = neuron.init_params(64, 4, key=jax.random.key(0))
    x = jnp.zeros((4, 8, 16, 16, 64))
    g = jnp.zeros_like(x)

    def scratch(implementation):
        def backward(params, x, g):
            layer = functools.partial(neuron.glif, implementation=implementation)
            return jax.vjp(layer, params, x)[1](g)

        compiled = jax.jit(backward).lower(params, x, g).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert scratch("fused") <= 1.5 * x.nbytes
    assert scratch("scan") >= 2 * x.nbytes
