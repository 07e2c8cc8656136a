"""Spike activity and energy of a spiking network: firing rates, synaptic operations, energy.

The field's standard accounting (Yao et al., "Attention Spiking Neural Networks", TPAMI 2023; Zhou
et al., Spikformer, ICLR 2023), for any NNX network built from glif_jax layers, or from
:class:`glif_jax.nn.GLIF` with Flax's ``nnx.Conv`` and ``nnx.Linear``:

* **MACs** of a layer, per image and time step, from its shapes: a convolution
  k_h·k_w·(C_in/groups)·C_out·H_out·W_out, a linear layer in·out, counted once per frame it is
  applied to;
* a layer whose input is **spikes** does one accumulate per input spike and connection:
  **SOPs** = T · r · MACs per image, r the input's firing rate (spikes per neuron per time step,
  measured on the actual inputs). Spike counts (SEW's ADD blocks, event frames) and spikes
  averaged by a pooling window of up to 8×8 neurons count as spikes, with r their mean: the
  firing rate of the neurons that feed the pool;
* a layer whose input is **analog** (pixels, membrane potentials, BN outputs) does dense
  multiply-accumulates: its MACs every time step, or once when its input is the same at every
  step (direct encoding: the image repeated over T);
* **energy** = E_MAC · dense MACs + E_AC · SOPs, with E_MAC = 4.6 pJ and E_AC = 0.9 pJ (45 nm
  CMOS, Horowitz 2014), against E_MAC · MACs of the same network as an ANN (T = 1, every layer
  dense, applied once per image);
* normalisation (folded into the preceding layer's weights at inference), pooling and the neurons'
  own updates are listed, at zero operations, as the convention counts them.

Beside it, since operations alone understate what an SNN costs (Yan et al., "Reconsidering the
energy efficiency of spiking neural networks", 2024), the **memory traffic** of every layer per
image: the bytes of its weights (read at every step it runs), its input (spikes at ``spike_bits``
bits per value, anything else at its dtype's bytes), its membrane state (a GLIF layer reads and
writes its neurons' membranes at every step) and its output, the same for the network as an ANN,
and a second energy figure, operations + E_byte · bytes (E_byte = 1.25 pJ per byte of an 8 KB
SRAM in 45 nm, Horowitz 2014). The operation counts above do not depend on it.

The counts come from one instrumented forward pass: while :func:`activity` runs, ``nnx.Conv``,
``nnx.Linear``, :class:`~glif_jax.nn.GLIF`, :class:`~glif_jax.nn.TDBatchNorm`, ``nnx.BatchNorm``
and glif_jax's ``AvgPool`` record their shapes and the sums of their inputs (and the GLIF layers
the spikes of every time step) as ``nnx`` intermediates. It runs under ``jit``; over a dataset
(:func:`analyze`) only those sums are kept, never the spikes.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from glif_jax import analysis, models
  >>> net = models.create("spiking_cnn", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))
  >>> net.eval()
  >>> report = analysis.analyze(net, [jnp.ones((2, 8, 8, 1))])
  >>> [layer["kind"] for layer in report["layers"]][:3]
  ['conv', 'batch_norm', 'glif']
  >>> report["totals"]["ann_macs"] == sum(layer["ann_macs"] for layer in report["layers"])
  True
  >>> sorted(report["totals"]["memory"])[:4]
  ['ann_bytes', 'ann_energy_j', 'ann_input_bytes', 'ann_output_bytes']
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glif_jax import nn as gnn

__all__ = [
    "ENERGY_PER_AC_J",
    "ENERGY_PER_DRAM_BYTE_J",
    "ENERGY_PER_MAC_J",
    "ENERGY_PER_SRAM_BYTE_J",
    "Activity",
    "activity",
    "analyze",
    "count_macs",
    "layer_table",
    "memory_table",
    "si_format",
    "summary_table",
    "verdict_table",
]

ENERGY_PER_MAC_J = 4.6e-12
"""Energy of a 32-bit floating-point multiply-accumulate in 45 nm CMOS (Horowitz 2014), joules."""

ENERGY_PER_AC_J = 0.9e-12
"""Energy of a 32-bit floating-point accumulate in 45 nm CMOS (Horowitz 2014), joules."""

# M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, energy
# table for 45 nm at 0.9 V: a 64-bit read from an 8 KB SRAM cache costs 10 pJ, and a 64-bit DRAM
# access 1.3–2.6 nJ; Han et al., "Learning both weights and connections for efficient neural
# networks" (NeurIPS 2015, Fig. 1) tabulate the same figures per 32-bit word: 5 pJ (SRAM) and
# 640 pJ (DRAM). Per byte: 10 pJ / 8 B = 5 pJ / 4 B = 1.25 pJ, and 640 pJ / 4 B = 160 pJ.
ENERGY_PER_SRAM_BYTE_J = 1.25e-12
"""Energy of moving one byte to or from an 8 KB SRAM in 45 nm CMOS (Horowitz 2014), joules: the
default E_byte, every byte on chip."""

ENERGY_PER_DRAM_BYTE_J = 160e-12
"""Energy of moving one byte to or from DRAM (Horowitz 2014, 640 pJ per 32-bit word), joules:
E_byte for a network whose weights and maps do not fit on chip."""


class Activity(nnx.Intermediate):
    """What a layer recorded during an instrumented forward pass: sums over it."""


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A layer's static description, found while the forward pass is traced."""

    name: str  # its dotted path in the model
    kind: str  # conv, linear, glif, batch_norm, pool
    input_shape: tuple[int, ...]  # of one frame (one image at one time step)
    output_shape: tuple[int, ...]
    macs_per_frame: int
    frames_per_image: float  # T when it runs on every step, 1 when on a time average
    weight_values: float = 0  # parameter values one application reads
    weight_bytes: float = 0  # the same, in bytes at the parameters' dtypes
    input_itemsize: int = 4  # bytes of one value of its input and output, as traced
    output_itemsize: int = 4


