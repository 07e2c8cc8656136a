"""GLIF over time as Pallas kernels, forward and backward: the ``"pallas"`` implementation.

The kernels run the step functions of :mod:`glif_jax.equations` on tiles of neurons,
compiled through Triton on GPU and Mosaic on TPU (elsewhere they run in Pallas's interpreter, for
testing):

* the input ``(T, ..., C)`` is viewed as ``(T, R, C)``, R the neurons of one channel, and padded
  to whole blocks of ``block_rows × block_channels`` (powers of two; multiples of (8, 128) on TPU,
  or the whole padded channel axis when it is narrower than 128);
* the grid runs over (row blocks, channel blocks); each program loops over sub-tiles of
  ``sub_rows`` rows and runs the whole time loop on each sub-tile, unrolled;
* the forward kernel writes the spikes (and the membrane when asked) and keeps only ``x`` for the
  backward pass;
* the backward kernel recomputes the membrane, writes dx and, per program, the column sums of
  every :class:`~glif_jax.equations.GradientTerms` row, which are summed over the row
  blocks outside the kernel.

On GPU every value of a sub-tile's time loop and the running sums live in registers, so the
default ``sub_rows`` shrinks as T grows (:func:`_default_sub_rows`); on TPU a sub-tile is one
whole (8, 128) tile (16 rows for 16-bit inputs).

**Data parallelism.** A Pallas call is a custom call that XLA's SPMD partitioner cannot split.
When a mesh is set in context (``jax.set_mesh(mesh)``, as ``experiments/train.py`` does), the
kernels run under ``jax.shard_map`` over its axes: the batch axis of ``x`` (axis 1) is split over
every mesh axis, each device runs both kernels on its own shard, and the only communication is the
``psum`` of the parameter-gradient sums in the backward pass. A batch that the mesh cannot split
evenly runs the kernels on the whole batch instead (XLA gathers it onto every device); the
``"auto"`` choice (:mod:`glif_jax.kernels.select`) takes another path then.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

from glif_jax import equations, placement, surrogates
from glif_jax.equations import GLIFCoefficients, GradientTerms

__all__ = ["MAX_STEPS", "Pallas", "shard_plan"]

MAX_STEPS = 16
"""The longest T the kernels have been compiled and timed with on a GPU; they unroll the whole time
loop, so ``"auto"`` does not choose them beyond it."""

_LANES = 128  # channels per block: the TPU lane width, and a power of two for Triton
_COEFFICIENT_ROWS = 8  # decay, leak, hard reset, soft reset, threshold, padded to a TPU tile
_COEFFICIENT_FIELDS = tuple(
    f.name for f in dataclasses.fields(GLIFCoefficients) if f.name != "input_scale"
)
_BLOCK_ELEMENTS = 2**16  # T × block_rows × block_channels at most: 256 KiB per fp32 operand
_MAX_BLOCK_ROWS = 256
_GPU_LIVE_VALUES = 256  # registers per thread for the time loop's values, see _default_sub_rows


def _check_power_of_two(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"Pallas: {name} must be a power of two, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Pallas:
    """The Pallas implementation of the GLIF time loop, and how its kernels are tiled.

    Every field left ``None`` is chosen from the input and the backend.

    Attributes:
      block_rows: rows (neurons of a channel) per program, a power of two.
      sub_rows: rows of the sub-tile that one pass of the unrolled time loop holds, a power of
        two (on TPU a multiple of a whole tile: 8 rows, 16 for 16-bit inputs).
      num_warps: warps per program on GPU, a power of two (default 4).
      backend: ``"gpu"``, ``"tpu"``, or anything else for Pallas's interpreter; ``None`` for
        :func:`glif_jax.placement.platform`.
      interpret: run in Pallas's interpreter (``None``: whenever the backend is not GPU or TPU).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from glif_jax import kernels, neuron
      >>> params = neuron.init_params(16, 4, key=jax.random.key(0))
      >>> x = jnp.ones((4, 8, 16))
      >>> spikes = neuron.glif(params, x, implementation=kernels.Pallas(block_rows=8))
      >>> bool((spikes == neuron.glif(params, x, implementation="scan")).all())
      True
    """

    name: ClassVar[str] = "pallas"
    block_rows: int | None = None
    sub_rows: int | None = None
    num_warps: int | None = None
    backend: str | None = None
    interpret: bool | None = None

    def __post_init__(self):
        for field in ("block_rows", "sub_rows", "num_warps"):
            value = getattr(self, field)
            if value is not None:
                _check_power_of_two(field, value)

    def __call__(
        self,
        x: jax.Array,
        coeffs: GLIFCoefficients,
        *,
        surrogate: surrogates.Surrogate,
        detach_reset: bool,
        return_membrane: bool,
    ):
        """Spikes ``(T, ..., C)`` in ``x``'s dtype, and with ``return_membrane`` the membrane in
        the coefficients' dtype; differentiable with respect to ``x`` and ``coeffs``."""
        backend = self.backend or placement.platform()
        interpret = backend not in ("gpu", "tpu") if self.interpret is None else self.interpret
        config = dataclasses.replace(self, backend=backend, interpret=interpret)
        return _glif_pallas(
            x, coeffs, surrogate, detach_reset, return_membrane, config, shard_plan(x.shape)
        )


