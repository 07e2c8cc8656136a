"""Surrogate spike functions: Heaviside forward, closed-form backward, hashable."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glif_jax import surrogates

ALL = [
    surrogates.rectangle(),
    surrogates.rectangle(0.4),
    surrogates.sigmoid(),
    surrogates.sigmoid(2.0),
    surrogates.atan(),
    surrogates.atan(5.0),
    surrogates.triangle(),
    surrogates.triangle(0.3),
    surrogates.superspike(),
    surrogates.superspike(3.0),
]
SMOOTH = [s for s in ALL if not isinstance(s, surrogates.Rectangle | surrogates.Triangle)]
V = jnp.linspace(-2.0, 2.0, 401)


@pytest.mark.parametrize("surrogate", ALL, ids=repr)
def test_forward_is_the_strict_heaviside_step(surrogate):
    v = jnp.array([-1.0, -1e-7, 0.0, 1e-7, 1.0])
    np.testing.assert_array_equal(surrogate(v), [0, 0, 0, 1, 1])


@pytest.mark.parametrize("surrogate", ALL, ids=repr)
def test_backward_is_the_closed_form_derivative(surrogate):
    grad = jax.vmap(jax.grad(surrogate))(V)
    np.testing.assert_allclose(grad, surrogate.derivative(V), rtol=1e-6)


def test_closed_forms():
    v = np.asarray(V, np.float64)
    expected = {
        surrogates.rectangle(): (np.abs(v) < 0.5).astype(float),
        surrogates.rectangle(0.4): (np.abs(v) < 0.2) / 0.4,
        surrogates.sigmoid(2.0): 2 * np.exp(-2 * v) / (1 + np.exp(-2 * v)) ** 2,
        surrogates.atan(2.0): 1 / (1 + (math.pi * v) ** 2),
        surrogates.triangle(0.5): np.maximum(0.5 - np.abs(v), 0) / 0.25,
        surrogates.superspike(10.0): 1 / (1 + 10 * np.abs(v)) ** 2,
    }
    for surrogate, want in expected.items():
        np.testing.assert_allclose(surrogate.derivative(V), want, rtol=2e-6, atol=1e-7)


def test_rectangle_is_the_papers_eq_13_strictly():
    d = surrogates.rectangle().derivative(jnp.array([-0.5, -0.4999, 0.0, 0.4999, 0.5]))
    np.testing.assert_array_equal(d, [0, 1, 1, 1, 0])


@pytest.mark.parametrize("surrogate", SMOOTH, ids=repr)
def test_smooth_derivative_matches_finite_differences_of_primitive(surrogate):
    with jax.enable_x64(True):
        v = jnp.linspace(-2.0, 2.0, 100, dtype=jnp.float64)  # avoids the kink of |v| at 0
        h = 1e-6
        fd = (surrogate.primitive(v + h) - surrogate.primitive(v - h)) / (2 * h)
        np.testing.assert_allclose(surrogate.derivative(v), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("surrogate", [s for s in ALL if s not in SMOOTH], ids=repr)
def test_piecewise_derivative_matches_finite_differences_away_from_kinks(surrogate):
    with jax.enable_x64(True):
        v = jnp.linspace(-1.93, 1.97, 97, dtype=jnp.float64)
        h = 1e-7
        fd = (surrogate.primitive(v + h) - surrogate.primitive(v - h)) / (2 * h)
        np.testing.assert_allclose(surrogate.derivative(v), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("surrogate", ALL, ids=repr)
def test_derivative_integrates_to_the_primitive(surrogate):
    v = np.linspace(-3, 3, 600_001)
    area = np.trapezoid(np.asarray(surrogate.derivative(jnp.asarray(v))), v)
    rise = float(surrogate.primitive(jnp.float32(3)) - surrogate.primitive(jnp.float32(-3)))
    assert math.isclose(area, rise, rel_tol=1e-4)


@pytest.mark.parametrize("surrogate", ALL[:2] + ALL[6:8], ids=repr)
def test_compact_surrogates_have_unit_area(surrogate):
    v = np.linspace(-3, 3, 600_001)
    area = np.trapezoid(np.asarray(surrogate.derivative(jnp.asarray(v))), v)
    assert math.isclose(area, 1.0, rel_tol=1e-4)


def test_surrogates_are_hashable_static_arguments():
    assert hash(surrogates.atan(2.0)) == hash(surrogates.atan(2.0))
    assert surrogates.atan(2.0) == surrogates.atan(2.0) != surrogates.atan(3.0)
    calls = []

    def f(v, surrogate):
        calls.append(surrogate)
        return surrogate(v)

    jitted = jax.jit(f, static_argnums=1)
    jitted(V, surrogates.sigmoid(4.0))
    jitted(V, surrogates.sigmoid(4.0))
    assert len(calls) == 1


def test_get_by_name_and_errors():
    assert surrogates.get("atan", alpha=3.0) == surrogates.ATan(3.0)
    assert surrogates.get("fast_sigmoid") == surrogates.superspike()
    s = surrogates.triangle()
    assert surrogates.get(s) is s
    with pytest.raises(ValueError, match="unknown surrogate 'boxcar'"):
        surrogates.get("boxcar")
    with pytest.raises(TypeError, match="surrogate must be"):
        surrogates.get(3)
    with pytest.raises(ValueError, match="width must be a finite number > 0"):
        surrogates.rectangle(0.0)
    with pytest.raises(TypeError, match="alpha must be a Python number"):
        surrogates.sigmoid("4")