def _frame_axes(x: jax.Array, kind: str) -> int:
    """How many leading axes of a layer's input index frames (time and batch)."""
    if kind == "glif":
        return 2  # (T, B, ..., C)
    if kind == "linear" or x.ndim < 4:
        return x.ndim - 1  # (..., F)
    return x.ndim - 3  # (..., H, W, C)


def _macs(module, kind: str, x: jax.Array, y: jax.Array) -> int:
    """Multiply-accumulates of one frame: k_h·k_w·(C_in/groups)·C_out·H_out·W_out, or in·out."""
    if kind == "conv":
        kernel = module.kernel.get_value().shape  # (*window, C_in / groups, C_out)
        return math.prod(kernel) * math.prod(y.shape[_frame_axes(x, kind) : -1])
    if kind == "linear":
        return x.shape[-1] * y.shape[-1]
    return 0


def _weights(module, kind: str) -> tuple[float, float]:
    """The parameter values that one application of a layer reads, and their bytes.

    A convolution or linear layer reads its kernel and bias. A GLIF layer reads its per-channel
    parameters and, of ``conduct`` (one row per time step), the row of the step. Normalisation is
    folded into the preceding layer's weights and pooling has none: zero.
    """
    if kind not in ("conv", "linear", "glif"):
        return 0.0, 0.0
    values = nbytes = 0.0
    for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        array = variable.get_value()
        size = float(math.prod(array.shape))
        if kind == "glif" and path[-1] == "conduct" and array.ndim:
            size /= array.shape[0]
        values += size
        nbytes += size * jnp.dtype(array.dtype).itemsize
    return values, nbytes


POOLING_WINDOWS = (1, 4, 9, 16, 25, 36, 49, 64)
"""Window sizes (neurons averaged) whose averages of spikes still count as spike input."""


def _spike_derived(x: jax.Array) -> jax.Array:
    """Whether ``x`` is spikes, spike counts, or spikes averaged over a pooling window of
    :data:`POOLING_WINDOWS` neurons: non-negative multiples of 1/n for one such n."""
    on_grid = [jnp.all(jnp.abs(x * n - jnp.round(x * n)) <= 1e-3) for n in POOLING_WINDOWS]
    return jnp.all(x >= 0) & jnp.any(jnp.stack(on_grid))