def shard_plan(shape: tuple[int, ...]) -> placement.BatchSplit | None:
    """How the kernels split an input of ``shape`` ``(T, B, ..., C)`` over the mesh in context
    (:func:`glif_jax.placement.batch_split` of B), or ``None`` to run them on the whole batch."""
    if len(shape) < 3:
        return None
    return placement.batch_split(shape[1])


class _Layout(NamedTuple):
    """Static tiling of a ``(T, R, C)`` problem."""

    rows: int
    channels: int
    block_rows: int
    block_channels: int
    sub_rows: int
    padded_rows: int
    padded_channels: int


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _power_of_two_at_most(value: int) -> int:
    """The largest power of two ≤ ``value`` (≥ 1)."""
    return pl.next_power_of_2(value + 1) // 2


def _default_sub_rows(steps: int, dtype, backend: str) -> int:
    """Rows per pass over time: a whole tile on TPU; on GPU (and in the interpreter) as many as
    keep the pass in registers."""
    if backend == "tpu":
        # 16-bit operands tile in pairs of rows on TPU: keep sub-tiles whole.
        return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)
    # On GPU the backward pass holds about 5T + 5 values per neuron in registers (u, o and their
    # gradients per step, a running sum per named gradient term), each spread over the program's
    # threads: sub_rows × 128 / (32 × 4 warps) = sub_rows registers per thread and value. Past the
    # budget values spill to local memory and the time falls off a cliff
    # (experiments/benchmarks/results-gpu-h200-tiling.md).
    named_terms = len(GradientTerms._fields) - 1
    live = _GPU_LIVE_VALUES // (5 * steps + named_terms)
    return min(8, _power_of_two_at_most(max(1, live)))


