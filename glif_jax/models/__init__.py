"""The paper's spiking networks as Flax NNX modules, exactly as the reference builds them.

Static-image networks take normalised images ``(B, H, W, C)`` and repeat them over T; the DVS
network takes event frames ``(B, T, H, W, 2)``. Every network returns the logits ``(B, n)``, the
mean over T, or with ``per_step=True`` the logits of every step ``(T, B, n)``. Inside, everything
is time-major and channel-last, ``(T, B, H, W, C)``.

Example::

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from glif_jax import models
    >>> models.names()[:3]
    ('resnet19', 'resnet18', 'cifarnet')
    >>> net = models.create("spiking_cnn", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
"""

from glif_jax.models.blocks import BasicBlock, MSBlock, SEWBlock
from glif_jax.models.cifarnet import CIFARNet
from glif_jax.models.layers import GLIF_OPTIONS, AvgPool, ConvBN, ConvBNGLIF, glif_factory
from glif_jax.models.registry import create, names, options
from glif_jax.models.resnet import (
    SpikingResNet,
    ms_resnet18,
    ms_resnet34,
    resnet18,
    resnet19,
    resnet34,
)
from glif_jax.models.sew_resnet import SEWResNet
from glif_jax.models.spiking_cnn import SpikingCNN

__all__ = [
    "GLIF_OPTIONS",
    "AvgPool",
    "BasicBlock",
    "CIFARNet",
    "ConvBN",
    "ConvBNGLIF",
    "MSBlock",
    "SEWBlock",
    "SEWResNet",
    "SpikingCNN",
    "SpikingResNet",
    "create",
    "glif_factory",
    "ms_resnet18",
    "ms_resnet34",
    "names",
    "options",
    "resnet18",
    "resnet19",
    "resnet34",
]