def _sums(x: jax.Array, frames: int, time_steps: int, batch: int) -> dict[str, jax.Array]:
    """The sums of a layer's input that the report needs: its total and size, whether it is
    spike-derived (:func:`_spike_derived`), and whether every time step sees the same values."""
    xf = x.astype(jnp.float32)
    sums = {
        "input_sum": jnp.sum(xf),
        "input_size": jnp.asarray(x.size, jnp.float32),
        "spiking": _spike_derived(xf).astype(jnp.float32),
        "repeated": jnp.zeros((), jnp.float32),
        "calls": jnp.ones((), jnp.float32),
    }
    if time_steps > 1 and frames == time_steps * batch:
        steps = xf.reshape(time_steps, -1)  # time-major: row t holds every frame of step t
        sums["repeated"] = jnp.all(steps == steps[:1]).astype(jnp.float32)
    return sums


def _add(a, b):
    return a + b


def _recorded_classes() -> tuple[tuple[type, str], ...]:
    """The layer classes an instrumented pass records, and their kind."""
    from glif_jax.models.layers import AvgPool

    return (
        (nnx.Conv, "conv"),
        (nnx.Linear, "linear"),
        (gnn.GLIF, "glif"),
        (gnn.TDBatchNorm, "batch_norm"),
        (nnx.BatchNorm, "batch_norm"),
        (AvgPool, "pool"),
    )


@contextlib.contextmanager
def _instrumented(table: list[_Layer], paths: dict[int, str], time_steps: int, batch: int):
    """While the block runs, the recorded layer classes sow :class:`Activity`, and describe
    themselves in ``table``, in call order, on their first call. Flax's own ``nnx.capture``
    wraps methods the same way."""
    seen = set()
    originals = {}

    def instrument(cls: type, kind: str) -> None:
        original = cls.__call__

        def call(self, x, *args, **kwargs):
            y = original(self, x, *args, **kwargs)
            out = y[0] if isinstance(y, tuple) else y
            axes = _frame_axes(x, kind)
            frames = math.prod(x.shape[:axes])
            if id(self) not in seen:
                seen.add(id(self))
                weight_values, weight_bytes = _weights(self, kind)
                layer = _Layer(
                    name=paths.get(id(self), f"<{kind}>"),
                    kind=kind,
                    input_shape=tuple(x.shape[axes:]),
                    output_shape=tuple(out.shape[axes:]),
                    macs_per_frame=_macs(self, kind, x, out),
                    frames_per_image=frames / batch,
                    weight_values=weight_values,
                    weight_bytes=weight_bytes,
                    input_itemsize=jnp.dtype(x.dtype).itemsize,
                    output_itemsize=jnp.dtype(out.dtype).itemsize,
                )
                table.append(layer)
            sums = _sums(x, frames, time_steps, batch)
            if kind == "glif":
                steps = out.astype(jnp.float32).reshape(out.shape[0], -1)
                sums["output_per_step"] = jnp.sum(steps, axis=1)
                sums["output_size_per_step"] = jnp.asarray(steps.shape[1], jnp.float32)
            for key, value in sums.items():
                self.sow(Activity, key, value, reduce_fn=_add, init_fn=lambda: 0.0)
            return y

        originals[cls] = original
        cls.__call__ = call

    for cls, kind in _recorded_classes():
        instrument(cls, kind)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def _time_steps(model: nnx.Module, time_steps: int | None) -> int:
    if time_steps is not None:
        return int(time_steps)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, gnn.GLIF):
            return int(module.time_steps)
    raise ValueError(
        "analysis: the model has no glif_jax.nn.GLIF layer to read T from; pass time_steps=T."
    )


