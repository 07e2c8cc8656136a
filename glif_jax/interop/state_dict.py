"""The reference's state dicts ⇄ glif_jax networks.

The reference names every tensor by its module path (``features.3.body.0.0.weight``); the
networks of :mod:`glif_jax.models` mirror that structure, so the mapping is a walk over the
model with one small table of child names per module class (:data:`REFERENCE_NAMES`) and one
conversion per leaf layer:

- ``nnx.Conv.kernel`` ⇄ ``weight``: HWIO ⇄ OIHW;
- ``nnx.Linear.kernel``, ``bias`` ⇄ ``weight``, ``bias``: (in, out) ⇄ (out, in);
- ``TDBatchNorm.scale, bias, mean, var`` ⇄ ``weight, bias, running_mean, running_var``;
- ``TDBatchNorm.num_batches_tracked`` ⇄ ``num_batches_tracked``: int32 ⇄ int64;
- ``TDBatchNorm.v_th`` (tdBN only) ⇄ the ``Vth`` buffer (0.5): float ⇄ float32 scalar;
- ``GLIF.alpha, beta, gamma, tau`` ⇄ ``alpha, beta, gamma, tau``: float64 gates (DVS) ⇄
  float32;
- ``GLIF.v_th, leak, v_reset, conduct`` ⇄ ``Vth, leak, reVth, conduct``.

GLIF_f (``mode="fused"``) has no gates in glif_jax (docs/reference.md §6); the reference's GLIF_f
has a ``gamma`` that it never uses: it is checked on import and exported as its initial value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from glif_jax import neuron
from glif_jax import nn as gnn
from glif_jax.models.blocks import BasicBlock, MSBlock, SEWBlock
from glif_jax.models.cifarnet import CIFARNet
from glif_jax.models.layers import AvgPool, ConvBN, ConvBNGLIF
from glif_jax.models.resnet import SpikingResNet
from glif_jax.models.sew_resnet import SEWResNet

__all__ = [
    "GLIF_REFERENCE_NAMES",
    "REFERENCE_NAMES",
    "export_reference_state_dict",
    "load_reference_state_dict",
    "reference_layout",
]

REFERENCE_NAMES: dict[type, tuple[tuple[str, str], ...]] = {
    SpikingResNet: (("conv1", "conv1"), ("features", "features"), ("head", "lastave")),
    CIFARNet: (("features", "features"), ("classifier", "classifier")),
    SEWResNet: (("conv", "conv"), ("out", "out")),
    BasicBlock: (
        ("conv_bn1", "body.0"),
        ("lif1", "body.1"),
        ("conv_bn2", "body.2"),
        ("downsample", "downsample.0"),
        ("lif", "lif"),
    ),
    MSBlock: (
        ("lif1", "body.0"),
        ("conv_bn1", "body.1"),
        ("lif2", "body.2"),
        ("conv_bn2", "body.3"),
        ("downsample", "downsample.0"),
    ),
    SEWBlock: (("conv1", "conv.0"), ("conv2", "conv.1")),
    ConvBN: (("conv", "0"), ("bn", "1")),
    ConvBNGLIF: (("conv_bn", "0"), ("lif", "1")),
}
"""For each module class, its children in the reference's order, as (attribute, reference name)."""

GLIF_REFERENCE_NAMES: dict[str, str] = {
    name: {"v_th": "Vth", "v_reset": "reVth"}.get(name, name) for name in neuron.PARAM_NAMES
}
"""Each GLIF parameter's name in the reference's state dicts (``v_th`` is ``Vth``, ``v_reset`` is
``reVth``; the others keep their names)."""
_BN_NAMES = (
    ("scale", "weight"),
    ("bias", "bias"),
    ("mean", "running_mean"),
    ("var", "running_var"),
    ("num_batches_tracked", "num_batches_tracked"),
)
# The CIFAR10-DVS neuron stores its gates in float64 (docs/reference.md §1.9); glif_jax computes
# in float32 (docs/reference.md §6) and exports them back in the reference's dtype.
_GATE_DTYPES = {SEWResNet: "float64"}
# The reference's GLIF_f initialises its unused gamma from the default gate 0.6 through the
# mapping (g − 0.5)/2 + 0.5 (docs/reference.md §1.8); glif_jax exports that value.
_DEAD_GAMMA = -math.log(1 / 0.55 - 1)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One tensor of the reference's state dict and where it lives in the model."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], np.ndarray]
    write: Callable[[np.ndarray], None]


