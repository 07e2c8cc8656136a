"""The CIFAR10-DVS "7B-wideNet" (docs/reference.md §3.7): a SEW-ResNet of GLIF neurons, plain BN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from glif_jax import nn as gnn
from glif_jax.models import layers
from glif_jax.models.blocks import SEWBlock

__all__ = ["DVS_NEURON", "SEW_7B_WIDENET", "SEWResNet"]

SEW_7B_WIDENET = (
    (64, False),
    (64, False),
    (64, False),
    (64, True),
    (128, True),
    (128, True),
    (128, True),
)
"""The reference's ``layer_list`` of ``SEWResNet_GLIF_dsr``: per entry, the channels of one SEW
block (preceded by a conv1×1-BN-GLIF when the channels change) and whether a 2×2 average pooling
follows it."""

DVS_NEURON = dict(tau=0.5, v_th=0.99999, leak=0.99999 / 32, v_reset=0.99999, conduct=0.9)
"""The GLIF constants of the CIFAR10-DVS code (docs/reference.md §1.9): ℓ = V_th/(2·16)."""


class SEWResNet(nnx.Module):
    """A SEW-ResNet of GLIF neurons for event frames (the CIFAR10-DVS network of the paper).

    Every conv is followed by plain BatchNorm (statistics over T·B·H·W, no tdBN factor) and a GLIF
    layer; blocks add their input (SEW ADD); the spikes of every step are flattened, averaged over
    T, and one linear layer with bias gives the logits (docs/reference.md §2.4). Convs and the
    linear use PyTorch's default initialisation, as the reference; the GLIF constants default to
    :data:`DVS_NEURON` with random gates (float32, unlike the reference's float64 ones).

    Args:
      num_classes: n.
      time_steps: T, the number of frames of each sample.
      rngs: random streams.
      layer_list: the blocks (default :data:`SEW_7B_WIDENET`).
      input_size: the (square) frame size (48 for the paper's 48×48 frames); it sets the linear
        layer's input, C·(size/2^pools)².
      in_channels: polarities per frame.
      remat, dtype, glif_options: as :class:`~glif_jax.models.SpikingResNet` (``remat``
        recomputes each layer of ``conv``); GLIF options override :data:`DVS_NEURON`.

    Attributes:
      conv: the layers in the reference's order (``ConvBNGLIF``, ``SEWBlock`` or ``AvgPool``),
        so that ``conv[i]`` is the reference's ``conv.i``.
      out: the linear classifier (reference ``out``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        time_steps: int,
        rngs: nnx.Rngs,
        layer_list: Sequence[tuple[int, bool]] = SEW_7B_WIDENET,
        input_size: int = 48,
        in_channels: int = 2,
        remat: bool = False,
        dtype: Any = jnp.float32,
        **glif_options,
    ):
        self.name = "sew_7b_widenet"
        build = layers.make_builder(
            self.name,
            num_classes=num_classes,
            time_steps=time_steps,
            glif_options={**DVS_NEURON, **glif_options},
            plain_bn=True,
            dtype=dtype,
            init="torch",
        )
        self.num_classes = num_classes
        self.time_steps = time_steps
        self.input_size = input_size
        self.in_channels = in_channels
        self.remat = remat
        self.dtype = dtype
        stack, c_in, size = [], in_channels, input_size
        for channels, pool in layer_list:
            if channels != c_in:
                stack.append(build.conv_bn_glif(c_in, channels, 1, rngs=rngs))
                c_in = channels
            stack.append(SEWBlock(channels, build, rngs=rngs))
            if pool:
                stack.append(layers.AvgPool())
                size //= 2
        self.conv = nnx.List(stack)
        self.out = build.linear(c_in * size * size, num_classes, use_bias=True, rngs=rngs)

    def __call__(self, frames: jax.Array, *, per_step: bool = False) -> jax.Array:
        """Logits of a batch of event frames.

        Args:
          frames: ``(B, T, H, W, C_in)`` (batch-major, as datasets store them), floating point.
          per_step: return the logits of every step, ``(T, B, n)``.

        Returns:
          ``(B, n)`` float32: the linear layer applied to the time-averaged features.
        """
        layers.check_input(
            self.name,
            frames,
            layout="(B, T, H, W, C)",
            channels=self.in_channels,
            size=self.input_size,
            time_steps=self.time_steps,
        )
        x = gnn.batch_major_to_time_major(frames.astype(self.dtype))
        features = layers.flatten_channel_major(layers.run_layers(self.conv, x, remat=self.remat))
        if per_step:
            return layers.readout(self.out(features), per_step=True)
        # The reference averages the features over T before its (affine) classifier.
        return self.out(jnp.mean(features, axis=0)).astype(jnp.float32)
