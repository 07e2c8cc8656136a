"""Where a program runs: the split of its batch over the mesh in context, and its platform.

**The batch split.** A data-parallel program sets its mesh in context (``jax.set_mesh(mesh)``, as
``experiments/train.py`` does) and shards the batch over it. Two places of glif_jax need to know
that split while they are traced: the time fold of the stateless layers
(:func:`glif_jax.nn.per_frame`), which keeps each device's rows on that device, and the Pallas
kernels (:mod:`glif_jax.kernels.pallas`), which run per device under ``jax.shard_map``. Both take
it from here: the batch is split over every axis of the context mesh that is not already manual
(inside a ``shard_map``) and has more than one device, in the mesh's order.

**The platform.** The Pallas kernels are traced differently for GPU (Triton) and TPU (Mosaic),
and ``implementation="auto"`` chooses by platform, but a program's platform is known only once it
is lowered. While it is traced, :func:`platform` names it: ``jax.default_backend()``, unless a
program compiled for other devices than the default ones (TPU devices of a topology described on
a CPU host, say) is traced inside :func:`target_platform`, as ``experiments/train.py`` does.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
from jax.sharding import PartitionSpec as P

__all__ = ["BatchSplit", "batch_split", "platform", "target_platform"]

_target_platform: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "glif_jax_target_platform", default=None
)


class BatchSplit(NamedTuple):
    """A batch's split over the mesh in context.

    Attributes:
      mesh: the (abstract) mesh in context.
      axes: the mesh axes that split the batch, major first.
      shards: the number of pieces, the product of those axes' sizes.
    """

    mesh: jax.sharding.AbstractMesh
    axes: tuple[str, ...]
    shards: int

    def spec(self, batch_axis: int) -> P:
        """The ``PartitionSpec`` that splits axis ``batch_axis`` over :attr:`axes`."""
        return P(*([None] * batch_axis), self.axes)


def batch_split(batch_size: int) -> BatchSplit | None:
    """The split of a batch of ``batch_size`` under the mesh in context, or ``None`` when there is
    no mesh, no axis to split over, or the axes cannot split ``batch_size`` evenly (the batch then
    stays whole, as XLA's partitioner places it)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    manual = jax.sharding.AxisType.Manual
    axes = tuple(
        name
        for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types, strict=True)
        if size > 1 and kind != manual
    )
    shards = math.prod(mesh.shape[name] for name in axes)
    if not axes or batch_size % shards:
        return None
    return BatchSplit(mesh, axes, shards)


def platform() -> str:
    """The platform the program being traced is for: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return _target_platform.get() or jax.default_backend()


@contextlib.contextmanager
def target_platform(name: str | None) -> Iterator[None]:
    """Trace for the platform ``name`` (``"cpu"``, ``"gpu"``, ``"tpu"``; ``None``: the default
    backend) inside this block.

    Example:
      >>> from glif_jax import placement
      >>> with placement.target_platform("tpu"):
      ...     placement.platform()
      'tpu'
    """
    if name not in (None, "cpu", "gpu", "tpu"):
        raise ValueError(f"target_platform: expected 'cpu', 'gpu', 'tpu' or None, got {name!r}.")
    token = _target_platform.set(name)
    try:
        yield
    finally:
        _target_platform.reset(token)
