"""CIFARNet (docs/reference.md §3.4): a plain spiking VGG-like network, three linear layers on
top."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from glif_jax import nn as gnn
from glif_jax.models import layers

__all__ = ["CIFARNet"]

CIFARNET_FEATURES = (128, 256, "A", 512, "A", 1024, 512)
"""The reference's feature configuration: a number is conv3×3 → tdBN(1) → GLIF with that many
channels, ``"A"`` a 2×2 average pooling of the spikes."""


class CIFARNet(nnx.Module):
    """CIFARNet: conv-tdBN-GLIF layers with two average poolings, then three bias-free linears
    (no nonlinearity between them) on the flattened spikes of every step; logits are the mean over
    T.

    Args:
      num_classes: n.
      time_steps: T.
      rngs: random streams.
      features: the feature configuration (default :data:`CIFARNET_FEATURES`).
      classifier_widths: the hidden widths of the classifier.
      input_size: the (square) image size; it sets the first linear's input, C·(size/4)².
      in_channels: C_in of the images.
      plain_bn, remat, dtype, glif_options: as :class:`~glif_jax.models.SpikingResNet`
        (``remat`` recomputes each feature layer).

    Attributes:
      features: the layers in the reference's order (``ConvBN``, ``GLIF`` or ``AvgPool``), so that
        ``features[i]`` is the reference's ``features.i``.
      classifier: the linears (reference ``classifier.i``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        time_steps: int,
        rngs: nnx.Rngs,
        features: Sequence[int | str] = CIFARNET_FEATURES,
        classifier_widths: Sequence[int] = (1024, 512),
        input_size: int = 32,
        in_channels: int = 3,
        plain_bn: bool = False,
        remat: bool = False,
        dtype: Any = jnp.float32,
        **glif_options,
    ):
        self.name = "cifarnet"
        build = layers.make_builder(
            self.name,
            num_classes=num_classes,
            time_steps=time_steps,
            glif_options=glif_options,
            plain_bn=plain_bn,
            dtype=dtype,
        )
        self.num_classes = num_classes
        self.time_steps = time_steps
        self.input_size = input_size
        self.in_channels = in_channels
        self.remat = remat
        self.dtype = dtype
        stack, channels, size = [], in_channels, input_size
        for v in features:
            if v == "A":
                stack.append(layers.AvgPool())
                size //= 2
            else:
                c_out = int(v)
                stack += [
                    build.conv_bn(channels, c_out, 3, rngs=rngs),
                    build.glif(c_out, rngs=rngs),
                ]
                channels = c_out
        self.features = nnx.List(stack)
        widths = (channels * size * size, *classifier_widths, num_classes)
        self.classifier = build.linears(widths, rngs=rngs)

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
        logits = layers.run_layers(self.classifier, layers.flatten_channel_major(x))
        return layers.readout(logits, per_step)
