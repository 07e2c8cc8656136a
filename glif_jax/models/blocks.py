"""Residual blocks of the paper's networks, in the reference's order of operations
(docs/reference.md §3).

Axes: ``(T, B, H, W, C)``; every block maps ``(T, B, H, W, C_in)`` to ``(T, B, H/s, W/s, C_out)``.
"""

from __future__ import annotations

import jax
from flax import nnx

from glif_jax.models.layers import SHORTCUT_ALPHA, Builder

__all__ = ["BasicBlock", "MSBlock", "SEWBlock", "shortcut"]


def shortcut(c_in: int, c_out: int, stride: int, build: Builder, *, rngs: nnx.Rngs):
    """The residual branch of the ResNet blocks (docs/reference.md §3.1, §5.7).

    With unchanged shape it is tdBN(α = 1/√2) on the input, not a pure identity: it has its own
    affine parameters and statistics. Otherwise conv1×1 (stride ``stride``) → tdBN(α = 1/√2).
    """
    if c_in == c_out and stride == 1:
        return build.norm(c_out, SHORTCUT_ALPHA)
    return build.conv_bn(c_in, c_out, 1, stride, alpha=SHORTCUT_ALPHA, rngs=rngs)


class BasicBlock(nnx.Module):
    """The post-activation block (the reference's ``BasicBlock_CW``, docs/reference.md §3.1)::

        body = tdBN_{1/√2}(conv3×3(GLIF(tdBN_1(conv3×3_s(x)))))
        out  = GLIF(body + shortcut(x))

    Attributes:
      conv_bn1, lif1, conv_bn2: the body (reference ``body.0``, ``body.1``, ``body.2``).
      downsample: the shortcut (reference ``downsample.0``), see :func:`shortcut`.
      lif: the GLIF after the sum (reference ``lif``).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, build: Builder, *, rngs: nnx.Rngs):
        self.conv_bn1 = build.conv_bn(c_in, c_out, 3, stride, rngs=rngs)
        self.lif1 = build.glif(c_out, rngs=rngs)
        self.conv_bn2 = build.conv_bn(c_out, c_out, 3, alpha=SHORTCUT_ALPHA, rngs=rngs)
        self.downsample = shortcut(c_in, c_out, stride, build, rngs=rngs)
        self.lif = build.glif(c_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        body = self.conv_bn2(self.lif1(self.conv_bn1(x)))
        return self.lif(body + self.downsample(x))


class MSBlock(nnx.Module):
    """The membrane-shortcut block of the MS-ResNets (``BasicBlock_CW_MS``, docs/reference.md
    §3.5)::

        body = tdBN_{1/√2}(conv3×3(GLIF(tdBN_1(conv3×3_s(GLIF(x))))))
        out  = body + shortcut(x)

    The shortcut takes the real-valued input (the membrane path) and there is no neuron after
    the sum: the output is real-valued.

    Attributes:
      lif1, conv_bn1, lif2, conv_bn2: the body (reference ``body.0`` … ``body.3``).
      downsample: the shortcut (reference ``downsample.0``).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, build: Builder, *, rngs: nnx.Rngs):
        self.lif1 = build.glif(c_in, rngs=rngs)
        self.conv_bn1 = build.conv_bn(c_in, c_out, 3, stride, rngs=rngs)
        self.lif2 = build.glif(c_out, rngs=rngs)
        self.conv_bn2 = build.conv_bn(c_out, c_out, 3, alpha=SHORTCUT_ALPHA, rngs=rngs)
        self.downsample = shortcut(c_in, c_out, stride, build, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        body = self.conv_bn2(self.lif2(self.conv_bn1(self.lif1(x))))
        return body + self.downsample(x)


class SEWBlock(nnx.Module):
    """The spike-element-wise block with ADD (the CIFAR10-DVS network, docs/reference.md §3.7)::

        out = cba(cba(x)) + x,   cba = GLIF(BN(conv3×3(·)))

    Within a stage the identity path accumulates spike counts, so ``out`` is not binary.

    Attributes:
      conv1, conv2: the two conv-BN-GLIF units (reference ``conv.0``, ``conv.1``).
    """

    def __init__(self, channels: int, build: Builder, *, rngs: nnx.Rngs):
        self.conv1 = build.conv_bn_glif(channels, channels, 3, rngs=rngs)
        self.conv2 = build.conv_bn_glif(channels, channels, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv2(self.conv1(x)) + x
