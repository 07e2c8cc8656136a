"""The paper's spiking ResNets, as the reference builds them (docs/reference.md §3.2, §3.3, §3.5,
§3.6).

Every variant is a ``functools.partial`` of :class:`SpikingResNet`:

===============  ==========================  =====================  =============  ========
name             blocks                      stem                   stage strides  input
===============  ==========================  =====================  =============  ========
``resnet19``     post-activation, 3-3-2      3×3/1, 128             1, 2, 2        CIFAR
``resnet18``     post-activation, 2-2-2-2    3×3/1, 64              1, 1, 2, 2     CIFAR
``resnet34``     post-activation, 3-4-6-3    7×7/2/p1, 64, no pool  2, 2, 2, 2     ImageNet
``ms_resnet18``  membrane shortcut, 2-2-2-2  7×7/2/p1, 64, no pool  2, 2, 2, 2     ImageNet
``ms_resnet34``  membrane shortcut, 3-4-6-3  7×7/2/p1, 64, no pool  2, 2, 2, 2     ImageNet
===============  ==========================  =====================  =============  ========

Example::

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from glif_jax import models
    >>> net = models.resnet19(num_classes=10, time_steps=2, rngs=nnx.Rngs(0),
    ...                       stem_channels=8, stage_channels=(8, 16, 32))
    >>> net(jnp.zeros((2, 16, 16, 3))).shape
    (2, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from glif_jax import nn as gnn
from glif_jax.models import layers
from glif_jax.models.blocks import BasicBlock, MSBlock

__all__ = [
    "SpikingResNet",
    "ms_resnet18",
    "ms_resnet34",
    "reference_two_layer_head",
    "resnet18",
    "resnet19",
    "resnet34",
]

_BLOCKS = {"post": BasicBlock, "ms": MSBlock}


def reference_two_layer_head(name: str, num_classes: int, *, channel_wise: bool, mode: str) -> bool:
    """Whether the reference's network ``name`` ends with two linears 512→256→n (else one 512→n).

    The CIFAR ResNets and the MS-ResNets use two for n ≤ 50; the layer-wise ResNet-18, every GLIF_f
    (``mode="fused"``) network and the post-activation ResNet-34 always use one
    (docs/reference.md §3.2-§3.6).
    """
    if name == "resnet34" or mode == "fused" or num_classes > 50:
        return False
    return not (name == "resnet18" and not channel_wise)


class SpikingResNet(nnx.Module):
    """A spiking ResNet: stem, residual stages, global average pool, bias-free linear head.

    Input ``(B, H, W, C_in)`` normalised images, repeated over T (direct encoding,
    docs/reference.md §2.3).
    The stem is conv → tdBN(1) → GLIF; the stages are :class:`~glif_jax.models.blocks.BasicBlock`
    (post-activation) or :class:`~glif_jax.models.blocks.MSBlock` (membrane shortcut); the head is
    applied to the spatially pooled features of every step and the logits are the mean over T
    (docs/reference.md §2.4).

    Args:
      num_classes: n.
      time_steps: T.
      rngs: random streams (``params``).
      name: the variant's name, which sets the reference's head rule and names errors.
      block: ``"post"`` or ``"ms"``.
      stem_channels: channels of the stem.
      stage_channels, stage_repeats, stage_strides: per stage, the block channels, the number of
        blocks and the stride of its first block.
      stem_kernel, stem_stride, stem_padding: the stem convolution.
      head_width: the hidden width of the two-linear head.
      two_layer_head: force the head (``None``: the reference's rule,
        :func:`reference_two_layer_head`).
      in_channels: C_in of the images.
      plain_bn: plain BatchNorm instead of tdBN everywhere (the released ImageNet checkpoint).
      remat: recompute each residual block in the backward pass (less activation memory, the
        same results).
      dtype: compute dtype of convolutions and linears (parameters stay float32).
      **glif_options: options of the GLIF layers, see
        :func:`glif_jax.models.layers.glif_factory`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        time_steps: int,
        rngs: nnx.Rngs,
        name: str = "spiking_resnet",
        block: Literal["post", "ms"] = "post",
        stem_channels: int = 64,
        stage_channels: Sequence[int] = (64, 128, 256, 512),
        stage_repeats: Sequence[int] = (2, 2, 2, 2),
        stage_strides: Sequence[int] = (1, 1, 2, 2),
        stem_kernel: int = 3,
        stem_stride: int = 1,
        stem_padding: int = 1,
        head_width: int = 256,
        two_layer_head: bool | None = None,
        in_channels: int = 3,
        plain_bn: bool = False,
        remat: bool = False,
        dtype: Any = jnp.float32,
        **glif_options,
    ):
        build = layers.make_builder(
            name,
            num_classes=num_classes,
            time_steps=time_steps,
            glif_options=glif_options,
            plain_bn=plain_bn,
            dtype=dtype,
        )
        if block not in _BLOCKS:
            raise ValueError(f"{name}: block must be one of {list(_BLOCKS)}, got {block!r}.")
        if not len(stage_channels) == len(stage_repeats) == len(stage_strides):
            raise ValueError(
                f"{name}: stage_channels, stage_repeats and stage_strides must have one entry per "
                f"stage, got {stage_channels}, {stage_repeats}, {stage_strides}."
            )
        self.name = name
        self.num_classes = num_classes
        self.time_steps = time_steps
        self.in_channels = in_channels
        self.remat = remat
        self.dtype = dtype
        self.conv1 = build.conv_bn_glif(
            in_channels, stem_channels, stem_kernel, stem_stride, padding=stem_padding, rngs=rngs
        )
        blocks, c_in = [], stem_channels
        for c_out, repeats, stride in zip(
            stage_channels, stage_repeats, stage_strides, strict=True
        ):
            for i in range(repeats):
                blocks.append(
                    _BLOCKS[block](c_in, c_out, stride if i == 0 else 1, build, rngs=rngs)
                )
                c_in = c_out
        self.features = nnx.List(blocks)
        if two_layer_head is None:
            two_layer_head = reference_two_layer_head(
                name,
                num_classes,
                channel_wise=glif_options.get("channel_wise", True),
                mode=glif_options.get("mode", "soft"),
            )
        widths = (c_in, head_width, num_classes) if two_layer_head else (c_in, num_classes)
        self.head = build.linears(widths, rngs=rngs)

    def __call__(self, images: jax.Array, *, per_step: bool = False) -> jax.Array:
        """Logits of a batch of images.

        Args:
          images: ``(B, H, W, C_in)``, normalised, floating point.
          per_step: return the logits of every step, ``(T, B, n)`` (for TET-style losses).

        Returns:
          ``(B, n)`` float32, the mean over T of the per-step logits.
        """
        layers.check_input(self.name, images, layout="(B, H, W, C)", channels=self.in_channels)
        x = gnn.direct_encode(images.astype(self.dtype), self.time_steps)
        x = layers.run_layers(self.features, self.conv1(x), remat=self.remat)
        return layers.readout(layers.run_layers(self.head, layers.global_average_pool(x)), per_step)