class _Recorder:
    """The instrumented forward pass of one model, jitted, and its table of layers."""

    def __init__(self, model: nnx.Module, time_steps: int, *, evaluation: bool = False):
        self.graph, self.state = nnx.split(model)
        self.time_steps = time_steps
        self.evaluation = evaluation
        self.table: list[_Layer] = []
        self._forward = jax.jit(self._run)

    def _run(self, state, inputs):
        model = nnx.merge(self.graph, state)
        if self.evaluation:
            model.eval()  # a copy: the shapes are the same, and no statistics to update
        paths = {id(m): ".".join(map(str, p)) for p, m in nnx.iter_modules(model)}
        table: list[_Layer] = []
        batch = jax.tree.leaves(inputs)[0].shape[0]
        with _instrumented(table, paths, self.time_steps, batch):
            _, recorded = nnx.capture(model, Activity)(inputs)
        self.table = table
        sums: dict[str, dict[str, jax.Array]] = {}
        for path, value in nnx.to_flat_state(recorded):
            sums.setdefault(".".join(map(str, path[:-1])), {})[str(path[-1])] = value.get_value()
        return sums

    def __call__(self, inputs) -> dict[str, dict[str, jax.Array]]:
        return self._forward(self.state, inputs)

    def trace(self, inputs) -> None:
        """Trace the forward pass for (abstract) ``inputs`` without running it."""
        jax.eval_shape(self._run, self.state, inputs)


def activity(model: nnx.Module, inputs, *, time_steps: int | None = None):
    """The activity sums of one forward pass of ``model`` on ``inputs``, per layer path.

    Args:
      model: an NNX network (in the mode it should be measured in, usually after
        ``model.eval()``).
      inputs: its input, e.g. images ``(B, H, W, C)``.
      time_steps: T; read from the model's first GLIF layer when ``None``.

    Returns:
      ``{layer path: {name: value}}``: ``input_sum``, ``input_size``, ``spiking`` (1 if the input
      was spike-derived: spikes, counts, or pooled spikes), ``repeated`` (1 if every time step
      saw the same input) and ``calls`` for every recorded layer, and ``output_per_step``
      ``(T,)`` and ``output_size_per_step`` (the spikes and the neurons of each step) for the
      GLIF layers.
    """
    recorder = _Recorder(model, _time_steps(model, time_steps))
    return jax.device_get(recorder(inputs))


def layer_table(
    model: nnx.Module, input_shape, dtype=jnp.float32, *, time_steps: int | None = None
) -> list[dict[str, Any]]:
    """Every recorded layer of ``model`` from the shapes alone: the forward pass is traced with
    ``jax.eval_shape``, not run, so any size works on a CPU.

    Args:
      model: the network.
      input_shape: the shape of a batch of its inputs, e.g. ``(1, 224, 224, 3)``.
      dtype: the inputs' dtype.
      time_steps: T, when the model has no GLIF layer to read it from.

    Returns:
      In network order, per layer: ``name``, ``kind``, ``input_shape`` and ``output_shape`` (of
      one frame), ``macs_per_frame`` and ``macs`` (per image and time step).
    """
    steps = _time_steps(model, time_steps)
    recorder = _Recorder(model, steps, evaluation=True)
    recorder.trace(jax.ShapeDtypeStruct(tuple(input_shape), dtype))
    return [
        {
            "name": layer.name,
            "kind": layer.kind,
            "input_shape": layer.input_shape,
            "output_shape": layer.output_shape,
            "macs_per_frame": layer.macs_per_frame,
            "macs": layer.macs_per_frame * layer.frames_per_image / steps,
        }
        for layer in recorder.table
    ]


def count_macs(model: nnx.Module, input_shape, dtype=jnp.float32, *, time_steps=None):
    """The MACs per image and time step of every conv and linear layer, from the shapes alone
    (:func:`layer_table`).

    Returns:
      ``[(layer path, kind, MACs per image and time step)]`` in network order.
    """
    table = layer_table(model, input_shape, dtype, time_steps=time_steps)
    return [(t["name"], t["kind"], t["macs"]) for t in table if t["kind"] in ("conv", "linear")]


