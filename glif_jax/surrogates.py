"""Spike functions with surrogate gradients.

A spiking neuron fires when its membrane potential crosses the threshold: the spike is the
Heaviside step ``H(v) = 1 if v > 0 else 0`` (strict) of ``v = u - V_th``. Its derivative is zero
almost everywhere, so training replaces it in the backward pass by a *surrogate derivative*
(Neftci et al., 2019). Each surrogate here is a small frozen dataclass: hashable, so it can be a
static argument of :func:`jax.jit`, and callable, so ``surrogate(v)`` is the spike::

    >>> import jax.numpy as jnp
    >>> from glif_jax import surrogates
    >>> spike = surrogates.rectangle()
    >>> spike(jnp.array([-0.2, 0.0, 0.3]))
    Array([0., 0., 1.], dtype=float32)

Every surrogate has the same forward pass; they differ only in :meth:`Surrogate.derivative`,
the closed form used by the backward pass, and in :meth:`Surrogate.primitive`, the smooth (or
piecewise-linear) function whose derivative it is.

The default, :func:`rectangle` with width 1, is the paper's Eq. 13, ``dH/dv = H(0.5 - |v|)``, and
the reference code's ``SpikeAct_extended``: derivative 1 on ``|v| < 0.5`` (strict), 0 elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

__all__ = [
    "ATan",
    "Rectangle",
    "Sigmoid",
    "SuperSpike",
    "Surrogate",
    "Triangle",
    "atan",
    "fast_sigmoid",
    "get",
    "names",
    "rectangle",
    "sigmoid",
    "spike",
    "superspike",
    "triangle",
]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(v: jax.Array, surrogate: Surrogate) -> jax.Array:
    """Heaviside step ``H(v)`` (strict: ``H(0) = 0``) with ``surrogate``'s derivative as gradient.

    The surrogate is a custom JVP, tangent ``surrogate.derivative(v) · dv``, so that forward mode
    (``jax.jvp``, ``jax.jacfwd``) works as well as reverse mode, which JAX derives from it.

    Args:
      v: membrane potential minus threshold, any shape, floating dtype.
      surrogate: a :class:`Surrogate`; only its derivative is used, in differentiation.

    Returns:
      ``(v > 0)`` in ``v``'s dtype and shape.
    """
    return (v > 0).astype(v.dtype)


@spike.defjvp
def _spike_jvp(surrogate, primals, tangents):
    (v,), (dv,) = primals, tangents
    return spike(v, surrogate), surrogate.derivative(v).astype(dv.dtype) * dv


def _check_positive(function: str, name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{function}: {name} must be a Python number, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{function}: {name} must be a finite number > 0, got {value!r}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """Base class: the Heaviside forward pass and a surrogate derivative for the backward pass.

    Subclasses are frozen dataclasses whose fields are the surrogate's width or sharpness; they
    implement :meth:`derivative` and :meth:`primitive`. A surrogate is a hashable value, not a
    pytree: pass it to a jitted function as a static argument (``static_argnums``) or close over
    it, and :func:`jax.export.export` holds it in the exported function.
    """

    def __call__(self, v: jax.Array) -> jax.Array:
        return spike(v, self)

    def derivative(self, v: jax.Array) -> jax.Array:
        """The surrogate ``dH/dv`` evaluated at ``v`` (same shape and dtype)."""
        raise NotImplementedError

    def primitive(self, v: jax.Array) -> jax.Array:
        """A function of ``v`` whose derivative is :meth:`derivative` (for plots and checks)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Rectangle(Surrogate):
    """Boxcar derivative ``1[|v| < width/2] / width`` (unit area).

    At ``width=1`` this is the paper's Eq. 13 and the reference code: derivative 1 for
    ``|v| < 0.5``, strictly.
    """

    width: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "width", _check_positive("rectangle", "width", self.width))

    def derivative(self, v):
        inside = jnp.abs(v) < self.width / 2
        return inside.astype(v.dtype) / jnp.asarray(self.width, v.dtype)

    def primitive(self, v):
        return jnp.clip(v / self.width + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Derivative of the logistic ``σ(alpha·v)``: ``alpha·σ(alpha·v)·(1 − σ(alpha·v))``."""

    alpha: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", _check_positive("sigmoid", "alpha", self.alpha))

    def derivative(self, v):
        s = jax.nn.sigmoid(self.alpha * v)
        return self.alpha * s * (1 - s)

    def primitive(self, v):
        return jax.nn.sigmoid(self.alpha * v)


@dataclasses.dataclass(frozen=True)
class ATan(Surrogate):
    """Arc-tangent surrogate (Fang et al., 2021): primitive ``arctan(π/2·alpha·v)/π + 1/2``.

    Derivative ``(alpha/2) / (1 + (π/2·alpha·v)²)``, peak ``alpha/2`` at ``v = 0``, unit area.
    """

    alpha: float = 2.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", _check_positive("atan", "alpha", self.alpha))

    def derivative(self, v):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * v) ** 2)

    def primitive(self, v):
        return jnp.arctan(math.pi / 2 * self.alpha * v) / math.pi + 0.5


@dataclasses.dataclass(frozen=True)
class Triangle(Surrogate):
    """Triangular derivative ``max(width − |v|, 0) / width²`` (unit area, support ``|v| < width``).

    At ``width=1`` this is the triangle left commented out in the reference code.
    """

    width: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "width", _check_positive("triangle", "width", self.width))

    def derivative(self, v):
        return jnp.maximum(self.width - jnp.abs(v), 0) / self.width**2

    def primitive(self, v):
        w = self.width
        c = jnp.clip(v, -w, w)
        rising = (c + w) ** 2 / (2 * w**2)
        falling = 1 - (w - c) ** 2 / (2 * w**2)
        return jnp.where(c < 0, rising, falling)


@dataclasses.dataclass(frozen=True)
class SuperSpike(Surrogate):
    """SuperSpike / fast-sigmoid (Zenke & Ganguli, 2018): derivative ``1 / (1 + beta·|v|)²``.

    Primitive ``v / (1 + beta·|v|)``; peak 1 at ``v = 0``.
    """

    beta: float = 10.0

    def __post_init__(self):
        object.__setattr__(self, "beta", _check_positive("superspike", "beta", self.beta))

    def derivative(self, v):
        return 1 / (1 + self.beta * jnp.abs(v)) ** 2

    def primitive(self, v):
        return v / (1 + self.beta * jnp.abs(v))


def rectangle(width: float = 1.0) -> Rectangle:
    """The reference's surrogate (paper Eq. 13): derivative ``1[|v| < width/2] / width``."""
    return Rectangle(width)


def sigmoid(alpha: float = 4.0) -> Sigmoid:
    """Sigmoid surrogate with sharpness ``alpha``."""
    return Sigmoid(alpha)


def atan(alpha: float = 2.0) -> ATan:
    """Arc-tangent surrogate with sharpness ``alpha``."""
    return ATan(alpha)


def triangle(width: float = 1.0) -> Triangle:
    """Triangle surrogate with half-width ``width``."""
    return Triangle(width)


def superspike(beta: float = 10.0) -> SuperSpike:
    """SuperSpike / fast-sigmoid surrogate with sharpness ``beta``."""
    return SuperSpike(beta)


fast_sigmoid = superspike

_FACTORIES = {
    "rectangle": rectangle,
    "sigmoid": sigmoid,
    "atan": atan,
    "triangle": triangle,
    "superspike": superspike,
    "fast_sigmoid": superspike,
}


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts."""
    return tuple(_FACTORIES)


def get(surrogate: str | Surrogate, **kwargs: float) -> Surrogate:
    """A surrogate from its name (``"atan"``) and parameters, or a :class:`Surrogate` as given.

    Args:
      surrogate: one of :func:`names`, or a :class:`Surrogate` instance (returned unchanged).
      **kwargs: the factory's width or sharpness, e.g. ``get("atan", alpha=4.0)``.

    Raises:
      ValueError: for an unknown name.
      TypeError: for anything that is neither a name nor a :class:`Surrogate`.
    """
    if isinstance(surrogate, Surrogate):
        if kwargs:
            raise ValueError(
                f"surrogates.get: parameters {sorted(kwargs)} given with an already built "
                f"surrogate {surrogate!r}; pass a name instead."
            )
        return surrogate
    if not isinstance(surrogate, str):
        raise TypeError(
            f"surrogate must be a glif_jax.surrogates.Surrogate or one of {names()}, "
            f"got {surrogate!r} of type {type(surrogate).__name__}."
        )
    try:
        factory = _FACTORIES[surrogate]
    except KeyError:
        raise ValueError(f"unknown surrogate {surrogate!r}; expected one of {names()}.") from None
    return factory(**kwargs)
