"""GLIF forward+backward speed of each time-loop implementation, against the copy bandwidth of the
machine and a per-step PyTorch loop, all measured in the same run.

The operation is one layer's forward pass and its vector-Jacobian product for a given output
cotangent: spikes, and the gradients of the input and of every parameter. Its minimal memory
traffic is 4 arrays of the input's size: x read, spikes written, cotangent read, dx written
(16 bytes per neuron and step in float32, 8 in bfloat16). The ceiling is a large elementwise
operation under XLA into a fresh output, ``x * 2 + 1``, counted as 2 arrays (read and write).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import timing
from glif_jax import kernels, neuron

PATHS = ("scan", "xla", "pallas")
ARRAYS_MOVED = 4  # x read, spikes written, cotangent read, dx written
IN_A_LOSS = " in value_and_grad"  # suffix of the rows of a path inside a scalar loss


def available_paths(paths: Sequence[str]) -> list[str]:
    """``paths`` without Pallas where it would only run in the interpreter (not on GPU/TPU)."""
    compiled = jax.default_backend() in ("gpu", "tpu")
    return [p for p in paths if not p.startswith("pallas") or compiled]


def implementation(path: str):
    """The implementation a path names: one of :data:`PATHS`, or a kernel with some of its
    settings given, ``"KERNEL/FIELD=N/..."`` (for example ``"pallas/block_rows=32/sub_rows=2"``
    or ``"xla/cpu_tuning=0"``), instead of the values it picks itself."""
    name, *settings = path.split("/")
    if not settings:
        return name
    kernel = kernels.get(name)
    fields = dict(setting.partition("=")[::2] for setting in settings)
    known = {f.name for f in dataclasses.fields(kernel)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(
            f"unknown {name} settings {sorted(unknown)} in {path!r}; it has {sorted(known)}."
        )
    return dataclasses.replace(kernel, **{k: int(v) for k, v in fields.items()})


def layer(path: str):
    """``(params, x) → spikes`` of one of :data:`PATHS` or a kernel's settings (see
    :func:`implementation`)."""
    return functools.partial(neuron.glif, implementation=implementation(path))


def forward_backward(path: str):
    """A jitted ``(params, x, g) → (spikes, grad_params, grad_x)`` of a path (see :func:`layer`)."""

    def run(params, x, g):
        spikes, vjp = jax.vjp(layer(path), params, x)
        return spikes, *vjp(g)

    return jax.jit(run)


def in_a_loss(path: str):
    """A jitted ``(params, x, g) → (⟨spikes, g⟩, (grad_params, grad_x))``: the same gradients
    (the cotangent of the spikes is g) with the layer inside a scalar loss, as a training step
    calls it. XLA then writes the spikes (times g) to its scratch memory for the loss's reduction
    instead of returning them."""

    def loss(params, x, g):
        return jnp.sum(layer(path)(params, x) * g)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def inputs(time_steps: int, shape: Sequence[int], dtype, seed: int = 0):
    """Parameters (random gates), an input current and an output cotangent ``(T, *shape)``."""
    keys = jax.random.split(jax.random.key(seed), 3)
    params = neuron.init_params(shape[-1], time_steps, key=keys[0])
    x = (0.8 * jax.random.normal(keys[1], (time_steps, *shape)) + 0.3).astype(dtype)
    g = jax.random.normal(keys[2], x.shape).astype(dtype)
    return params, x, g


TORCH_LOOPS = {
    "pytorch loop, reference layout": "reference",
    "pytorch loop, channel-last": "channel_last",
}


def _torch_candidate(params, x, g, layout: str):
    import torch

    from experiments.benchmarks import torch_glif

    raw, tx, tg = torch_glif.make_inputs(torch, np.asarray(x), np.asarray(g), params, layout)

    def call():
        torch_glif.forward_backward(torch, raw, tx, tg, layout)

    return call


def measure(
    time_steps: Sequence[int],
    dtypes: Sequence[str],
    shape: Sequence[int],
    paths: Sequence[str],
    repeats: int,
    compare_torch: bool,
) -> list[dict]:
    """One row per (T, dtype, implementation), each timed in rounds alternating with the ceiling.

    Every implementation runs in its own rounds with the ceiling, so that its ratio to the ceiling
    compares two calls made one after the other, in the same state of the caches and of the load;
    the ceiling's row is its best time over all rounds.

    Args:
      time_steps: the values of T.
      dtypes: ``"float32"`` and/or ``"bfloat16"``.
      shape: ``(B, H, W, C)`` (any ``(..., C)``) of one time step.
      paths: implementations of :func:`glif_jax.neuron.glif`, see :data:`PATHS`, or
        ``"pallas/FIELD=N/..."`` (:func:`layer`).
      repeats: timed calls of each candidate (best and median reported).
      compare_torch: also time the PyTorch loops of :data:`TORCH_LOOPS` (float32 only: the
        reference computes in float32).

    Returns:
      Rows with the best and median times (ms), the achieved GB/s over the minimal traffic, the
      fraction of the ceiling's GB/s, and the speed-up over each PyTorch loop where measured.
    """
    rows = []
    copy = jax.jit(lambda x: x * 2 + 1)
    for steps in time_steps:
        for dtype_name in dtypes:
            dtype = jnp.dtype(dtype_name)
            params, x, g = inputs(steps, shape, dtype)
            candidates = {p: functools.partial(forward_backward(p), params, x, g) for p in paths}
            for path in ("xla", "pallas"):
                if path in paths:
                    candidates[path + IN_A_LOSS] = functools.partial(in_a_loss(path), params, x, g)
            if compare_torch and dtype == jnp.float32:
                for name, layout in TORCH_LOOPS.items():
                    candidates[name] = _torch_candidate(params, x, g, layout)
            ceiling_times, measured = [], {}
            for name, fn in candidates.items():
                load = timing.load_average()
                times = timing.interleaved_times(
                    {"ceiling": functools.partial(copy, x), name: fn}, repeats
                )
                ceiling_times += times["ceiling"]
                measured[name] = (times[name], min(times["ceiling"]), [load, timing.load_average()])
                timing.progress(
                    f"glif T={steps} {dtype_name} {name}: {1e3 * min(times[name]):.1f} ms"
                )
            ceiling = min(ceiling_times)
            rows.append(_row(steps, dtype_name, "copy (ceiling)", ceiling_times, 2, x, ceiling))
            torch_best = {
                layout: min(measured[name][0]) if name in measured else None
                for name, layout in TORCH_LOOPS.items()
            }
            for name, (times, paired_ceiling, load) in measured.items():
                speedups = {
                    f"vs_pytorch_{layout}": None if best is None else best / min(times)
                    for layout, best in torch_best.items()
                }
                row = _row(steps, dtype_name, name, times, ARRAYS_MOVED, x, paired_ceiling)
                rows.append(row | speedups | {"load": load})
    return rows


def measure_shapes(
    shapes: Sequence[Sequence[int]],
    time_steps: int,
    paths: Sequence[str],
    repeats: int,
    compare_torch: bool,
) -> list[dict]:
    """:func:`measure` in float32 at one T for each of several shapes of one time step (layers
    of a network, a linear layer, odd neuron counts), one row per (shape, implementation)."""
    rows = []
    for shape in shapes:
        for row in measure([time_steps], ["float32"], shape, paths, repeats, compare_torch):
            rows.append({"shape": "×".join(map(str, shape))} | row)
    return rows


def _row(steps, dtype_name, name, times, arrays_moved, x, ceiling_time) -> dict:
    best = min(times)
    gbs = arrays_moved * x.nbytes / best / 1e9
    return {
        "T": steps,
        "dtype": dtype_name,
        "implementation": name,
        "best_ms": 1e3 * best,
        "median_ms": 1e3 * statistics.median(times),
        "GB/s": gbs,
        "of_ceiling": gbs / (2 * x.nbytes / ceiling_time / 1e9),
        "vs_pytorch_reference": None,
        "vs_pytorch_channel_last": None,
        "load": None,
    }