def _layout(x: jax.Array, config: Pallas) -> _Layout:
    steps, channels = x.shape[0], x.shape[-1]
    rows = math.prod(x.shape[1:-1])
    sub_rows = config.sub_rows or _default_sub_rows(steps, x.dtype, config.backend)
    if config.backend == "tpu" and not config.interpret:
        tile_rows = _default_sub_rows(steps, x.dtype, "tpu")
        if sub_rows % tile_rows:
            raise ValueError(
                f"Pallas: sub_rows on TPU must be a multiple of {tile_rows} for {x.dtype} inputs, "
                f"got {sub_rows}."
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
        block_rows = min(_MAX_BLOCK_ROWS, _power_of_two_at_most(fits), pl.next_power_of_2(rows))
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


def _coefficient_tiles(c: GLIFCoefficients, layout: _Layout):
    """The coefficients as an ``(8, C')`` array of rows and the ``(T, C')`` input scales."""
    channels = (layout.channels,)
    rows = [jnp.broadcast_to(getattr(c, name), channels) for name in _COEFFICIENT_FIELDS]
    rows += [jnp.zeros(channels, c.v_th.dtype)] * (_COEFFICIENT_ROWS - len(rows))
    steps = c.input_scale.shape[0]
    scale = jnp.broadcast_to(jnp.reshape(c.input_scale, (steps, -1)), (steps, layout.channels))
    pad = ((0, 0), (0, layout.padded_channels - layout.channels))
    return jnp.pad(jnp.stack(rows), pad), jnp.pad(scale, pad)


def _kernel_coefficients(coefficient_ref, scale_ref, steps: int) -> GLIFCoefficients:
    """The coefficients of one channel block as ``(1, block_channels)`` rows."""

    def row(ref, k):
        return ref[pl.ds(k, 1), :]

    named = {name: row(coefficient_ref, k) for k, name in enumerate(_COEFFICIENT_FIELDS)}
    return GLIFCoefficients(**named, input_scale=[row(scale_ref, t) for t in range(steps)])


def _sub_tile_rows(i, sub_rows: int):
    return pl.ds(pl.multiple_of(i * sub_rows, sub_rows), sub_rows)


def _forward_kernel(coefficient_ref, scale_ref, x_ref, *out_refs, layout: _Layout):
    steps = x_ref.shape[0]
    c = _kernel_coefficients(coefficient_ref, scale_ref, steps)

    def sub_tile(i, carry):
        rows = _sub_tile_rows(i, layout.sub_rows)
        us, os = equations.forward_trace([x_ref[t, rows, :] for t in range(steps)], c)
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
    c = _kernel_coefficients(coefficient_ref, scale_ref, steps)

    def sub_tile(i, sums):
        rows = _sub_tile_rows(i, layout.sub_rows)

        def per_step(ref):
            return None if ref is None else [ref[t, rows, :] for t in range(steps)]

        xs = per_step(x_ref)
        us, os = equations.forward_trace(xs, c)
        g_us, g_vs = equations.reverse_trace(
            us, os, per_step(g_ref), per_step(g_membrane_ref), c, surrogate, detach
        )
        for t in range(steps):
            dx_ref[t, rows, :] = (g_us[t] * c.input_scale[t]).astype(dx_ref.dtype)
        found = equations.trace_terms(xs, us, os, g_us, g_vs, c).rows()
        return tuple(s + f for s, f in zip(sums, found, strict=True))

    zeros = jnp.zeros((layout.sub_rows, layout.block_channels), coefficient_ref.dtype)
    count = GradientTerms.count(steps)
    sums = jax.lax.fori_loop(0, layout.block_rows // layout.sub_rows, sub_tile, (zeros,) * count)
    for k, s in enumerate(sums):
        sums_ref[0, pl.ds(k, 1), :] = jnp.sum(s, axis=0, keepdims=True)


def _compiler_params(config: Pallas):
    if config.interpret:
        return None
    if config.backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    if config.backend == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=config.num_warps or 4, num_stages=1)
    return None


def _grid(layout: _Layout) -> tuple[int, int]:
    return (
        layout.padded_rows // layout.block_rows,
        layout.padded_channels // layout.block_channels,
    )


def _tile_spec(layout: _Layout, steps: int) -> pl.BlockSpec:
    return pl.BlockSpec((steps, layout.block_rows, layout.block_channels), lambda i, j: (0, i, j))


def _pallas_call(kernel, operands, outputs, output_specs, config: Pallas, layout: _Layout):
    """``pallas_call`` over (row blocks, channel blocks) of the coefficient rows, the input scales
    and the tiled ``(T, R', C')`` operands."""
    steps = operands[1].shape[0]
    in_specs = [
        pl.BlockSpec((_COEFFICIENT_ROWS, layout.block_channels), lambda i, j: (0, j)),
        pl.BlockSpec((steps, layout.block_channels), lambda i, j: (0, j)),
    ] + [_tile_spec(layout, steps)] * (len(operands) - 2)
    return pl.pallas_call(
        kernel,
        out_shape=outputs,
        grid=_grid(layout),
        in_specs=in_specs,
        out_specs=output_specs,
        interpret=config.interpret,
        compiler_params=_compiler_params(config),
    )(*operands)


def _forward_shard(x, c: GLIFCoefficients, return_membrane: bool, config: Pallas):
    layout = _layout(x, config)
    steps = x.shape[0]
    shape = (steps, layout.padded_rows, layout.padded_channels)
    outputs = [jax.ShapeDtypeStruct(shape, x.dtype)]
    if return_membrane:
        outputs.append(jax.ShapeDtypeStruct(shape, c.v_th.dtype))
    operands = (*_coefficient_tiles(c, layout), _to_tiles(x, layout))
    kernel = functools.partial(_forward_kernel, layout=layout)
    specs = [_tile_spec(layout, steps)] * len(outputs)
    results = _pallas_call(kernel, operands, outputs, specs, config, layout)
    results = tuple(_from_tiles(r, x.shape, layout) for r in results)
    return results if return_membrane else results[0]


def _backward_shard(x, c, g_spikes, g_membrane, surrogate, detach: bool, config: Pallas):
    """This shard's dx and the column sums of every gradient term over its neurons, ``(K, C)``."""
    layout = _layout(x, config)
    steps = x.shape[0]
    count = GradientTerms.count(steps)
    # A power of two (Triton) of at least 8 (a TPU tile) rows of sums per program.
    term_rows = max(8, pl.next_power_of_2(count))
    outputs = [
        jax.ShapeDtypeStruct((steps, layout.padded_rows, layout.padded_channels), x.dtype),
        jax.ShapeDtypeStruct((_grid(layout)[0], term_rows, layout.padded_channels), c.v_th.dtype),
    ]
    specs = [
        _tile_spec(layout, steps),
        pl.BlockSpec((1, term_rows, layout.block_channels), lambda i, j: (i, 0, j)),
    ]
    operands = (*_coefficient_tiles(c, layout), _to_tiles(x, layout), _to_tiles(g_spikes, layout))
    if g_membrane is not None:
        operands += (_to_tiles(g_membrane.astype(c.v_th.dtype), layout),)
    kernel = functools.partial(_backward_kernel, layout=layout, surrogate=surrogate, detach=detach)
    dx, sums = _pallas_call(kernel, operands, outputs, specs, config, layout)
    return _from_tiles(dx, x.shape, layout), jnp.sum(sums, axis=0)[:count, : layout.channels]


def _forward(x, c, return_membrane: bool, config: Pallas, plan: placement.BatchSplit | None):
    run = functools.partial(_forward_shard, return_membrane=return_membrane, config=config)
    if plan is None:
        return run(x, c)
    out_specs = (plan.spec(1), plan.spec(1)) if return_membrane else plan.spec(1)
    # check_vma=False: the bodies are per-device programs whose outputs are sharded as declared.
    return jax.shard_map(
        run, mesh=plan.mesh, in_specs=(plan.spec(1), P()), out_specs=out_specs, check_vma=False
    )(x, c)


def _backward(
    x, c, g_spikes, g_membrane, surrogate, detach, config, plan: placement.BatchSplit | None
):
    def run(x, c, g_spikes, g_membrane):
        dx, sums = _backward_shard(x, c, g_spikes, g_membrane, surrogate, detach, config)
        if plan is not None:
            sums = jax.lax.psum(sums, plan.axes)
        return dx, sums

    if plan is not None:
        spec = plan.spec(1)
        run = jax.shard_map(
            run,
            mesh=plan.mesh,
            in_specs=(spec, P(), spec, P() if g_membrane is None else spec),
            out_specs=(spec, P()),
            check_vma=False,
        )
    dx, sums = run(x, c, g_spikes, g_membrane)
    if not jnp.ndim(c.v_th):
        sums = jnp.sum(sums, axis=-1)
    return dx, equations.coefficient_gradients(GradientTerms.from_rows(list(sums)), c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _glif_pallas(x, c, surrogate, detach_reset, return_membrane, config, plan):
    return _forward(x, c, return_membrane, config, plan)


def _glif_pallas_fwd(x, c, surrogate, detach_reset, return_membrane, config, plan):
    # Only the input is kept: the backward kernel recomputes the membrane.
    return _forward(x, c, return_membrane, config, plan), (x, c)


def _glif_pallas_bwd(surrogate, detach_reset, return_membrane, config, plan, residuals, cotangents):
    x, c = residuals
    g_spikes, g_membrane = cotangents if return_membrane else (cotangents, None)
    return _backward(x, c, g_spikes, g_membrane, surrogate, detach_reset, config, plan)


_glif_pallas.defvjp(_glif_pallas_fwd, _glif_pallas_bwd)
