"""Interoperability with the reference PyTorch code: its state dicts and released checkpoints.

``load_reference_state_dict(model, state_dict)`` puts the reference's tensors into a network of
:mod:`glif_jax.models`; ``export_reference_state_dict(model)`` gives them back, in the reference's
layouts and dtypes, so that the round trip is exact. ``load_reference_checkpoint(path)`` reads a
released file (needs ``glif_jax[torch]``) into the network it was trained as.

Example::

    >>> from flax import nnx
    >>> from glif_jax import interop, models
    >>> net = models.create("resnet19", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))
    >>> state = interop.export_reference_state_dict(net)
    >>> state["features.3.downsample.0.0.weight"].shape     # OIHW
    (256, 128, 1, 1)
    >>> net = interop.load_reference_state_dict(net, state)
"""

from glif_jax.interop.checkpoint import (
    create_reference_model,
    load_reference_checkpoint,
    read_reference_checkpoint,
    reference_model_config,
)
from glif_jax.interop.state_dict import (
    GLIF_REFERENCE_NAMES,
    REFERENCE_NAMES,
    export_reference_state_dict,
    load_reference_state_dict,
    reference_layout,
)

__all__ = [
    "GLIF_REFERENCE_NAMES",
    "REFERENCE_NAMES",
    "create_reference_model",
    "export_reference_state_dict",
    "load_reference_checkpoint",
    "load_reference_state_dict",
    "read_reference_checkpoint",
    "reference_layout",
    "reference_model_config",
]
