"""Serialization through ``jax.export``: the public pytrees round-trip, and exported functions of
them, the neuron's and a network's forward pass and gradient, give what the direct call gives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from glif_jax import equations, kernels, models, neuron, surrogates
from tests.support.glif_inputs import random_input, random_params

SHAPE = (3, 2, 4)  # (T, B, C)


def round_trip(function, *args):
    """``function`` exported under ``jax.jit``, serialized, deserialized and called on ``args``."""
    serialized = jax.export.export(jax.jit(function))(*args).serialize()
    return jax.export.deserialize(serialized).call(*args), serialized


def assert_same(got, want, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    return random_params(rng, SHAPE[-1], SHAPE[0]), random_input(rng, SHAPE)


@pytest.mark.parametrize("mode", ["soft", "fused"])
def test_glif_forward_and_gradients_round_trip(mode, data):
    params, x = data
    if mode == "fused":
        # No gates: None fields in the serialized tree.
        params = params.replace(alpha=None, beta=None, gamma=None)

    def forward(params, x):
        return neuron.glif(params, x, mode=mode, return_membrane=True)

    def loss(params, x):
        spikes, membrane = forward(params, x)
        return jnp.sum(spikes * x) + jnp.mean(membrane**2)

    gradient = jax.grad(loss, argnums=(0, 1))
    for function in (forward, gradient):
        got, serialized = round_trip(function, params, x)
        assert_same(got, function(params, x))
    # The gradient with respect to the parameters is a GLIFParams, under its stable name.
    grad_params, _ = got
    assert isinstance(grad_params, neuron.GLIFParams)
    assert b"glif_jax.GLIFParams" in serialized


def test_a_surrogate_is_static_and_exports_inside_the_function(data):
    params, x = data
    gradient = jax.jit(
        jax.grad(lambda params, x, surrogate: neuron.glif(params, x, surrogate=surrogate).sum()),
        static_argnums=2,
    )
    exported = jax.export.export(gradient)(params, x, surrogates.atan())
    restored = jax.export.deserialize(exported.serialize())
    assert_same(restored.call(params, x), gradient(params, x, surrogates.atan()))


def test_every_public_pytree_round_trips(data):
    params, x = data
    coeffs = neuron.coefficients(params)
    state = neuron.init_state(SHAPE[1:])

    def one_step(state, coeffs, x_t, input_scale_t):
        # GLIFState and GLIFCoefficients in, GLIFState out.
        return neuron.glif_step(state, (x_t, input_scale_t), coeffs)

    def terms(x, coeffs):
        # GradientTerms out.
        steps = list(x)
        return equations.gradient_terms(
            steps, steps, None, coeffs, surrogates.rectangle(), detach_reset=False
        )

    cases = [
        (neuron.coefficients, (params,), lambda out: out, equations.GLIFCoefficients),
        (
            one_step,
            (state, coeffs, x[0], coeffs.input_scale[0]),
            lambda out: out[0],
            neuron.GLIFState,
        ),
        (terms, (x, coeffs), lambda out: out, equations.GradientTerms),
    ]
    for function, args, select, kind in cases:
        got, serialized = round_trip(function, *args)
        assert_same(got, function(*args))
        assert isinstance(select(got), kind)
        assert f"glif_jax.{kind.__name__}".encode() in serialized


def test_every_kernel_exports_with_its_gradient(data):
    params, x = data
    for kernel in (kernels.Xla(), kernels.Pallas()):
        if isinstance(kernel, kernels.Pallas) and jax.default_backend() == "gpu":
            continue  # docs/neuron.md: jax.export refuses the Triton call

        def loss(params, x, kernel=kernel):
            return neuron.glif(params, x, implementation=kernel).sum()

        gradient = jax.grad(loss, argnums=(0, 1))
        got, _ = round_trip(gradient, params, x)
        assert_same(got, jax.grad(lambda p, x: loss(p, x, "scan"), argnums=(0, 1))(params, x))


def _small_resnet19():
    # One block per stage: every kind of layer and shortcut of ResNet-19, at half the compile.
    return models.create(
        "resnet19",
        num_classes=10,
        time_steps=2,
        rngs=nnx.Rngs(0),
        stem_channels=8,
        stage_channels=(8, 16, 16),
        stage_repeats=(1, 1, 1),
        head_width=16,
    )


@pytest.mark.slow
def test_resnet19_forward_and_gradient_round_trip():
    # nnx.State holds flax's Variable types, which jax.export cannot serialize, and nnx's pure
    # dicts have integer keys, which it cannot either: the exported functions take the state's
    # leaves and rebuild the state inside (docs/neuron.md).
    model = _small_resnet19()
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    labels = jnp.array([3, 7])

    model.eval()
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    def forward(leaves, images):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(images)

    logits, _ = round_trip(forward, leaves, images)
    assert_same(logits, jax.jit(forward)(leaves, images), rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 10)

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    param_leaves, param_tree = jax.tree.flatten(params)
    rest_leaves, rest_tree = jax.tree.flatten(rest)

    def loss(param_leaves, rest_leaves, images, labels):
        network = nnx.merge(
            graphdef,
            jax.tree.unflatten(param_tree, param_leaves),
            jax.tree.unflatten(rest_tree, rest_leaves),
        )
        logits = network(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    gradient = jax.grad(loss)
    got, _ = round_trip(gradient, param_leaves, rest_leaves, images, labels)
    want = jax.jit(gradient)(param_leaves, rest_leaves, images, labels)
    scale = max(float(jnp.abs(g).max()) for g in want)
    assert scale > 0
    assert_same(got, want, rtol=1e-4, atol=1e-5 * scale)
    # The GLIF thresholds get a gradient through the exported function.
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    thresholds = [g for path, g in zip(paths, got, strict=True) if "'v_th'" in str(path[-2:])]
    assert thresholds and all(float(jnp.abs(g).max()) > 0 for g in thresholds)
