"""Threshold-dependent batch normalisation (tdBN, Zheng et al., AAAI 2021), as in the reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["TDBatchNorm"]


class TDBatchNorm(nnx.Module):
    """tdBN: batch normalisation over time, batch and space, scaled by ``alpha·V_th``.

    In training (``use_running_average=False``), for an input of shape ``(..., C)`` (time-major
    ``(T, B, H, W, C)`` or time folded into the batch; every axis but the last is reduced)::

        μ = mean(x),  σ² = mean((x − μ)²)                    over all n = T·B·H·W values per channel
        y = alpha·V_th·(x − μ) / sqrt(σ² + eps) · scale + bias
        mean ← momentum·μ + (1 − momentum)·mean
        var  ← momentum·σ²·n/(n − 1) + (1 − momentum)·var      (the unbiased estimate)

    In evaluation (``use_running_average=True``) the running ``mean`` and ``var`` replace μ and σ².
    ``V_th`` is the constant 0.5 of the reference, not a neuron's learned threshold. With
    ``plain=True`` the ``alpha·V_th`` factor is dropped: ordinary BatchNorm with torch's conventions
    (the CIFAR10-DVS nets, and the released ImageNet checkpoint whose tdBN layers were trained as
    plain BN). Statistics are computed in float32 whatever the input dtype.

    ``model.train()`` and ``model.eval()`` switch the mode, as for ``nnx.BatchNorm``. Under
    data-parallel ``jit`` the mean runs over the global batch.

    Args:
      num_features: C.
      alpha: the tdBN factor: 1 after a block's first conv and in the stem, 1/√2 after its second
        conv and on its shortcut.
      v_th: the constant threshold of the scale (0.5).
      eps: added to the variance.
      momentum: weight of the new batch statistics in the running averages (torch convention).
      plain: drop the ``alpha·v_th`` factor.
      use_running_average: start in evaluation mode.
      rngs: unused; accepted so that every layer is built the same way.
    """

    def __init__(
        self,
        num_features: int,
        *,
        alpha: float = 1.0,
        v_th: float = 0.5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        plain: bool = False,
        use_running_average: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.num_features = num_features
        self.alpha = alpha
        self.v_th = v_th
        self.eps = eps
        self.momentum = momentum
        self.plain = plain
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"TDBatchNorm: expected a channel-last input (..., {self.num_features}), "
                f"got shape {tuple(x.shape)}."
            )
        xf = x.astype(jnp.float64 if x.dtype == jnp.float64 else jnp.float32)
        axes = tuple(range(x.ndim - 1))
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            n = math.prod(x.shape[:-1])
            m = self.momentum
            stats_mean = jax.lax.stop_gradient(mean)
            stats_var = jax.lax.stop_gradient(var)
            # Whole replacements (set_value, not [...] =): an indexed write compares the new
            # value's sharding, which a tracer computes only by building an error message, at a
            # cost that dominated tracing the networks in training mode.
            self.mean.set_value(m * stats_mean + (1 - m) * self.mean[...])
            self.var.set_value(m * stats_var * n / max(n - 1, 1) + (1 - m) * self.var[...])
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        centred = xf - mean
        if not self.plain:
            # The reference multiplies before dividing: alpha·V_th·(x − μ) / sqrt(σ² + eps).
            centred = jnp.float32(self.alpha) * jnp.float32(self.v_th) * centred
        y = centred / jnp.sqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)