def analyze(
    model: nnx.Module,
    batches: Iterable[Any],
    *,
    time_steps: int | None = None,
    energy_per_mac_j: float = ENERGY_PER_MAC_J,
    energy_per_ac_j: float = ENERGY_PER_AC_J,
    energy_per_byte_j: float = ENERGY_PER_SRAM_BYTE_J,
    spike_bits: float = 1,
    value_bytes: float | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, Any]:
    """Firing rates, MACs, SOPs, memory traffic and energy of ``model`` over ``batches``, per
    layer and in total.

    Only the per-layer sums are kept between batches, never the spikes.

    Args:
      model: the network, in the mode to measure (usually after ``model.eval()``).
      batches: an iterable of its inputs, e.g. image batches ``(B, H, W, C)``.
      time_steps: T; read from the model's first GLIF layer when ``None``.
      energy_per_mac_j: E_MAC, joules per multiply-accumulate (45 nm default).
      energy_per_ac_j: E_AC, joules per accumulate (45 nm default).
      energy_per_byte_j: E_byte, joules per byte read or written (default: an 8 KB SRAM in
        45 nm, :data:`ENERGY_PER_SRAM_BYTE_J`; :data:`ENERGY_PER_DRAM_BYTE_J` for DRAM).
      spike_bits: bits per value of a spike map: 1 (a packed bit map, the default) or 8 (one
        byte per value, as a boolean array). Every neuron's value is moved, fired or not.
      value_bytes: bytes per weight, activation and membrane value; ``None`` for each tensor's
        own dtype as traced (4 for float32), or e.g. 1 to price an 8-bit network.
      progress: wraps the iterable, e.g. ``tqdm.tqdm``.

    Returns:
      A JSON-ready report (``docs/analysis.md``): ``layers`` in network order, each with
      ``name``, ``kind``, ``input_shape`` and ``output_shape`` (of one frame), ``macs`` (per
      image and time step), ``ann_macs`` (per image, as an ANN), ``spiking_input``,
      ``input_rate`` (spikes per neuron and step of its input; ``None`` when the input is
      analog), ``sops`` (per image, over all T), ``dense_macs`` (per image, over the steps
      computed) and ``energy_j`` (per image); GLIF layers also ``rate_per_step`` and ``rate``
      (their output). ``totals``: ``time_steps``, ``examples``, ``macs`` (per image and step),
      ``ann_macs`` (per image), ``sops``, ``dense_macs``, ``energy_j``, ``ann_energy_j``,
      ``energy_ratio`` (ANN over SNN), ``mean_rate`` (over every GLIF neuron and step) and the
      two energy constants. Every layer and the totals also hold ``memory``: the bytes per
      image of the SNN (``weight_bytes``, ``input_bytes``, ``state_bytes``, ``output_bytes``
      and their sum ``bytes``) and of the ANN (``ann_`` the same, no state), their energy
      ``energy_j`` and ``ann_energy_j`` (E_byte · bytes), and operations + memory,
      ``total_energy_j`` and ``ann_total_energy_j``; ``totals.memory`` also ``energy_ratio``
      (ANN over SNN, operations + memory) and the constants ``energy_per_byte_j``,
      ``spike_bits`` and ``value_bytes``.

    Raises:
      ValueError: no batches, no GLIF layer to read T from and no ``time_steps``, or a
        non-positive ``spike_bits`` or ``value_bytes`` or a negative ``energy_per_byte_j``.
    """
    costs = _MemoryCosts.checked(energy_per_byte_j, spike_bits, value_bytes)
    steps = _time_steps(model, time_steps)
    recorder = _Recorder(model, steps)
    totals: dict[str, dict[str, np.ndarray]] | None = None
    examples = 0
    for inputs in progress(batches) if progress else batches:
        sums = jax.device_get(recorder(inputs))
        examples += int(jax.tree.leaves(inputs)[0].shape[0])
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if totals is None:
        raise ValueError("analyze: no batches were given.")
    return _report(
        recorder.table, totals, examples, steps, energy_per_mac_j, energy_per_ac_j, costs
    )


