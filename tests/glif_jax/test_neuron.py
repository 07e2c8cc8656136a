"""The pure GLIF core against independent transcriptions of the reference's equations."""

import dataclasses
import functools
import inspect
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glif_jax import kernels, models, neuron, nn, surrogates
from tests.support.glif_inputs import random_input, random_params, to_reference
from tests.support.oracles import JAX_TO_REFERENCE, numpy_glif, torch_glif

MODES = neuron.MODES
SHAPES = [(1, 5), (3, 2, 6), (4, 2, 3, 3, 5), (10, 3, 4)]  # (T, ..., C): T=10 takes the long path


@pytest.mark.parametrize("implementation", ["scan", "xla"])
@pytest.mark.parametrize("channel_wise", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_glif_matches_hand_unrolled_loop_in_float64(mode, shape, channel_wise, implementation):
    rng = np.random.default_rng(zlib.crc32(repr((mode, shape, channel_wise)).encode()))
    with jax.enable_x64(True):
        params = random_params(
            rng, shape[-1] if channel_wise else None, shape[0], mode=mode, dtype=np.float64
        )
        x = random_input(rng, shape, np.float64)
        spikes, membrane = neuron.glif(
            params, x, mode=mode, return_membrane=True, implementation=implementation
        )
        want_spikes, want_membrane = numpy_glif(to_reference(params), np.asarray(x), mode)
        assert spikes.dtype == jnp.float64
        np.testing.assert_array_equal(spikes, want_spikes)
        np.testing.assert_allclose(membrane, want_membrane, rtol=1e-12, atol=1e-12)
        if shape[0] > 2:
            assert 0 < float(spikes.mean()) < 1  # the test exercises both resets


@pytest.mark.parametrize("mode", MODES)
def test_glif_float32_matches_reference_loop(mode):
    rng = np.random.default_rng(1)
    params = random_params(rng, 8, 4, mode=mode)
    x = random_input(rng, (4, 16, 8))
    spikes, membrane = neuron.glif(params, x, mode=mode, return_membrane=True)
    want_spikes, want_membrane = numpy_glif(
        {k: v.astype(np.float32) for k, v in to_reference(params).items()},
        np.asarray(x),
        mode,
    )
    assert spikes.dtype == jnp.float32 and membrane.dtype == jnp.float32
    np.testing.assert_array_equal(spikes, want_spikes)
    np.testing.assert_allclose(membrane, want_membrane, rtol=1e-6, atol=1e-6)


SURROGATES = {
    "rectangle": surrogates.rectangle(),
    "sigmoid": surrogates.sigmoid(4.0),
    "atan": surrogates.atan(2.0),
    "triangle": surrogates.triangle(1.0),
    "superspike": surrogates.superspike(10.0),
}


def _torch_grads(params, x, weights, mode, surrogate, detach):
    torch = pytest.importorskip("torch")
    raw = {k: torch.tensor(v, requires_grad=True) for k, v in to_reference(params).items()}
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    spikes, _ = torch_glif(raw, xt, mode, surrogate, detach)
    (spikes * torch.tensor(np.asarray(weights, np.float64))).sum().backward()
    grads = {
        k: (v.grad.numpy() if v.grad is not None else np.zeros_like(v.detach().numpy()))
        for k, v in raw.items()
    }
    return grads, xt.grad.numpy()


@pytest.mark.parametrize("implementation", ["scan"])  # the others equal it: kernels/
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("channel_wise", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_pytorch_autograd_in_float64(
    mode, channel_wise, surrogate, detach_reset, implementation
):
    rng = np.random.default_rng(7)
    shape = (5, 3, 4, 6) if channel_wise else (3, 4, 6)
    with jax.enable_x64(True):
        params = random_params(
            rng, shape[-1] if channel_wise else None, shape[0], mode=mode, dtype=np.float64
        )
        x = random_input(rng, shape, np.float64)
        weights = jnp.asarray(rng.normal(size=shape))

        def loss(params, x):
            spikes = neuron.glif(
                params,
                x,
                mode=mode,
                surrogate=SURROGATES[surrogate],
                detach_reset=detach_reset,
                implementation=implementation,
            )
            return jnp.sum(spikes * weights)

        grads, grad_x = jax.grad(loss, argnums=(0, 1))(params, x)
        want, want_x = _torch_grads(params, x, weights, mode, surrogate, detach_reset)
        np.testing.assert_allclose(grad_x, want_x, rtol=1e-9, atol=1e-12)
        for name, reference_name in JAX_TO_REFERENCE.items():
            got = getattr(grads, name)
            if got is None:
                assert mode == "fused" and name in ("alpha", "beta", "gamma")
                continue
            np.testing.assert_allclose(
                got, want[reference_name], rtol=1e-9, atol=1e-12, err_msg=name
            )
        assert np.abs(grads.v_th).sum() > 0


@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("mode", MODES)
def test_xla_kernel_is_bit_identical_to_scan_under_jit(mode, surrogate):
    rng = np.random.default_rng(11)
    params = random_params(rng, 16, 4, mode=mode)
    x = random_input(rng, (4, 8, 5, 16))
    run = jax.jit(
        lambda p, x, impl: neuron.glif(
            p,
            x,
            mode=mode,
            surrogate=SURROGATES[surrogate],
            return_membrane=True,
            implementation=impl,
        ),
        static_argnums=2,
    )
    scan_spikes, scan_membrane = run(params, x, "scan")
    xla_spikes, xla_membrane = run(params, x, "xla")
    np.testing.assert_array_equal(xla_spikes, scan_spikes)
    np.testing.assert_array_equal(xla_membrane, scan_membrane)

    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    grad = jax.jit(
        jax.grad(
            lambda p, x, impl: jnp.sum(
                neuron.glif(p, x, mode=mode, surrogate=SURROGATES[surrogate], implementation=impl)
                * weights
            ),
            argnums=(0, 1),
        ),
        static_argnums=2,
    )
    for a, b in zip(
        jax.tree.leaves(grad(params, x, "scan")),
        jax.tree.leaves(grad(params, x, "xla")),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max() + 1))


def test_simplex_101_is_vanilla_lif():
    rng = np.random.default_rng(0)
    params = neuron.simplex_params("101", 6, 5)
    x = random_input(rng, (5, 4, 6))
    spikes, membrane = neuron.glif(params, x, mode="static_hard", return_membrane=True)
    tau = np.float32(0.25)  # σ(logit(0.25)) rounds to 0.25 exactly in float32
    v_th = np.float32(0.5)
    u = np.zeros((4, 6), np.float32)
    s = np.zeros((4, 6), np.float32)
    for t in range(5):
        u = tau * u * (1 - s) + np.asarray(x[t])  # the paper's Eq. 1
        s = (u - v_th > 0).astype(np.float32)
        np.testing.assert_array_equal(membrane[t], u)
        np.testing.assert_array_equal(spikes[t], s)


@pytest.mark.parametrize("code", ["000", "001", "010", "011", "100", "101", "110", "111"])
def test_simplex_codes_set_binary_gates(code):
    params = neuron.simplex_params(code, 3, 2)
    coeffs = neuron.coefficients(params, "static_hard")
    alpha, beta, gamma = (float(c) for c in code)
    tau, leak, v_reset = 0.25, neuron.LEAK_REFERENCE, 0.5
    np.testing.assert_allclose(coeffs.decay, 1 - alpha * (1 - tau), rtol=1e-6)
    np.testing.assert_allclose(coeffs.leak, (1 - alpha) * leak, rtol=1e-6)
    np.testing.assert_allclose(coeffs.hard_reset, gamma)
    np.testing.assert_allclose(coeffs.soft_reset, (1 - gamma) * v_reset, rtol=1e-6)
    np.testing.assert_allclose(coeffs.input_scale, 1 - beta * (1 - 0.5), rtol=1e-6)


def _gate_grads(mode):
    rng = np.random.default_rng(5)
    params = random_params(rng, 4, 3)
    x = random_input(rng, (3, 6, 4))
    return jax.grad(lambda p: jnp.sum(neuron.glif(p, x, mode=mode) * x))(params)


@pytest.mark.parametrize("mode", ["static", "static_hard"])
def test_static_modes_give_no_gradient_to_gates(mode):
    grads = _gate_grads(mode)
    for gate in (grads.alpha, grads.beta, grads.gamma):
        np.testing.assert_array_equal(gate, 0)
    assert np.abs(grads.tau).sum() > 0


def test_hard_mode_passes_straight_through_gradient():
    params = neuron.init_params(3, 2, gates=(0.9, 0.2, 0.7))
    # Forward: the gates are binary, 1[σ(raw) > 0.5].
    coeffs = neuron.coefficients(params, "hard")
    np.testing.assert_array_equal(coeffs.hard_reset, 1.0)
    np.testing.assert_allclose(coeffs.decay, 0.25)
    # Backward: the binary gate α passes the gradient of σ(raw) through, as if it were σ(raw):
    # d decay / d raw = −(1 − τ)·σ'(raw) for decay = 1 − α(1 − τ).
    grad = jax.grad(
        lambda raw: jnp.sum(neuron.coefficients(params.replace(alpha=raw), "hard").decay)
    )(params.alpha)
    s, tau = jax.nn.sigmoid(params.alpha), jax.nn.sigmoid(params.tau)
    np.testing.assert_allclose(grad, -(1 - tau) * s * (1 - s), rtol=1e-6)
    assert np.abs(_gate_grads("hard").alpha).sum() > 0


def test_fused_mode_has_no_gates_and_gated_modes_need_them():
    params = neuron.init_params(4, 2, gates=None)
    assert params.alpha is None and params.beta is None and params.gamma is None
    x = jnp.ones((2, 3, 4))
    assert neuron.glif(params, x, mode="fused").shape == x.shape
    with pytest.raises(ValueError, match="needs the gates"):
        neuron.glif(params, x, mode="soft")


def test_init_params_match_reference_raw_values():
    params = neuron.init_params(5, 3)
    np.testing.assert_allclose(params.tau, -1.0986123, rtol=1e-7)
    np.testing.assert_allclose(params.v_th, 0.0)
    np.testing.assert_allclose(params.leak, -2.7080502, rtol=1e-7)
    np.testing.assert_allclose(params.v_reset, 0.0)
    np.testing.assert_allclose(params.conduct, np.zeros((3, 5)))
    np.testing.assert_allclose(params.alpha, 0.2006707, rtol=1e-6)
    np.testing.assert_allclose(params.beta, 0.6190392, rtol=1e-6)
    np.testing.assert_allclose(params.gamma, 0.2006707, rtol=1e-6)
    for value in vars(params).values():
        assert value.dtype == jnp.float32
    assert params.channels == 5 and params.time_steps == 3 and params.channel_wise


def test_init_params_layer_wise_and_random_gates():
    layer = neuron.init_params(None, 6)
    assert layer.v_th.shape == () and layer.conduct.shape == (6,) and layer.channels is None
    random = neuron.init_params(1000, 2, key=jax.random.key(0))
    for gate in (random.alpha, random.beta, random.gamma):
        assert gate.shape == (1000,) and gate.dtype == jnp.float32
        assert float(gate.min()) >= -0.1 and float(gate.max()) < 0.1
        assert float(gate.std()) > 0.05
    assert not np.array_equal(random.alpha, random.beta)
    scaled = neuron.init_params(2, 6, leak="scaled")
    np.testing.assert_allclose(jax.nn.sigmoid(scaled.leak), 0.5 / 12, rtol=1e-6)


def test_initial_values_are_the_defaults_of_every_glif_builder():
    defaults = dataclasses.asdict(neuron.InitialValues())
    assert defaults == {
        "tau": 0.25,
        "v_th": 0.5,
        "leak": neuron.LEAK_REFERENCE,
        "v_reset": 0.5,
        "conduct": 0.5,
        "gates": (0.6, 0.8, 0.6),
    }
    for builder in (neuron.init_params, nn.GLIF.__init__, models.glif_factory):
        parameters = inspect.signature(builder).parameters
        for name, value in defaults.items():
            # The networks' own defaults: random gates, and R = V_th as the reference.
            if builder is models.glif_factory and name in ("gates", "v_reset"):
                continue
            assert parameters[name].default == value, (builder, name)


def test_initial_values_checked_resolve_and_name_the_caller():
    checked = neuron.InitialValues(leak="scaled", gates=[0.5, 0.5, 1 / 3]).checked(4)
    assert checked.leak == 0.5 / 8 and checked.gates == (0.5, 0.5, 1 / 3)
    assert neuron.InitialValues(gates=None).checked(4).gates is None
    with pytest.raises(ValueError, match="layer: tau must lie in the open interval"):
        neuron.InitialValues(tau=1.0).checked(4, "layer")
    with pytest.raises(ValueError, match=r"layer: leak must be a number in \(0, 1\) or 'scaled'"):
        neuron.InitialValues(leak="half").checked(4, "layer")
    with pytest.raises(ValueError, match=r"layer: gates must be three values"):
        neuron.InitialValues(gates=(0.5,)).checked(4, "layer")
    with pytest.raises(TypeError, match="layer: conduct must be a number"):
        neuron.InitialValues(conduct="0.5").checked(4, "layer")


def test_check_sizes_names_the_caller():
    neuron.check_sizes(None, 3)
    neuron.check_sizes(np.int64(4), np.int32(2))
    with pytest.raises(ValueError, match="layer: channels must be a positive int"):
        neuron.check_sizes(0, 3, "layer")
    with pytest.raises(ValueError, match="layer: time_steps must be a positive int, got 0"):
        neuron.check_sizes(4, 0, "layer")
    with pytest.raises(TypeError, match=r"layer: time_steps must be a positive int, got 2\.0"):
        neuron.check_sizes(4, 2.0, "layer")


def test_init_params_reads_no_gate_values_when_it_draws_the_gates():
    drawn = neuron.init_params(3, 2, gates=(2.0, 2.0, 2.0), key=jax.random.key(0))
    assert float(jnp.abs(drawn.alpha).max()) < 0.1


def test_init_params_refuses_no_gates_with_a_key_to_draw_them():
    with pytest.raises(ValueError, match="init_params: gates=None asks for no gate parameters"):
        neuron.init_params(3, 2, gates=None, key=jax.random.key(0))


def test_glif_step_simulates_online():
    rng = np.random.default_rng(2)
    params = random_params(rng, 7, 6)
    x = random_input(rng, (6, 3, 7))
    coeffs = neuron.coefficients(params, "soft")
    state = neuron.init_state(x.shape[1:])
    spikes = []
    for t in range(6):
        state, spike = neuron.glif_step(state, (x[t], coeffs.input_scale[t]), coeffs)
        spikes.append(spike)
    np.testing.assert_array_equal(jnp.stack(spikes), neuron.glif(params, x))


@pytest.mark.parametrize("implementation", ["scan", "xla"])
def test_jit_and_eager_agree(implementation):
    rng = np.random.default_rng(4)
    params = random_params(rng, 5, 3)
    x = random_input(rng, (3, 4, 5))
    run = functools.partial(neuron.glif, implementation=implementation)
    np.testing.assert_array_equal(jax.jit(run)(params, x), run(params, x))
    jitted_static = jax.jit(neuron.glif, static_argnames=("mode", "surrogate", "implementation"))
    out = jitted_static(params, x, mode="hard", surrogate=surrogates.atan(), implementation="scan")
    np.testing.assert_array_equal(out, run(params, x, mode="hard"))


def test_vmap_over_batch_and_over_parameter_sets():
    rng = np.random.default_rng(6)
    params = random_params(rng, 5, 3)
    x = random_input(rng, (3, 4, 5))
    batched = jax.vmap(lambda xb: neuron.glif(params, xb), in_axes=1, out_axes=1)(x)
    np.testing.assert_array_equal(batched, neuron.glif(params, x))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, random_params(rng, 5, 3))
    per_set = jax.vmap(neuron.glif, in_axes=(0, None))(stacked, x)
    for i in range(2):
        one = jax.tree.map(lambda a, i=i: a[i], stacked)
        np.testing.assert_array_equal(per_set[i], neuron.glif(one, x))
    grads = jax.vmap(jax.grad(lambda p, x: jnp.sum(neuron.glif(p, x) * x)), in_axes=(0, None))(
        stacked, x
    )
    assert grads.alpha.shape == (2, 5)