def _variable_entry(key, variable: nnx.Variable, *, layout=None, dtype="float32") -> _Entry:
    """``layout``: the axis permutation from glif_jax to the reference (None: identity)."""
    shape = tuple(np.shape(variable.get_value()))
    ref_shape = shape if layout is None else tuple(shape[i] for i in layout)
    inverse = None if layout is None else tuple(np.argsort(layout))
    ours = np.dtype(variable.get_value().dtype)

    def read():
        value = np.asarray(variable.get_value())
        return (value if layout is None else value.transpose(layout)).astype(dtype)

    def write(value):
        value = np.asarray(value)
        value = value if inverse is None else value.transpose(inverse)
        variable.set_value(jnp.asarray(value, dtype=ours))

    return _Entry(key, ref_shape, dtype, read, write)


def _bn_vth_entry(key, bn: gnn.TDBatchNorm) -> _Entry:
    def write(value):
        bn.v_th = float(np.asarray(value))

    return _Entry(key, (), "float32", lambda: np.asarray(bn.v_th, np.float32), write)


def _dead_gamma_entry(key, lif: gnn.GLIF) -> _Entry:
    shape = tuple(np.shape(lif.v_th.get_value()))
    return _Entry(
        key, shape, "float32", lambda: np.full(shape, _DEAD_GAMMA, np.float32), lambda _: None
    )


def _leaf_entries(module, prefix: str, gate_dtype: str) -> Iterator[_Entry]:
    if isinstance(module, nnx.Conv):
        yield _variable_entry(prefix + "weight", module.kernel, layout=(3, 2, 0, 1))
        if module.bias is not None:
            yield _variable_entry(prefix + "bias", module.bias)
    elif isinstance(module, nnx.Linear):
        yield _variable_entry(prefix + "weight", module.kernel, layout=(1, 0))
        if module.bias is not None:
            yield _variable_entry(prefix + "bias", module.bias)
    elif isinstance(module, gnn.TDBatchNorm):
        for ours, theirs in _BN_NAMES:
            dtype = "int64" if theirs == "num_batches_tracked" else "float32"
            yield _variable_entry(prefix + theirs, getattr(module, ours), dtype=dtype)
        if not module.plain:
            yield _bn_vth_entry(prefix + "Vth", module)
    elif isinstance(module, gnn.GLIF):
        for ours, theirs in GLIF_REFERENCE_NAMES.items():
            dtype = gate_dtype if ours in neuron.GATE_NAMES else "float32"
            if getattr(module, ours) is not None:
                yield _variable_entry(prefix + theirs, getattr(module, ours), dtype=dtype)
            elif ours == "gamma":
                yield _dead_gamma_entry(prefix + theirs, module)


def _entries(module, prefix: str = "", gate_dtype: str = "float32") -> Iterator[_Entry]:
    if isinstance(module, (nnx.Conv, nnx.Linear, gnn.TDBatchNorm, gnn.GLIF)):
        yield from _leaf_entries(module, prefix, gate_dtype)
    elif isinstance(module, nnx.List):
        for i, child in enumerate(module):
            yield from _entries(child, f"{prefix}{i}.", gate_dtype)
    elif isinstance(module, AvgPool):
        return
    elif type(module) in REFERENCE_NAMES:
        gate_dtype = _GATE_DTYPES.get(type(module), gate_dtype)
        for attribute, name in REFERENCE_NAMES[type(module)]:
            yield from _entries(getattr(module, attribute), f"{prefix}{name}.", gate_dtype)
    else:
        raise TypeError(
            f"no reference layout for {type(module).__name__}: the reference state-dict layout is "
            f"known for {[cls.__name__ for cls in REFERENCE_NAMES]} and their layers."
        )


def _layout(model) -> dict[str, _Entry]:
    return {entry.key: entry for entry in _entries(model)}