@dataclasses.dataclass(frozen=True)
class _MemoryCosts:
    """What a byte costs, and how many bytes a spike and a value take."""

    energy_per_byte_j: float
    spike_bits: float
    value_bytes: float | None

    @classmethod
    def checked(cls, energy_per_byte_j, spike_bits, value_bytes) -> _MemoryCosts:
        if not energy_per_byte_j >= 0:
            raise ValueError(
                f"analyze: energy_per_byte_j must be a non-negative number of joules, got "
                f"{energy_per_byte_j!r}; e.g. analysis.ENERGY_PER_SRAM_BYTE_J (1.25e-12)."
            )
        if not spike_bits > 0:
            raise ValueError(
                f"analyze: spike_bits must be a positive number of bits per spike, got "
                f"{spike_bits!r}; use 1 for a packed bit map or 8 for a byte per spike."
            )
        if value_bytes is not None and not value_bytes > 0:
            raise ValueError(
                f"analyze: value_bytes must be a positive number of bytes or None (each "
                f"tensor's own dtype), got {value_bytes!r}."
            )
        return cls(energy_per_byte_j, spike_bits, value_bytes)

    def values(self, itemsize: int) -> float:
        """Bytes of one weight, activation or membrane value whose dtype has ``itemsize``."""
        return itemsize if self.value_bytes is None else float(self.value_bytes)


_MEMORY_PARTS = ("weight_bytes", "input_bytes", "state_bytes", "output_bytes")
_ANN_PARTS = ("ann_weight_bytes", "ann_input_bytes", "ann_output_bytes")


def _memory(layer: _Layer, spiking: bool, computed: float, ann: float, costs) -> dict:
    """The bytes one layer moves per image, as SNN and as ANN, by the rules of docs/analysis.md.

    Args:
      layer: the layer.
      spiking: whether its input is spike-derived (read as a spike map).
      computed: the frames the SNN computes per image (T, or 1 when once for all steps).
      ann: the frames the ANN computes per image (1, or the SNN's for a time-average layer).
      costs: the byte sizes.
    """
    memory = dict.fromkeys(_MEMORY_PARTS + _ANN_PARTS, 0.0)
    if layer.kind == "batch_norm":  # folded into the preceding layer: no pass of its own
        return memory
    n_in, n_out = math.prod(layer.input_shape), math.prod(layer.output_shape)
    spike = costs.spike_bits / 8
    weights = (
        layer.weight_bytes if costs.value_bytes is None else layer.weight_values * costs.value_bytes
    )
    value_in = costs.values(layer.input_itemsize)
    value_out = costs.values(layer.output_itemsize)
    # A GLIF layer writes spikes; a pool of spikes writes pooled spikes, read as spikes downstream.
    spikes_out = layer.kind == "glif" or (layer.kind == "pool" and spiking)
    memory["weight_bytes"] = computed * weights
    memory["input_bytes"] = computed * n_in * (spike if spiking else value_in)
    memory["output_bytes"] = computed * n_out * (spike if spikes_out else value_out)
    if layer.kind == "glif":  # its membranes, read and written at every step
        memory["state_bytes"] = 2 * computed * n_out * value_out
    # The ANN's neuron is a stateless activation, without parameters; every map is values.
    memory["ann_weight_bytes"] = 0.0 if layer.kind == "glif" else ann * weights
    memory["ann_input_bytes"] = ann * n_in * value_in
    memory["ann_output_bytes"] = ann * n_out * value_out
    return memory


def _memory_energy(parts: dict, energy: float, ann_energy: float, costs) -> dict:
    """The bytes of ``parts`` with their sums and energies: E_byte · bytes, and operations
    (``energy`` and ``ann_energy``, joules) + memory."""
    snn_bytes = sum(parts[key] for key in _MEMORY_PARTS)
    ann_bytes = sum(parts[key] for key in _ANN_PARTS)
    e_byte = costs.energy_per_byte_j
    return {
        **{key: parts[key] for key in _MEMORY_PARTS},
        "bytes": snn_bytes,
        "energy_j": e_byte * snn_bytes,
        "total_energy_j": energy + e_byte * snn_bytes,
        **{key: parts[key] for key in _ANN_PARTS},
        "ann_bytes": ann_bytes,
        "ann_energy_j": e_byte * ann_bytes,
        "ann_total_energy_j": ann_energy + e_byte * ann_bytes,
    }