def test_bfloat16_input_keeps_its_dtype_and_computes_in_float32():
    rng = np.random.default_rng(8)
    params = random_params(rng, 6, 4)
    x = random_input(rng, (4, 5, 6)).astype(jnp.bfloat16)
    spikes, membrane = neuron.glif(params, x, return_membrane=True)
    assert spikes.dtype == jnp.bfloat16 and membrane.dtype == jnp.float32
    np.testing.assert_array_equal(
        spikes.astype(jnp.float32), neuron.glif(params, x.astype(jnp.float32))
    )
    grad = jax.grad(lambda x: jnp.sum(neuron.glif(params, x).astype(jnp.float32)))(x)
    assert grad.dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def params():
    return neuron.init_params(4, 3)


def test_rank_below_two_is_an_error(params):
    with pytest.raises(ValueError, match=r"rank >= 2; got shape \(4,\)"):
        neuron.glif(params, jnp.ones((4,)))


def test_channel_mismatch_is_an_error(params):
    with pytest.raises(ValueError, match=r"5 channels on its last axis .* for 4 channels"):
        neuron.glif(params, jnp.ones((3, 2, 5)))


def test_time_steps_mismatch_is_an_error(params):
    with pytest.raises(ValueError, match=r"T=2 time steps .* 3 rows"):
        neuron.glif(params, jnp.ones((2, 2, 4)))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_boolean_input_is_a_type_error(params, dtype):
    with pytest.raises(TypeError, match="floating-point"):
        neuron.glif(params, jnp.ones((3, 2, 4), dtype))