def reference_layout(model: nnx.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """The reference state dict ``model`` corresponds to: ``{name: (shape, dtype)}``, in the
    reference's order.

    Raises:
      TypeError: the model (or one of its layers) has no reference counterpart.
    """
    return {key: (entry.shape, entry.dtype) for key, entry in _layout(model).items()}


def export_reference_state_dict(model: nnx.Module, *, prefix: str = "") -> dict[str, np.ndarray]:
    """The reference's state dict of ``model``: NumPy arrays in the reference's layouts and dtypes.

    Convolutions are OIHW, linears (out, in), ``num_batches_tracked`` int64, the gates of the
    CIFAR10-DVS network float64 (as its reference code stores them), everything else float32;
    tdBN layers carry their ``Vth`` buffer (0.5), plain BN layers do not.

    Args:
      model: a network of :mod:`glif_jax.models` (not ``spiking_cnn``, which has no reference).
      prefix: prepended to every name, e.g. ``"module."`` for the layout of a checkpoint saved
        from ``DistributedDataParallel``.

    Returns:
      ``{name: array}`` in the reference's order, ready for ``torch.from_numpy``.
    """
    return {prefix + key: entry.read() for key, entry in _layout(model).items()}


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    prefix = "module."
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _check_normalisation(layout: dict[str, _Entry], state_dict: Mapping[str, Any]) -> None:
    """Catch a checkpoint whose tdBN layers were saved as plain BN, or the other way round."""
    bn_prefixes = [key[: -len("running_mean")] for key in layout if key.endswith("running_mean")]
    expects_vth = [p for p in bn_prefixes if p + "Vth" in layout]
    has_vth = [p for p in bn_prefixes if p + "Vth" in state_dict]
    if expects_vth and not has_vth and any(p + "running_mean" in state_dict for p in bn_prefixes):
        raise ValueError(
            "load_reference_state_dict: the state dict has no tdBN 'Vth' buffers: its "
            "normalisation layers were saved as plain BatchNorm (as in the released ImageNet "
            "checkpoint, trained with SyncBatchNorm, which drops tdBN's alpha·Vth factor; "
            "docs/reference.md §5.5). Evaluate it as it was trained: build the model with "
            "plain_bn=True."
        )
    if has_vth and not expects_vth:
        raise ValueError(
            f"load_reference_state_dict: the state dict has tdBN 'Vth' buffers (e.g. "
            f"{has_vth[0]}Vth) but the model uses plain BatchNorm; build it with plain_bn=False."
        )


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_reference_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> nnx.Module:
    """Put a reference state dict into ``model`` (in place) and return it.

    Accepts torch tensors or arrays, the reference's layouts and dtypes (float64 gates are cast
    to float32, docs/reference.md §6) and the ``module.`` prefix of ``DistributedDataParallel``
    checkpoints. Nothing is written unless every key and shape matches.

    Args:
      model: the matching network of :mod:`glif_jax.models`, e.g.
        ``models.create("resnet19", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))``.
      state_dict: ``{reference name: tensor}``.

    Returns:
      ``model``.

    Raises:
      ValueError: a missing or unexpected key, a shape mismatch (the message names the key, the
        expected and the found shape), or a plain-BN checkpoint for a tdBN model (build it with
        ``plain_bn=True``) and the other way round.
      TypeError: the model has no reference counterpart.
    """
    fn = "load_reference_state_dict"
    layout = _layout(model)
    state_dict = _strip_data_parallel_prefix(state_dict)
    _check_normalisation(layout, state_dict)
    missing = [key for key in layout if key not in state_dict]
    unexpected = [key for key in state_dict if key not in layout]
    if missing or unexpected:
        raise ValueError(
            f"{fn}: the state dict does not match {type(model).__name__}: "
            f"missing keys [{_listing(missing)}]; unexpected keys [{_listing(unexpected)}]. "
            "Check the network, its num_classes and its options (e.g. channel_wise, mode)."
        )
    values = {key: _as_numpy(value) for key, value in state_dict.items()}
    for key, entry in layout.items():
        found = tuple(values[key].shape)
        if found != entry.shape:
            hint = (
                " (conduct has one row per time step: build the model with that time_steps)"
                if key.endswith("conduct")
                else ""
            )
            raise ValueError(
                f"{fn}: {key} has shape {found} in the state dict but the model expects "
                f"{entry.shape}{hint}."
            )
    for key, entry in layout.items():
        entry.write(values[key])
    return model
