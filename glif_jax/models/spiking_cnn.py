"""A small configurable spiking CNN, for small images such as scikit-learn's 8×8 digits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from glif_jax import nn as gnn
from glif_jax.models import layers

__all__ = ["SpikingCNN"]


class SpikingCNN(nnx.Module):
    """conv3×3 → tdBN → GLIF blocks, 2×2 average pooling after each block until the maps are
    ``pooled_size`` wide, then a bias-free linear head on the flattened spikes of every step;
    logits are the mean over T.

    With the defaults, 8×8×1 digits go 8 → 4 → 2 through channels (32, 64, 128) and the head
    reads 128·2·2 = 512 features.

    Args:
      num_classes: n.
      time_steps: T.
      rngs: random streams.
      channels: the channels of each conv block.
      input_size: the (square) image size; ``input_size / pooled_size`` must be a power of two.
      pooled_size: the width of the last feature maps.
      in_channels: C_in of the images.
      plain_bn, remat, dtype, glif_options: as :class:`~glif_jax.models.SpikingResNet`
        (``remat`` recomputes each layer).

    Example::

        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from glif_jax import models
        >>> net = models.create("spiking_cnn", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros((2, 8, 8, 1))).shape
        (2, 10)
    """

    def __init__(
        self,
        *,
        num_classes: int,
        time_steps: int,
        rngs: nnx.Rngs,
        channels: Sequence[int] = (32, 64, 128),
        input_size: int = 8,
        pooled_size: int = 2,
        in_channels: int = 1,
        plain_bn: bool = False,
        remat: bool = False,
        dtype: Any = jnp.float32,
        **glif_options,
    ):
        self.name = "spiking_cnn"
        build = layers.make_builder(
            self.name,
            num_classes=num_classes,
            time_steps=time_steps,
            glif_options=glif_options,
            plain_bn=plain_bn,
            dtype=dtype,
        )
        pools = 0
        while pooled_size << pools < input_size:
            pools += 1
        if pooled_size << pools != input_size or pools > len(channels) or not channels:
            raise ValueError(
                f"{self.name}: cannot pool {input_size}×{input_size} inputs down to "
                f"{pooled_size}×{pooled_size} with 2×2 poolings after {len(channels)} blocks "
                f"(channels={tuple(channels)}); input_size / pooled_size must be a power of two "
                "no larger than 2**len(channels)."
            )
        self.num_classes = num_classes
        self.time_steps = time_steps
        self.input_size = input_size
        self.in_channels = in_channels
        self.remat = remat
        self.dtype = dtype
        stack, c_in = [], in_channels
        for i, c_out in enumerate(channels):
            stack += [build.conv_bn(c_in, c_out, 3, rngs=rngs), build.glif(c_out, rngs=rngs)]
            if i < pools:
                stack.append(layers.AvgPool())
            c_in = c_out
        self.features = nnx.List(stack)
        self.head = build.linear(c_in * pooled_size * pooled_size, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array, *, per_step: bool = False) -> jax.Array:
        """Logits ``(B, n)`` (or ``(T, B, n)`` with ``per_step``) of images ``(B, H, W, C_in)``."""
        layers.check_input(
            self.name,
            images,
            layout="(B, H, W, C)",
            channels=self.in_channels,
            size=self.input_size,
        )
        x = gnn.direct_encode(images.astype(self.dtype), self.time_steps)
        x = layers.run_layers(self.features, x, remat=self.remat)
        return layers.readout(self.head(layers.flatten_channel_major(x)), per_step)