def test_unknown_mode_surrogate_and_implementation_are_errors(params):
    x = jnp.ones((3, 2, 4))
    with pytest.raises(ValueError, match="unknown GLIF mode 'softer'"):
        neuron.glif(params, x, mode="softer")
    with pytest.raises(ValueError, match="unknown surrogate 'box'"):
        neuron.glif(params, x, surrogate="box")
    with pytest.raises(TypeError, match="surrogate must be"):
        neuron.glif(params, x, surrogate=lambda v: v)
    with pytest.raises(ValueError, match="unknown implementation"):
        neuron.glif(params, x, implementation="cuda")
    with pytest.raises(ValueError, match="implementation='fused' is now 'xla'"):
        neuron.glif(params, x, implementation="fused")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tau": 1.0}, "tau"),
        ({"v_th": 0.0}, "v_th"),
        ({"leak": -0.1}, "leak"),
        ({"v_reset": 1.5}, "v_reset"),
        ({"conduct": 1.0}, "conduct"),
        ({"gates": (0.5, 1.0, 0.5)}, r"gates\[beta\]"),
    ],
)
def test_values_outside_the_unit_interval_are_errors(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must lie in the open interval"):
        neuron.init_params(4, 2, **kwargs)


def test_mismatched_parameter_shapes_are_errors(params):
    broken = params.replace(tau=jnp.zeros((5,)))
    with pytest.raises(ValueError, match=r"params.tau has shape \(5,\), expected \(4,\)"):
        neuron.glif(broken, jnp.ones((3, 2, 4)))


def test_bad_simplex_code_is_an_error():
    with pytest.raises(ValueError, match="three characters"):
        neuron.simplex_params("12", 3, 2)


@pytest.mark.parametrize(
    "implementation", ["scan", kernels.Scan(), kernels.Scan(unroll_max_steps=0)]
)
def test_forward_mode_through_the_scan_path_matches_reverse_mode(implementation):
    params = random_params(np.random.default_rng(9), 3, 4)
    x = random_input(np.random.default_rng(10), (4, 2, 3))
    run = lambda x: neuron.glif(params, x, implementation=implementation)
    np.testing.assert_allclose(jax.jacfwd(run)(x), jax.jacrev(run)(x), rtol=1e-6, atol=1e-7)