def _report(
    table: list[_Layer], totals, examples: int, steps: int, e_mac, e_ac, costs: _MemoryCosts
) -> dict:
    layers = []
    spikes = neurons = 0.0
    for layer in table:
        sums = {k: np.asarray(v, np.float64) for k, v in totals[layer.name].items()}
        calls = sums["calls"]  # the forward passes (batches) that reached the layer
        spiking = bool(sums["spiking"] == calls)
        every_step = layer.macs_per_frame * layer.frames_per_image
        entry = {
            "name": layer.name,
            "kind": layer.kind,
            "input_shape": list(layer.input_shape),
            "output_shape": list(layer.output_shape),
            "macs": every_step / steps,
            # The ANN applies each layer once per image: the per-step layers' MACs of one step,
            # a layer on the time average (the CIFAR10-DVS head) its MACs.
            "ann_macs": every_step / steps if layer.frames_per_image >= steps else every_step,
            "spiking_input": spiking,
            "input_rate": float(sums["input_sum"] / sums["input_size"]) if spiking else None,
            "sops": 0.0,
            "dense_macs": 0.0,
            "energy_j": 0.0,
        }
        computed = layer.frames_per_image
        if layer.kind in ("conv", "linear") and spiking:
            entry["sops"] = entry["input_rate"] * every_step
            entry["energy_j"] = e_ac * entry["sops"]
        elif layer.kind in ("conv", "linear"):
            repeated = bool(sums["repeated"] == calls)  # computed once for all steps
            entry["dense_macs"] = every_step / steps if repeated else every_step
            entry["energy_j"] = e_mac * entry["dense_macs"]
            computed = computed / steps if repeated else computed
        if layer.kind == "glif":
            fired, size = sums["output_per_step"], sums["output_size_per_step"]
            entry["rate_per_step"] = [float(r) for r in fired / size]
            entry["rate"] = float(np.sum(fired) / (steps * size))
            spikes += float(np.sum(fired))
            neurons += steps * float(size)
        frames = layer.frames_per_image
        ann = frames / steps if frames >= steps else frames  # as ann_macs
        memory = _memory(layer, spiking, computed, ann, costs)
        entry["memory"] = _memory_energy(
            memory, entry["energy_j"], e_mac * entry["ann_macs"], costs
        )
        layers.append(entry)
    ann_macs = sum(entry["ann_macs"] for entry in layers)
    energy = sum(entry["energy_j"] for entry in layers)
    memory = _memory_energy(
        {key: sum(e["memory"][key] for e in layers) for key in _MEMORY_PARTS + _ANN_PARTS},
        energy,
        e_mac * ann_macs,
        costs,
    )
    memory["energy_ratio"] = (
        memory["ann_total_energy_j"] / memory["total_energy_j"]
        if memory["total_energy_j"]
        else None
    )
    memory["energy_per_byte_j"] = costs.energy_per_byte_j
    memory["spike_bits"] = costs.spike_bits
    memory["value_bytes"] = costs.value_bytes
    return {
        "layers": layers,
        "totals": {
            "time_steps": steps,
            "examples": examples,
            "macs": sum(entry["macs"] for entry in layers),
            "ann_macs": ann_macs,
            "sops": sum(entry["sops"] for entry in layers),
            "dense_macs": sum(entry["dense_macs"] for entry in layers),
            "energy_j": energy,
            "ann_energy_j": e_mac * ann_macs,
            "energy_ratio": e_mac * ann_macs / energy if energy else None,
            "mean_rate": spikes / neurons if neurons else None,
            "energy_per_mac_j": e_mac,
            "energy_per_ac_j": e_ac,
            "memory": memory,
        },
    }


def si_format(value: float | None, unit: str = "") -> str:
    """``value`` with an SI prefix: ``1.23 M``, ``4.56 µJ``."""
    if value is None:
        return "–"
    if value == 0:
        return f"0 {unit}".strip()
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""),
                          (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):  # fmt: skip
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".strip()
    return f"{value:.3g} {unit}".strip()


