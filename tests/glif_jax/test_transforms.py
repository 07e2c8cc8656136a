"""Every JAX transformation against every implementation of the time loop: the table of
docs/neuron.md ("JAX transformations"), one test per cell.

A supported cell computes the transformation through the implementation and through an independent
one and compares the values: the scan reference for the kernels; for the scan itself the XLA kernel,
through reverse mode where the scan's cell is forward mode (its Jacobian-vector product against the
XLA kernel's Jacobian, built row by row in reverse). A refused cell checks that the error is one
line and names the implementation that takes the transformation. ``"auto"`` runs, and is expected
to behave as, the implementation :func:`glif_jax.kernels.select` picks on this backend. The Pallas
kernels run in Pallas's interpreter on the CPU.
"""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glif_jax import kernels, neuron, surrogates
from glif_jax import nn as gnn
from tests.support.glif_inputs import random_input, random_params

SHAPE = (3, 2, 4)  # (T, B, C)
# A smooth surrogate, so that second derivatives have more than the products of first ones.
SURROGATE = surrogates.sigmoid()

OK = "ok"
FORWARD_MODE = "forward-mode error"
SECOND_ORDER = "second-order error"
TRITON = "jax.export refuses the Triton call"

TRANSFORMS = (
    "grad",
    "vjp",
    "jvp",
    "jacfwd",
    "jacrev",
    "hessian",
    "vmap",
    "jit",
    "checkpoint",
    "export",
)

# The table of docs/neuron.md; on a GPU one cell differs, below.
SUPPORT = {
    "scan": dict.fromkeys(TRANSFORMS, OK),
    "xla": {**dict.fromkeys(TRANSFORMS, OK), "jvp": FORWARD_MODE, "jacfwd": FORWARD_MODE},
    "pallas": {
        **dict.fromkeys(TRANSFORMS, OK),
        "jvp": FORWARD_MODE,
        "jacfwd": FORWARD_MODE,
        "hessian": SECOND_ORDER,
    },
}
if jax.default_backend() == "gpu":
    # Compiled through Triton on a GPU, the Pallas kernels are a custom call that jax.export
    # refuses to serialize (it has no compatibility guarantee).
    SUPPORT["pallas"]["export"] = TRITON

IMPLEMENTATIONS = ("scan", "xla", "pallas", "auto")

# What each refusal must name: the implementation to use instead.
FIXES = {
    FORWARD_MODE: 'implementation="scan"',
    SECOND_ORDER: 'implementation="xla" or "scan"',
}


def resolved(implementation: str) -> str:
    if implementation != "auto":
        return implementation
    return kernels.select(SHAPE, jnp.float32, jnp.float32)


def expected(transform: str, implementation: str) -> str:
    return SUPPORT[resolved(implementation)][transform]


@pytest.fixture(scope="module")
def inputs():
    return _inputs()


@functools.cache
def _inputs():
    rng = np.random.default_rng(11)
    params = random_params(rng, SHAPE[-1], SHAPE[0])
    x = random_input(rng, SHAPE)
    weights = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    # A second input and a second parameter set, for vmap.
    batch = (random_params(rng, SHAPE[-1], SHAPE[0]), random_input(rng, SHAPE))
    tangents = (
        jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params),
        jnp.asarray(rng.normal(size=SHAPE), jnp.float32),
    )
    cotangents = (
        jnp.asarray(rng.normal(size=SHAPE), jnp.float32),
        jnp.asarray(rng.normal(size=SHAPE), jnp.float32),
    )
    return dict(
        params=params,
        x=x,
        weights=weights,
        batch=batch,
        tangents=tangents,
        cotangents=cotangents,
    )


def outputs(implementation):
    """The spikes and the membrane of ``glif`` through ``implementation``."""

    def f(params, x):
        return neuron.glif(
            params, x, surrogate=SURROGATE, return_membrane=True, implementation=implementation
        )

    return f


