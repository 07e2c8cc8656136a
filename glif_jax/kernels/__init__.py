"""The implementations of the GLIF time loop, behind one contract.

:func:`glif_jax.neuron.glif` holds the neuron's semantics and runs its time loop through one of
these, by name (``implementation="scan"``) or as an instance with its own settings:

* :class:`Scan` (``"scan"``): the reference, a ``lax.scan`` of
  :func:`~glif_jax.equations.glif_step` under plain autodiff, which JAX differentiates in every
  mode and to any order;
* :class:`Xla` (``"xla"``): one custom VJP over the whole time loop in XLA, keeping only the input
  for the backward pass (with its own tuning for XLA:CPU);
* :class:`Pallas` (``"pallas"``): the same computation as Pallas kernels, per device under a mesh.

The contract (:class:`Kernel`): called as ``kernel(x, coeffs, surrogate=..., detach_reset=...,
return_membrane=...)`` on an input ``(T, ..., C)`` and the per-step update coefficients
(:class:`GLIFCoefficients`), it returns the spikes (and the membrane) and is differentiable with
respect to both in reverse mode. Every implementation reads the neuron's equations from
:mod:`glif_jax.equations` and nothing of the others. The fast ones are tested against the scan in
values and gradients; they are custom VJPs, which JAX has no forward mode for, so ``jax.jvp`` and
``jax.jacfwd`` need the scan, and :func:`differentiable_twice` says which take second derivatives.
:func:`select` is the ``"auto"`` choice between them.

Imports run one way: :mod:`glif_jax.surrogates` → :mod:`glif_jax.equations` → the
implementations → :func:`select` → :mod:`glif_jax.neuron`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import jax

from glif_jax import equations, surrogates
from glif_jax.equations import GLIFCoefficients, GradientTerms
from glif_jax.kernels.pallas import Pallas
from glif_jax.kernels.select import select
from glif_jax.kernels.xla import Xla

__all__ = [
    "KERNELS",
    "GLIFCoefficients",
    "GradientTerms",
    "Kernel",
    "Pallas",
    "Scan",
    "Xla",
    "differentiable_twice",
    "get",
    "select",
]


class Kernel(Protocol):
    """An implementation of the GLIF time loop.

    Attributes:
      name: the name :func:`glif_jax.neuron.glif` knows it by (``implementation=name``).
    """

    name: str

    def __call__(
        self,
        x: jax.Array,
        coeffs: GLIFCoefficients,
        *,
        surrogate: surrogates.Surrogate,
        detach_reset: bool,
        return_membrane: bool,
    ):
        """The spikes ``(T, ..., C)`` in ``x``'s dtype, and with ``return_membrane`` also the
        membrane (before reset) in the coefficients' dtype; differentiable with respect to ``x``
        and ``coeffs``."""
        ...


@dataclasses.dataclass(frozen=True)
class Scan:
    """The reference implementation of the GLIF time loop: :func:`~glif_jax.equations.glif_step`
    run over time by ``lax.scan``, under plain autodiff.

    JAX differentiates it as any other function, in forward and reverse mode and to any order; its
    backward pass keeps the residuals of every step (12 bytes per neuron and step in float32).

    Attributes:
      unroll_max_steps: the longest T whose loop is unrolled, so that XLA fuses across the short T
        of vision networks; a rolled ``lax.scan`` beyond.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from glif_jax import neuron, kernels
      >>> params = neuron.init_params(16, 4, key=jax.random.key(0))
      >>> x = jnp.ones((4, 8, 16))
      >>> spikes = neuron.glif(params, x, implementation=kernels.Scan())
      >>> bool((spikes == neuron.glif(params, x, implementation="scan")).all())
      True
    """

    name: ClassVar[str] = "scan"
    unroll_max_steps: int = 8

    def __call__(
        self,
        x: jax.Array,
        coeffs: GLIFCoefficients,
        *,
        surrogate: surrogates.Surrogate,
        detach_reset: bool,
        return_membrane: bool,
    ):
        """Spikes ``(T, ..., C)`` in ``x``'s dtype, and with ``return_membrane`` the membrane in
        the coefficients' dtype; differentiable with respect to ``x`` and ``coeffs``."""

        def step(state, inputs):
            state, spike = equations.glif_step(
                state, inputs, coeffs, surrogate=surrogate, detach_reset=detach_reset
            )
            return state, (spike, state.membrane)

        dtype = coeffs.v_th.dtype
        _, (spikes, membrane) = jax.lax.scan(
            step,
            equations.init_state(x.shape[1:], dtype),
            (x.astype(dtype), coeffs.input_scale),
            unroll=x.shape[0] <= self.unroll_max_steps,
        )
        spikes = spikes.astype(x.dtype)
        return (spikes, membrane) if return_membrane else spikes


KERNELS: dict[str, Kernel] = {"scan": Scan(), "xla": Xla(), "pallas": Pallas()}
"""The implementations by name, each with its default settings."""


def get(implementation: str | Kernel) -> Kernel:
    """The kernel named ``implementation`` (a key of :data:`KERNELS`), or ``implementation``
    itself when it is a kernel (e.g. ``Pallas(block_rows=32)``).

    Raises:
      ValueError: an unknown name.
    """
    if isinstance(implementation, str):
        if implementation not in KERNELS:
            raise ValueError(
                f"unknown kernel {implementation!r}; expected one of {sorted(KERNELS)}."
            )
        return KERNELS[implementation]
    return implementation


def differentiable_twice(kernel: Kernel) -> bool:
    """Whether second derivatives (``jax.hessian``, Hessian-vector products, the gradient of a
    gradient) may run through ``kernel``.

    The scan is plain JAX, which JAX differentiates to any order. The other kernels are custom
    VJPs, so JAX differentiates them in reverse mode only, and a second derivative differentiates
    their backward pass too. The XLA kernel's backward pass is ordinary JAX, which JAX
    differentiates like any other. The Pallas kernels' forward and backward passes are Pallas
    calls, which JAX differentiates through their kernel bodies; for these kernels that fails
    inside JAX with an internal error, so :func:`glif_jax.neuron.glif` refuses second derivatives
    through them first, with an error that names the fix.
    """
    return not isinstance(kernel, Pallas)