resnet19 = functools.partial(
    SpikingResNet,
    name="resnet19",
    block="post",
    stem_channels=128,
    stage_channels=(128, 256, 512),
    stage_repeats=(3, 3, 2),
    stage_strides=(1, 2, 2),
)
"""ResNet-19 for CIFAR (docs/reference.md §3.2): the paper's main CIFAR network."""

resnet18 = functools.partial(
    SpikingResNet,
    name="resnet18",
    block="post",
    stem_channels=64,
    stage_channels=(64, 128, 256, 512),
    stage_repeats=(2, 2, 2, 2),
    stage_strides=(1, 1, 2, 2),
)
"""ResNet-18 "stand" for CIFAR (docs/reference.md §3.3), with the strides [1, 1, 2, 2]."""

_IMAGENET_STEM = dict(stem_channels=64, stem_kernel=7, stem_stride=2, stem_padding=1)

resnet34 = functools.partial(
    SpikingResNet,
    name="resnet34",
    block="post",
    stage_channels=(64, 128, 256, 512),
    stage_repeats=(3, 4, 6, 3),
    stage_strides=(2, 2, 2, 2),
    **_IMAGENET_STEM,
)
"""The post-activation ResNet-34 for ImageNet (docs/reference.md §3.6): 7×7/s2/p1 stem, no
max-pool."""

ms_resnet18 = functools.partial(
    SpikingResNet,
    name="ms_resnet18",
    block="ms",
    stage_channels=(64, 128, 256, 512),
    stage_repeats=(2, 2, 2, 2),
    stage_strides=(2, 2, 2, 2),
    **_IMAGENET_STEM,
)
"""MS-ResNet-18 for ImageNet (docs/reference.md §3.5): membrane shortcuts, 7×7/s2/p1 stem, no
max-pool."""

ms_resnet34 = functools.partial(
    SpikingResNet,
    name="ms_resnet34",
    block="ms",
    stage_channels=(64, 128, 256, 512),
    stage_repeats=(3, 4, 6, 3),
    stage_strides=(2, 2, 2, 2),
    **_IMAGENET_STEM,
)
"""MS-ResNet-34 for ImageNet (docs/reference.md §3.5)."""