def loss(implementation, weights):
    """A scalar that reads both outputs, the membrane non-linearly."""
    f = outputs(implementation)

    def value(params, x):
        spikes, membrane = f(params, x)
        return jnp.sum(spikes * weights) + jnp.mean(membrane**2)

    return value


def jacobian_vector_product(jacobian, tangents):
    """The product of a Jacobian from ``jax.jacrev(f, argnums=(0, 1))`` with ``tangents``."""

    def contract(block):
        return sum(
            jnp.tensordot(j, t, axes=t.ndim)
            for j, t in zip(jax.tree.leaves(block), jax.tree.leaves(tangents), strict=True)
        )

    return tuple(contract(block) for block in jacobian)


def apply(transform: str, implementation, data):
    """The result of ``transform`` through ``implementation``."""
    params, x = data["params"], data["x"]
    f = outputs(implementation)
    scalar = loss(implementation, data["weights"])
    if transform == "grad":
        return jax.grad(scalar, argnums=(0, 1))(params, x)
    if transform == "vjp":
        out, pullback = jax.vjp(f, params, x)
        return out, pullback(data["cotangents"])
    if transform == "jvp":
        return jax.jvp(f, (params, x), data["tangents"])
    if transform == "jacfwd":
        return jax.jacfwd(f, argnums=(0, 1))(params, x)
    if transform == "jacrev":
        return jax.jacrev(f, argnums=(0, 1))(params, x)
    if transform == "hessian":
        # With respect to x only: the Hessian in the parameters takes the same paths, and
        # compiles for many seconds more.
        return jax.hessian(scalar, argnums=1)(params, x)
    if transform == "vmap":
        more_params, more_x = data["batch"]
        stacked_params = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, more_params)
        stacked_x = jnp.stack([x, more_x])
        over_inputs = jax.vmap(f, in_axes=(None, 0))(params, stacked_x)
        over_both = jax.vmap(jax.grad(scalar, argnums=(0, 1)))(stacked_params, stacked_x)
        return over_inputs, over_both
    if transform == "jit":
        return jax.jit(f)(params, x), jax.jit(jax.grad(scalar, argnums=(0, 1)))(params, x)
    if transform == "checkpoint":
        return jax.grad(jax.checkpoint(scalar), argnums=(0, 1))(params, x)
    if transform == "export":

        def round_trip(function):
            exported = jax.export.export(jax.jit(function))(params, x)
            return jax.export.deserialize(exported.serialize()).call(params, x)

        return round_trip(f), round_trip(jax.grad(scalar, argnums=(0, 1)))
    raise AssertionError(transform)


def reference(transform: str, implementation: str, data):
    """The same result through an independent implementation (see the module docstring)."""
    assert data is _inputs()
    return _reference(transform, implementation == "scan")


@functools.cache
def _reference(transform: str, of_the_scan: bool):
    data = _inputs()
    if not of_the_scan:
        return apply(transform, "scan", data)
    if transform == "jvp":
        params, x = data["params"], data["x"]
        jacobian = jax.jacrev(outputs("xla"), argnums=(0, 1))(params, x)
        return outputs("xla")(params, x), jacobian_vector_product(jacobian, data["tangents"])
    if transform == "jacfwd":
        return apply("jacrev", "xla", data)
    return apply(transform, "xla", data)


def assert_close(got, want):
    got, want = jax.device_get((got, want))
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-5)


def assert_refused(outcome: str, error: Exception):
    message = str(error)
    assert "\n" not in message, message
    assert FIXES[outcome] in message, message


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transformation_through_the_implementation(transform, implementation, inputs):
    outcome = expected(transform, implementation)
    if outcome == OK:
        assert_close(
            apply(transform, implementation, inputs),
            reference(transform, implementation, inputs),
        )
    elif outcome == TRITON:
        with pytest.raises(ValueError, match="custom calls"):
            apply(transform, implementation, inputs)
    else:
        with pytest.raises(TypeError) as raised:
            apply(transform, implementation, inputs)
        assert_refused(outcome, raised.value)