def summary_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: every conv, linear and GLIF layer, then the totals of the
    SNN and of the same network as an ANN."""
    rows = [
        "| layer | kind | MACs / image / step | input rate (GLIF: output) | SOPs / image "
        "| dense MACs / image | energy / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in report["layers"]:
        if entry["kind"] not in ("conv", "linear", "glif"):
            continue
        rate = entry["rate"] if entry["kind"] == "glif" else entry["input_rate"]
        rows.append(
            f"| {entry['name']} | {entry['kind']} | {si_format(entry['macs'])} | "
            f"{'analog' if rate is None else f'{rate:.4f}'} | {si_format(entry['sops'])} | "
            f"{si_format(entry['dense_macs'])} | {si_format(entry['energy_j'], 'J')} |"
        )
    t = report["totals"]
    mean_rate = "–" if t["mean_rate"] is None else f"{t['mean_rate']:.4f} (mean)"
    rows.append(
        f"| **SNN**, T = {t['time_steps']} | | {si_format(t['macs'])} | {mean_rate} | "
        f"{si_format(t['sops'])} | {si_format(t['dense_macs'])} | {si_format(t['energy_j'], 'J')} |"
    )
    rows.append(
        f"| **the same network as an ANN** | | {si_format(t['ann_macs'])} | | | "
        f"{si_format(t['ann_macs'])} | {si_format(t['ann_energy_j'], 'J')} |"
    )
    return "\n".join(rows) + "\n"


def _bytes_format(value: float) -> str:
    # A spike map of a few neurons is a fraction of a byte: no "mB".
    return si_format(value, "B") if value >= 1 else f"{value:.3g} B"


def memory_table(report: dict[str, Any]) -> str:
    """The memory traffic of the report as a markdown table: every layer that moves bytes (all
    but the normalisation folded into its predecessor), the bytes of the SNN per image and of
    what they are, the ANN's, and the energy of each, operations + memory."""
    rows = [
        "| layer | kind | weights | input | membranes | output | SNN bytes / image "
        "| SNN ops + memory | ANN bytes / image | ANN ops + memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, kind: str, m: dict) -> str:
        cells = [_bytes_format(m[key]) for key in (*_MEMORY_PARTS, "bytes")]
        cells += [si_format(m["total_energy_j"], "J"), _bytes_format(m["ann_bytes"])]
        cells += [si_format(m["ann_total_energy_j"], "J")]
        return f"| {name} | {kind} | " + " | ".join(cells) + " |"

    for entry in report["layers"]:
        if entry["memory"]["bytes"] or entry["memory"]["ann_bytes"]:
            rows.append(row(entry["name"], entry["kind"], entry["memory"]))
    t = report["totals"]
    rows.append(row(f"**total**, T = {t['time_steps']}", "", t["memory"]))
    return "\n".join(rows) + "\n"


def verdict_table(report: dict[str, Any]) -> str:
    """The two verdicts of the report as a markdown table: the energy per image of the SNN and of
    the same network as an ANN, by operations only and by operations + memory traffic."""
    t, m = report["totals"], report["totals"]["memory"]

    def verdict(ratio: float | None) -> str:
        if not ratio:
            return "–"
        return f"SNN, {ratio:.3g}× less" if ratio >= 1 else f"ANN, {1 / ratio:.3g}× less"

    spikes = f"{m['spike_bits']:g}-bit spikes"
    values = (
        "values at their dtype" if m["value_bytes"] is None else f"{m['value_bytes']:g}-byte values"
    )
    rows = [
        "| energy per image | SNN | ANN | cheaper |",
        "|---|---|---|---|",
        f"| operations only (E_MAC = {t['energy_per_mac_j'] * 1e12:g} pJ, "
        f"E_AC = {t['energy_per_ac_j'] * 1e12:g} pJ) | {si_format(t['energy_j'], 'J')} | "
        f"{si_format(t['ann_energy_j'], 'J')} | {verdict(t['energy_ratio'])} |",
        f"| operations + memory (E_byte = {m['energy_per_byte_j'] * 1e12:g} pJ; {spikes}, "
        f"{values}) | {si_format(m['total_energy_j'], 'J')} | "
        f"{si_format(m['ann_total_energy_j'], 'J')} | {verdict(m['energy_ratio'])} |",
    ]
    return "\n".join(rows) + "\n"
