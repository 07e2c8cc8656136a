"""Fast implementations of the GLIF time loop, behind one contract.

:func:`glif_jax.neuron.glif` holds the neuron's semantics and its reference implementation, a
``lax.scan`` of :func:`~glif_jax.neuron.glif_step` under plain autodiff (``"scan"``). The
implementations here compute the same spikes, membrane and gradients faster, and each is tested
against that reference in values and gradients:

* :class:`Xla` (``"xla"``): one custom VJP over the whole time loop in XLA, keeping only the input
  for the backward pass (:mod:`glif_jax.kernels.xla`, with its CPU tuning in
  :mod:`glif_jax.kernels.xla_cpu`);
* :class:`Pallas` (``"pallas"``): the same computation as Pallas kernels, per device under a mesh
  (:mod:`glif_jax.kernels.pallas`).

The contract (:class:`Kernel`): called as ``kernel(x, coeffs, surrogate=..., detach_reset=...,
return_membrane=...)`` on an input ``(T, ..., C)`` and the per-step update coefficients of
:mod:`glif_jax.kernels.recurrence`, it returns the spikes (and the membrane) and is
differentiable with respect to both in reverse mode (a custom VJP: JAX has no forward mode for
it, so ``jax.jvp`` and ``jax.jacfwd`` need the scan; :func:`differentiable_twice` says which
kernels take second derivatives). What they share, the step functions and the gradient terms, is
:mod:`glif_jax.kernels.recurrence`; :func:`select` is the ``"auto"`` choice between them.

Imports run one way: :mod:`glif_jax.surrogates` → :mod:`~glif_jax.kernels.recurrence` →
the implementations → :mod:`~glif_jax.kernels.select` → :mod:`glif_jax.neuron`.
"""

from __future__ import annotations

from typing import Protocol

import jax

from glif_jax import surrogates
from glif_jax.kernels.pallas import Pallas
from glif_jax.kernels.recurrence import GLIFCoefficients, GradientTerms
from glif_jax.kernels.select import select
from glif_jax.kernels.xla import Xla

__all__ = [
    "KERNELS",
    "GLIFCoefficients",
    "GradientTerms",
    "Kernel",
    "Pallas",
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


KERNELS: dict[str, Kernel] = {"xla": Xla(), "pallas": Pallas()}
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

    A kernel is a custom VJP, so JAX differentiates it in reverse mode only; a second derivative
    differentiates its backward pass too. The XLA kernel's backward pass is ordinary JAX, which
    JAX differentiates like any other. The Pallas kernels' forward and backward passes are Pallas
    calls, which JAX differentiates through their kernel bodies; for these kernels that fails
    inside JAX with an internal error, so :func:`glif_jax.neuron.glif` refuses second derivatives
    through them first, with an error that names the fix.
    """
    return not isinstance(kernel, Pallas)
