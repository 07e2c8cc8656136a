"""The networks by name: :func:`create` and :func:`names`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from flax import nnx

from glif_jax.models.cifarnet import CIFARNet
from glif_jax.models.layers import GLIF_OPTIONS
from glif_jax.models.resnet import ms_resnet18, ms_resnet34, resnet18, resnet19, resnet34
from glif_jax.models.sew_resnet import SEWResNet
from glif_jax.models.spiking_cnn import SpikingCNN

__all__ = ["create", "names", "options"]

_MODELS: dict[str, Callable[..., nnx.Module]] = {
    "resnet19": resnet19,
    "resnet18": resnet18,
    "cifarnet": CIFARNet,
    "resnet34": resnet34,
    "ms_resnet18": ms_resnet18,
    "ms_resnet34": ms_resnet34,
    "sew_7b_widenet": SEWResNet,
    "spiking_cnn": SpikingCNN,
}
_REQUIRED = ("num_classes", "time_steps", "rngs")


def names() -> tuple[str, ...]:
    """The names :func:`create` accepts."""
    return tuple(_MODELS)


def _constructor(name: str) -> Callable[..., nnx.Module]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(_MODELS)}.")
    return _MODELS[name]


def options(name: str) -> tuple[str, ...]:
    """The options (keyword arguments besides ``num_classes``, ``time_steps``, ``rngs``) of the
    network ``name``: its own, then the GLIF options."""
    constructor = _constructor(name)
    # A variant is a partial of a module class; the class's own __init__ lists the options.
    cls = constructor.func if isinstance(constructor, functools.partial) else constructor
    parameters = inspect.signature(cls.__init__).parameters.values()
    own = tuple(
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _REQUIRED
    )
    return own + GLIF_OPTIONS


def create(name: str, *, num_classes: int, time_steps: int, rngs: nnx.Rngs, **options_):
    """Build the network ``name`` (one of :func:`names`).

    Args:
      name: e.g. ``"resnet19"``.
      num_classes: n, the number of logits.
      time_steps: T.
      rngs: random streams (``nnx.Rngs(seed)``).
      **options_: network options (see :func:`options`), e.g. ``channel_wise=False``,
        ``mode="fused"``, ``simplex="101"``, ``gates=(0.6, 0.8, 0.6)``, ``plain_bn=True``,
        ``remat=True``, ``dtype=jnp.bfloat16``.

    Returns:
      The network, an ``nnx.Module`` called as ``model(x, per_step=False)``.

    Raises:
      ValueError: an unknown name or option (the message lists the valid ones).

    Example::

        >>> from flax import nnx
        >>> from glif_jax import models
        >>> net = models.create("resnet19", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))
    """
    valid = options(name)
    unknown = sorted(set(options_) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; the options are {list(valid)}.")
    return _constructor(name)(num_classes=num_classes, time_steps=time_steps, rngs=rngs, **options_)
