"""Which implementation ``implementation="auto"`` runs, decided by measurements per backend.

============  ===============================================================  ==========
backend       situation                                                        path
============  ===============================================================  ==========
GPU           float32 or bfloat16 input, float32 compute, T ≤ 16, and one      ``pallas``
              device or a mesh in context that splits the batch evenly
GPU           any other input, T ≤ 2 or T > 8                                  ``xla``
GPU           any other input, 3 ≤ T ≤ 8                                       ``scan``
CPU           always                                                           ``xla``
TPU, others   always (not timed there)                                         ``xla``
============  ===============================================================  ==========

The rows that back each cell are in ``experiments/benchmarks/results-gpu-h200.md`` (NVIDIA H200) and
``experiments/benchmarks/results-cpu-2core.md`` (a 2-core CPU); ``docs/performance.md`` quotes them
beside this table. On the GPU the Pallas kernels ran fastest at every T timed (2 to 16); without
them the XLA custom VJP beat the scan at T = 2 and 16 and lost at T = 4 and 6. On the CPU the XLA
custom VJP beat the scan at every T timed. On TPU nothing has been timed. Compiled by libtpu for a
v5e slice (ResNet-19's train step, T = 4, float32, 64 images per chip;
``experiments/benchmarks/results-tpu-pods``), the Pallas kernels (compiled under Mosaic) need the
least memory (4.16 GiB per chip at the peak, against 4.53 for the XLA path and 5.09 for the scan)
and the fewest bytes XLA counts, but XLA's cost analysis does not see inside a kernel, and they have
never run on a TPU: the XLA path is chosen there, the least memory of the paths XLA compiles, until
a TPU times them side by side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glif_jax import placement
from glif_jax.kernels import pallas

__all__ = ["select"]

_PALLAS_BACKENDS = ("gpu",)
_PALLAS_INPUTS = (jnp.float32, jnp.bfloat16)
_GPU_SCAN_STEPS = range(3, 9)


def select(
    shape: tuple[int, ...],
    input_dtype,
    compute_dtype,
    *,
    backend: str | None = None,
    device_count: int | None = None,
) -> str:
    """The implementation ``"auto"`` runs for an input of ``shape`` ``(T, ..., C)``.

    Args:
      shape: the input's shape.
      input_dtype: the input's dtype.
      compute_dtype: the dtype the membrane is computed in (float32, or float64).
      backend: :func:`glif_jax.placement.platform` when ``None``.
      device_count: ``jax.device_count()`` when ``None``.

    Returns:
      ``"pallas"``, ``"xla"`` or ``"scan"``, by the table of the module docstring.
    """
    backend = backend or placement.platform()
    device_count = jax.device_count() if device_count is None else device_count
    steps = shape[0]
    if backend not in _PALLAS_BACKENDS:
        return "xla"
    runs_per_shard = device_count == 1 or pallas.shard_plan(shape) is not None
    checked = (
        jnp.dtype(input_dtype) in _PALLAS_INPUTS
        and jnp.dtype(compute_dtype) == jnp.float32
        and steps <= pallas.MAX_STEPS
    )
    if runs_per_shard and checked:
        return "pallas"
    return "scan" if steps in _GPU_SCAN_STEPS else "xla"