def test_the_cases_spike_and_have_a_second_derivative(inputs):
    spikes, _ = outputs("scan")(inputs["params"], inputs["x"])
    assert 0 < float(jnp.mean(spikes)) < 1
    hessian = apply("hessian", "scan", inputs)
    assert float(jnp.abs(hessian).max()) > 0


@pytest.mark.parametrize(
    "kernel, name",
    [
        (kernels.Xla(), "Xla"),
        (kernels.Pallas(), "Pallas"),
        (kernels.Pallas(block_rows=8), "Pallas"),
    ],
)
@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "hessian"])
def test_kernel_instances_behave_as_their_names(kernel, name, transform, inputs):
    outcome = SUPPORT[kernel.name][transform]
    if outcome == OK:
        assert_close(apply(transform, kernel, inputs), reference(transform, kernel.name, inputs))
        return
    with pytest.raises(TypeError) as raised:
        apply(transform, kernel, inputs)
    assert_refused(outcome, raised.value)
    assert f"implementation={name}(...)" in str(raised.value)


@pytest.mark.parametrize("implementation", ["xla", "pallas", "auto"])
def test_refusals_under_jit_name_the_implementation(implementation, inputs):
    params, x = inputs["params"], inputs["x"]
    f = outputs(implementation)
    with pytest.raises(TypeError) as raised:
        jax.jit(jax.jacfwd(f, argnums=1))(params, x)
    assert_refused(FORWARD_MODE, raised.value)
    assert f"implementation={implementation!r}" in str(raised.value)
    if expected("hessian", implementation) == SECOND_ORDER:
        scalar = loss(implementation, inputs["weights"])

        def of_x(x):
            return scalar(params, x)

        gradient_of_gradient = jax.grad(lambda x: jnp.sum(jax.grad(of_x)(x)))
        for second_order in (jax.hessian(jax.jit(of_x)), jax.jit(gradient_of_gradient)):
            with pytest.raises(TypeError) as raised:
                second_order(x)
            assert_refused(SECOND_ORDER, raised.value)


def test_forward_mode_that_meets_a_kernel_only_when_compiling_fails_in_jax_words(inputs):
    # docs/neuron.md: inside jax.jit, jax.jvp reaches the custom VJP only when XLA compiles it,
    # outside glif; JAX then raises its own message (the fix is the same).
    params, x = inputs["params"], inputs["x"]
    f = outputs("xla")
    with pytest.raises(TypeError, match=re.escape("forward-mode autodiff (jvp)")):
        jax.jit(lambda x: jax.jvp(lambda x: f(params, x), (x,), (x,)))(x)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "hessian"])
def test_glif_module_takes_the_transformations_of_its_implementation(
    transform, implementation, inputs
):
    def pure(implementation):
        layer = gnn.GLIF(
            SHAPE[-1],
            SHAPE[0],
            surrogate=SURROGATE,
            random_gates=True,
            implementation=implementation,
            rngs=nnx.Rngs(3),
        )
        graphdef, state = nnx.split(layer)

        def f(x):
            return jnp.sum(nnx.merge(graphdef, state)(x) * inputs["weights"])

        return f

    x, dx = inputs["x"], inputs["tangents"][1]
    run = {
        "jvp": lambda f, x: jax.jvp(f, (x,), (dx,)),
        "jacfwd": lambda f, x: jax.jacfwd(f)(x),
        "hessian": lambda f, x: jax.hessian(f)(x),
    }[transform]
    outcome = expected(transform, implementation)
    if outcome != OK:
        with pytest.raises(TypeError) as raised:
            run(pure(implementation), x)
        assert_refused(outcome, raised.value)
        return
    got = run(pure(implementation), x)
    if implementation == "scan" and transform != "hessian":
        # Forward mode of the scan against the XLA kernel's reverse-mode gradient.
        value, gradient = jax.value_and_grad(pure("xla"))(x)
        want = (value, jnp.sum(gradient * dx)) if transform == "jvp" else gradient
    else:
        independent = "xla" if implementation == "scan" else "scan"
        want = run(pure(independent), x)
    assert_close(got, want)
