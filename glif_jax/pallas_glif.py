"""GLIF over time as a Pallas kernel, forward and backward (GPU through Triton, TPU through Mosaic).

:func:`glif_jax.neuron.glif` calls :func:`glif_pallas` with ``implementation="pallas"``, and with
``"auto"`` on a single GPU (see ``glif_jax.neuron._auto_implementation``). The kernels run the same
step functions as the fused XLA path (``glif_jax.neuron._forward_step`` and friends), on tiles of
neurons:

* the input ``(T, ..., C)`` is viewed as ``(T, R, C)``, R the neurons of one channel, and padded
  to whole blocks of ``block_rows × block_channels`` (powers of two; multiples of (8, 128) on TPU,
  or the whole padded channel axis when it is narrower than 128);
* the grid runs over (row blocks, channel blocks); each program loops over sub-tiles of
  ``sub_rows`` rows and runs the whole time loop on each sub-tile, unrolled;
* the forward kernel writes the spikes (and the membrane when asked); it saves only ``x`` for the
  backward pass, as the fused path does;
* the backward kernel recomputes the membrane, writes dx and, per program, the column sums of
  every gradient term (the ``_TERMS`` of ``glif_jax.neuron``, then gu_t·x_t for each t), which
  are summed over the row blocks outside the kernel.

On GPU every value of a sub-tile's time loop and the running sums live in registers, so the
default ``sub_rows`` shrinks as T grows (8 rows up to T = 5, down to 1 beyond T = 24); on TPU a
sub-tile is one whole (8, 128) tile (16 rows for 16-bit inputs).

What has been verified: identical spikes and, to float32 rounding, the membrane, dx and every
parameter gradient against the plain ``lax.scan`` path, for every mode, channel-wise and
layer-wise coefficients, several surrogates, ``detach_reset``, the membrane's cotangent, bfloat16
inputs, several tilings and shapes that do not divide the blocks (``tests/test_pallas_glif.py``),
in Pallas's interpreter on the CPU and compiled through Triton on an NVIDIA H200 (JAX 0.11.2);
timings in ``experiments/benchmarks/results-gpu-h200.md``. For TPU the kernels have been lowered
through Mosaic, never run. The membrane is not bit-identical to the XLA paths because compilers
contract multiply-adds into FMAs differently in different loops, so a membrane within a rounding
error of the threshold may spike in one path and not in the other.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from glif_jax import neuron
    >>> params = neuron.init_params(16, 4, key=jax.random.key(0))
    >>> x = jnp.ones((4, 8, 16))
    >>> spikes = neuron.glif(params, x, implementation="pallas")  # interpreted on the CPU
    >>> bool((spikes == neuron.glif(params, x, implementation="scan")).all())
    True
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from glif_jax import neuron
from glif_jax import surrogates as _surrogates

__all__ = ["PallasConfig", "glif_pallas"]

_LANES = 128  # channels per block: the TPU lane width, and a power of two for Triton
_COEFFICIENT_ROWS = 8  # decay, leak, hard reset, soft reset, threshold, padded to a TPU tile
_BLOCK_ELEMENTS = 2**16  # T × block_rows × block_channels at most: 256 KiB per fp32 operand
_MAX_BLOCK_ROWS = 256
_GPU_LIVE_VALUES = 256  # registers per thread for the time loop's values, see _default_sub_rows


class PallasConfig(NamedTuple):
    """How the kernels run.

    Attributes:
      backend: ``"gpu"``, ``"tpu"``, or anything else for Pallas's interpreter; ``None`` for
        ``jax.default_backend()``.
      block_rows: rows (neurons of a channel) per program, a power of two; ``None`` picks one.
      interpret: run in Pallas's interpreter (``None``: whenever the backend is not GPU or TPU).
      sub_rows: rows of the sub-tile that one pass of the unrolled time loop holds, a power of
        two; ``None`` picks one (on TPU a whole tile: 8 rows, 16 for 16-bit inputs).
      num_warps: warps per program on GPU, a power of two; ``None``: 4.
    """

    backend: str | None = None
    block_rows: int | None = None
    interpret: bool | None = None
    sub_rows: int | None = None
    num_warps: int | None = None


def glif_pallas(
    x: jax.Array,
    coeffs: neuron.GLIFCoefficients,
    surrogate: _surrogates.Surrogate,
    detach_reset: bool,
    return_membrane: bool,
    config: PallasConfig | None = None,
):
    """GLIF over time with Pallas kernels; differentiable w.r.t. ``x`` and ``coeffs``.

    Args:
      x: input current ``(T, ..., C)``, floating dtype.
      coeffs: per-step update coefficients (:func:`glif_jax.neuron.coefficients`) in the compute
        dtype, channel-wise (``(C,)``, ``input_scale`` ``(T, C)``) or layer-wise (scalars,
        ``input_scale`` ``(T,)``).
      surrogate: the spike's surrogate derivative.
      detach_reset: stop the gradient through o_{t−1} in the reset terms.
      return_membrane: also return the membrane u (before reset).
      config: backend, block size and interpreter, see :class:`PallasConfig` (default: all
        chosen automatically).

    Returns:
      The spikes ``(T, ..., C)`` in ``x``'s dtype; with ``return_membrane``, ``(spikes, u)``, u in
      the compute dtype.
    """
    config = _resolve(config or PallasConfig())
    return _glif_pallas(x, coeffs, surrogate, detach_reset, return_membrane, config)


class _Layout(NamedTuple):
    """Static tiling of a ``(T, R, C)`` problem."""

    rows: int
    channels: int
    block_rows: int
    block_channels: int
    sub_rows: int
    padded_rows: int
    padded_channels: int


def _resolve(config: PallasConfig) -> PallasConfig:
    backend = config.backend or jax.default_backend()
    interpret = backend not in ("gpu", "tpu") if config.interpret is None else config.interpret
    return config._replace(backend=backend, interpret=interpret)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _layout(x: jax.Array, config: PallasConfig) -> _Layout:
    steps, channels = x.shape[0], x.shape[-1]
    rows = math.prod(x.shape[1:-1])
    sub_rows = config.sub_rows or _default_sub_rows(steps, x.dtype, config.backend)
    _check_power_of_two("sub_rows", sub_rows)
    if config.backend == "tpu" and not config.interpret:
        tile_rows = _default_sub_rows(steps, x.dtype, "tpu")
        if sub_rows % tile_rows:
            raise ValueError(
                f"glif_pallas: sub_rows on TPU must be a multiple of {tile_rows} for {x.dtype} "
                f"inputs, got {sub_rows}."
            )
    if channels % _LANES == 0:
        padded_channels = channels
    elif channels < _LANES:
        padded_channels = pl.next_power_of_2(channels)
    else:
        padded_channels = _round_up(channels, _LANES)
    block_channels = min(padded_channels, _LANES)
    block_rows = config.block_rows
    if block_rows is None:
        fits = max(1, _BLOCK_ELEMENTS // (steps * block_channels))
        block_rows = min(_MAX_BLOCK_ROWS, _power_of_two_at_most(fits))
        block_rows = min(block_rows, pl.next_power_of_2(rows))
    _check_power_of_two("block_rows", block_rows)
    block_rows = max(block_rows, sub_rows)
    return _Layout(
        rows=rows,
        channels=channels,
        block_rows=block_rows,
        block_channels=block_channels,
        sub_rows=sub_rows,
        padded_rows=_round_up(rows, block_rows),
        padded_channels=padded_channels,
    )


def _default_sub_rows(steps: int, dtype, backend: str) -> int:
    """Rows per pass over time: a whole tile on TPU; on GPU (and in the interpreter) as many as
    keep the pass in registers."""
    if backend == "tpu":
        # 16-bit operands tile in pairs of rows on TPU: keep sub-tiles whole.
        return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)
    # On GPU the backward pass holds about 5T + 5 values per neuron in registers (u, o and their
    # gradients per step, a running sum per gradient term), each spread over the program's
    # threads: sub_rows × 128 / (32 × 4 warps) = sub_rows registers per thread and value. Past
    # the budget the time falls off a cliff, as spilling to local memory would explain (T = 16:
    # 14.0 ms with 8 rows, 2.2 ms with 2; experiments/benchmarks/results-gpu-h200-tiling.md).
    live = _GPU_LIVE_VALUES // (5 * steps + len(neuron._TERMS))
    return min(8, _power_of_two_at_most(max(1, live)))


def _power_of_two_at_most(value: int) -> int:
    """The largest power of two ≤ ``value`` (≥ 1)."""
    return pl.next_power_of_2(value + 1) // 2


def _check_power_of_two(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"glif_pallas: {name} must be a power of two, got {value}.")


def _to_tiles(a: jax.Array, layout: _Layout) -> jax.Array:
    """``(T, ..., C)`` → ``(T, R', C')``, zero-padded to whole blocks."""
    a = a.reshape(a.shape[0], layout.rows, layout.channels)
    pad = (
        (0, 0),
        (0, layout.padded_rows - layout.rows),
        (0, layout.padded_channels - layout.channels),
    )
    return jnp.pad(a, pad) if any(p for _, p in pad) else a


def _from_tiles(a: jax.Array, shape, layout: _Layout) -> jax.Array:
    return a[:, : layout.rows, : layout.channels].reshape(shape)


def _coefficient_tiles(coeffs: neuron.GLIFCoefficients, layout: _Layout):
    """The coefficients as an ``(8, C')`` array of rows and the ``(T, C')`` input scales."""
    channels = (layout.channels,)
    rows = [
        jnp.broadcast_to(c, channels)
        for c in (coeffs.decay, coeffs.leak, coeffs.hard_reset, coeffs.soft_reset, coeffs.v_th)
    ]
    dtype = coeffs.v_th.dtype
    rows += [jnp.zeros(channels, dtype)] * (_COEFFICIENT_ROWS - len(rows))
    scale = jnp.broadcast_to(
        jnp.reshape(coeffs.input_scale, (coeffs.input_scale.shape[0], -1)),
        (coeffs.input_scale.shape[0], layout.channels),
    )
    pad = ((0, 0), (0, layout.padded_channels - layout.channels))
    return jnp.pad(jnp.stack(rows), pad), jnp.pad(scale, pad)


def _kernel_coefficients(coefficient_ref, scale_ref, steps: int) -> neuron.GLIFCoefficients:
    """The coefficients of one channel block as ``(1, block_channels)`` rows."""

    def row(ref, k):
        return ref[pl.ds(k, 1), :]

    decay, leak, hard_reset, soft_reset, v_th = (row(coefficient_ref, k) for k in range(5))
    return neuron.GLIFCoefficients(
        decay=decay,
        leak=leak,
        hard_reset=hard_reset,
        soft_reset=soft_reset,
        v_th=v_th,
        input_scale=[row(scale_ref, t) for t in range(steps)],
    )


def _sub_tile_rows(i, sub_rows: int):
    return pl.ds(pl.multiple_of(i * sub_rows, sub_rows), sub_rows)


def _forward_kernel(coefficient_ref, scale_ref, x_ref, *out_refs, layout: _Layout):
    steps = x_ref.shape[0]
    coeffs = _kernel_coefficients(coefficient_ref, scale_ref, steps)

    def sub_tile(i, carry):
        rows = _sub_tile_rows(i, layout.sub_rows)
        us, os = neuron._forward_trace([x_ref[t, rows, :] for t in range(steps)], coeffs)
        for t in range(steps):
            out_refs[0][t, rows, :] = os[t].astype(out_refs[0].dtype)
            if len(out_refs) > 1:
                out_refs[1][t, rows, :] = us[t]
        return carry

    jax.lax.fori_loop(0, layout.block_rows // layout.sub_rows, sub_tile, 0)


def _backward_kernel(
    coefficient_ref, scale_ref, x_ref, g_ref, *refs, layout: _Layout, surrogate, detach: bool
):
    g_membrane_ref, dx_ref, sums_ref = refs if len(refs) == 3 else (None, *refs)
    steps = x_ref.shape[0]
    coeffs = _kernel_coefficients(coefficient_ref, scale_ref, steps)
    terms = len(neuron._TERMS) + steps

    def sub_tile(i, sums):
        rows = _sub_tile_rows(i, layout.sub_rows)

        def per_step(ref):
            return None if ref is None else [ref[t, rows, :] for t in range(steps)]

        xs = per_step(x_ref)
        us, os = neuron._forward_trace(xs, coeffs)
        gus, gvs = neuron._reverse_trace(
            us, os, per_step(g_ref), per_step(g_membrane_ref), coeffs, surrogate, detach
        )
        for t in range(steps):
            dx_ref[t, rows, :] = (gus[t] * coeffs.input_scale[t]).astype(dx_ref.dtype)
        found = neuron._trace_terms(xs, us, os, gus, gvs, coeffs)
        return tuple(s + f for s, f in zip(sums, found, strict=True))

    dtype = coefficient_ref.dtype
    zeros = jnp.zeros((layout.sub_rows, layout.block_channels), dtype)
    sums = jax.lax.fori_loop(0, layout.block_rows // layout.sub_rows, sub_tile, (zeros,) * terms)
    for k, s in enumerate(sums):
        sums_ref[0, pl.ds(k, 1), :] = jnp.sum(s, axis=0, keepdims=True)


def _compiler_params(config: PallasConfig):
    if config.interpret:
        return None
    if config.backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    if config.backend == "gpu":
        from jax.experimental.pallas import triton as pltriton

        num_warps = config.num_warps or 4
        _check_power_of_two("num_warps", num_warps)
        return pltriton.CompilerParams(num_warps=num_warps, num_stages=1)
    return None


def _grid(layout: _Layout) -> tuple[int, int]:
    return (
        layout.padded_rows // layout.block_rows,
        layout.padded_channels // layout.block_channels,
    )


def _pallas_call(kernel, operands, outputs, output_specs, config: PallasConfig, layout: _Layout):
    """``pallas_call`` over (row blocks, channel blocks) of the coefficient rows, the input scales
    and the tiled ``(T, R', C')`` operands."""
    steps = operands[1].shape[0]
    tile = _tile_spec(layout, steps)
    in_specs = [
        pl.BlockSpec((_COEFFICIENT_ROWS, layout.block_channels), lambda i, j: (0, j)),
        pl.BlockSpec((steps, layout.block_channels), lambda i, j: (0, j)),
    ] + [tile] * (len(operands) - 2)
    return pl.pallas_call(
        kernel,
        out_shape=outputs,
        grid=_grid(layout),
        in_specs=in_specs,
        out_specs=output_specs,
        interpret=config.interpret,
        compiler_params=_compiler_params(config),
    )(*operands)


def _tile_spec(layout: _Layout, steps: int) -> pl.BlockSpec:
    return pl.BlockSpec((steps, layout.block_rows, layout.block_channels), lambda i, j: (0, i, j))


def _forward(x, coeffs: neuron.GLIFCoefficients, return_membrane: bool, config: PallasConfig):
    layout = _layout(x, config)
    steps = x.shape[0]
    shape = (steps, layout.padded_rows, layout.padded_channels)
    outputs = [jax.ShapeDtypeStruct(shape, x.dtype)]
    if return_membrane:
        outputs.append(jax.ShapeDtypeStruct(shape, coeffs.v_th.dtype))
    operands = (*_coefficient_tiles(coeffs, layout), _to_tiles(x, layout))
    kernel = functools.partial(_forward_kernel, layout=layout)
    specs = [_tile_spec(layout, steps)] * len(outputs)
    results = _pallas_call(kernel, operands, outputs, specs, config, layout)
    results = [_from_tiles(r, x.shape, layout) for r in results]
    return tuple(results) if return_membrane else results[0]


def _backward(x, coeffs, g_spikes, g_membrane, surrogate, detach: bool, config: PallasConfig):
    layout = _layout(x, config)
    steps = x.shape[0]
    dtype = coeffs.v_th.dtype
    terms = len(neuron._TERMS) + steps
    # A power of two (Triton) of at least 8 (a TPU tile) rows of sums per program.
    term_rows = max(8, pl.next_power_of_2(terms))
    blocks = _grid(layout)[0]
    outputs = [
        jax.ShapeDtypeStruct((steps, layout.padded_rows, layout.padded_channels), x.dtype),
        jax.ShapeDtypeStruct((blocks, term_rows, layout.padded_channels), dtype),
    ]
    specs = [
        _tile_spec(layout, steps),
        pl.BlockSpec((1, term_rows, layout.block_channels), lambda i, j: (i, 0, j)),
    ]
    operands = (
        *_coefficient_tiles(coeffs, layout),
        _to_tiles(x, layout),
        _to_tiles(g_spikes, layout),
    )
    if g_membrane is not None:
        operands += (_to_tiles(g_membrane.astype(dtype), layout),)
    kernel = functools.partial(_backward_kernel, layout=layout, surrogate=surrogate, detach=detach)
    dx, sums = _pallas_call(kernel, operands, outputs, specs, config, layout)
    sums = jnp.sum(sums, axis=0)[:terms, : layout.channels]
    if not jnp.ndim(coeffs.v_th):
        sums = jnp.sum(sums, axis=-1)
    return _from_tiles(dx, x.shape, layout), neuron._coefficient_gradients(sums, coeffs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _glif_pallas(x, coeffs, surrogate, detach_reset, return_membrane, config):
    return _forward(x, coeffs, return_membrane, config)


def _glif_pallas_fwd(x, coeffs, surrogate, detach_reset, return_membrane, config):
    # As the fused path: only the input is kept, the backward kernel recomputes the membrane.
    return _forward(x, coeffs, return_membrane, config), (x, coeffs)


def _glif_pallas_bwd(surrogate, detach_reset, return_membrane, config, residuals, cotangents):
    x, coeffs = residuals
    g_spikes, g_membrane = cotangents if return_membrane else (cotangents, None)
    return _backward(x, coeffs, g_spikes, g_membrane, surrogate, detach_reset, config)


_glif_pallas.defvjp(_glif_pallas_fwd, _glif_pallas_bwd)
