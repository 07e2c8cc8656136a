"""The GLIF layer as a Flax NNX module: learnable parameters over :func:`glif_jax.neuron.glif`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from glif_jax import kernels, neuron, surrogates

__all__ = ["GLIF", "FiringRate"]


class FiringRate(nnx.Intermediate):
    """Mean spike rate of a GLIF layer in one forward pass, recorded when asked (see
    :func:`glif_jax.nn.firing_rates`)."""


class GLIF(nnx.Module):
    """A layer of gated LIF neurons with learnable, channel-wise (or layer-wise) parameters.

    Holds the raw parameters of :class:`glif_jax.neuron.GLIFParams` as ``nnx.Param`` attributes of
    the same names (``alpha, beta, gamma, tau, v_th, leak, v_reset, conduct``; GLIF_f,
    ``mode="fused"``, has no gates) and calls the pure core on ``(T, ..., C)`` inputs.

    Args:
      channels: C, the size of the input's last axis.
      time_steps: T, the number of time steps (rows of ``conduct``).
      channel_wise: one parameter set per channel (the paper's default); ``False`` for one per
        layer (the layer-wise ablation of Table 6).
      mode: a gate mode of :data:`glif_jax.neuron.MODES`.
      surrogate: the spike's surrogate derivative (a surrogate or its name).
      tau, v_th, leak, v_reset, conduct, gates: the initial values, as
        :class:`glif_jax.neuron.InitialValues` (whose defaults these are), checked by
        :func:`glif_jax.neuron.init_params`.
      random_gates: draw the raw gates from U(−0.1, 0.1) (the reference's training default);
        needs ``rngs``.
      detach_reset: stop the gradient through the reset path.
      implementation: the time-loop implementation, a name or a kernel, see
        :func:`glif_jax.neuron.glif`; ``"scan"`` for forward-mode differentiation (``jax.jvp``,
        ``jax.jacfwd``) of the layer, which the kernels refuse with an error naming it.
      rngs: random streams; ``rngs.params`` draws random gates.

    Example::

        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from glif_jax import nn
        >>> layer = nn.GLIF(32, time_steps=4, random_gates=True, rngs=nnx.Rngs(0))
        >>> layer(jnp.ones((4, 2, 8, 8, 32))).shape
        (4, 2, 8, 8, 32)
    """

    def __init__(
        self,
        channels: int,
        time_steps: int,
        *,
        channel_wise: bool = True,
        mode: neuron.Mode = "soft",
        surrogate: surrogates.Surrogate | str = surrogates.rectangle(),
        tau: float = neuron.InitialValues.tau,
        v_th: float = neuron.InitialValues.v_th,
        leak: float | Literal["scaled"] = neuron.InitialValues.leak,
        v_reset: float = neuron.InitialValues.v_reset,
        conduct: float = neuron.InitialValues.conduct,
        gates: Sequence[float] = neuron.InitialValues.gates,
        random_gates: bool = False,
        detach_reset: bool = False,
        implementation: neuron.Implementation | kernels.Kernel = "auto",
        rngs: nnx.Rngs | None = None,
    ):
        neuron.check_mode(mode, "GLIF")
        neuron.check_implementation(implementation, "GLIF")
        gated = mode != "fused"
        key = None
        if random_gates and gated:
            if rngs is None:
                raise ValueError("GLIF: random_gates=True needs rngs (e.g. rngs=nnx.Rngs(0)).")
            key = rngs.params()
        params = neuron.init_params(
            channels if channel_wise else None,
            time_steps,
            tau=tau,
            v_th=v_th,
            leak=leak,
            v_reset=v_reset,
            conduct=conduct,
            gates=gates if gated else None,
            key=key,
        )
        self.channels = channels
        self.time_steps = time_steps
        self.channel_wise = channel_wise
        self.mode = mode
        self.surrogate = surrogates.get(surrogate)
        self.detach_reset = detach_reset
        self.implementation = implementation
        self.record_firing_rate = False
        for name in neuron.PARAM_NAMES:
            value = getattr(params, name)
            setattr(self, name, None if value is None else nnx.Param(value))

    @property
    def params(self) -> neuron.GLIFParams:
        """The current raw parameters as a :class:`glif_jax.neuron.GLIFParams`."""

        def value(name):
            p = getattr(self, name)
            return None if p is None else p[...]

        return neuron.GLIFParams(**{name: value(name) for name in neuron.PARAM_NAMES})

    def __call__(self, x: jax.Array, *, return_membrane: bool = False):
        """Spikes of the input current ``x`` of shape ``(T, ..., C)`` (same shape and dtype).

        With ``return_membrane``, returns ``(spikes, membrane)``.
        """
        out = neuron.glif(
            self.params,
            x,
            mode=self.mode,
            surrogate=self.surrogate,
            return_membrane=return_membrane,
            detach_reset=self.detach_reset,
            implementation=self.implementation,
        )
        if self.record_firing_rate:
            spikes = out[0] if return_membrane else out
            self.sow(FiringRate, "firing_rate", jnp.mean(spikes, dtype=jnp.float32))
        return out
