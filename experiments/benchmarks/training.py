"""End-to-end training steps: glif_jax's against the reference's, as PyTorch runs it.

:func:`measure` times one training step of the reference's recipe for each T, batch size and
compute dtype (the columns: :data:`COLUMNS`):

- **glif_jax**: :func:`experiments.train.train_step` on the state of
  :func:`experiments.train.create_train_state`, jitted with the state donated, compiled ahead of
  time (:class:`JaxStep`);
- **pytorch eager**: the same network, weights, recipe and batch in the PyTorch transcription
  (:mod:`experiments.benchmarks.torch_networks`), as the reference code runs it: eager, cuDNN
  deterministic with its benchmark mode off (the reference's ``seed_all``), bfloat16 through
  ``torch.autocast`` (the reference's ``--amp`` path);
- **pytorch compiled**: the same under ``torch.compile`` (default mode); a failure is a row with
  its error.

Besides the step's best and median wall time and images/s, a row has the convolutions' TFLOP/s
(3 × 2 × the forward convolutions' MACs × T × batch per step: the forward convolution and the two
of its backward pass) and its fraction of the device's peak, the peak memory (glif_jax: the
device's high-water mark when it rose during the setting, as it does when the settings grow,
else XLA's account of the compiled step; PyTorch: ``torch.cuda.max_memory_allocated``) and the
precision each side's convolutions may use.

:func:`max_batch` finds the largest batch of a step that fits on the device
(:data:`MAX_BATCH_COLUMNS`), for each framework, T and with or without recomputation: doubling,
then bisection (:func:`search_max_batch`), one training step per probe, out-of-memory errors
caught.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import train
from experiments.benchmarks import timing
from experiments.configs.base import base_config
from experiments.settings import Settings

NUM_CLASSES = 10
STEPS_PER_EPOCH = 10_000  # the learning rate stays that of the first epoch, as in PyTorch's loop

PEAK_TFLOPS = {
    # Dense tensor-core peaks: TF32 for float32 convolutions, BF16 for bfloat16 ones.
    "H200": {"float32": 494.7, "bfloat16": 989.4},
}
"""Peak TFLOP/s by a substring of the device's name, then by compute dtype."""

TORCH_MODELS = ("resnet19",)
"""The networks the PyTorch transcription has."""

TORCH_VARIANTS = ("eager", "compiled")

COLUMNS = tuple(
    """framework T batch dtype remat compile_s step_ms median_step_ms images/s conv_TFLOP/s
    of_peak peak_MiB peak_source temp_MiB peak_vs_no_remat vs_eager vs_compiled
    jax_matmul_precision torch_matmul_tf32 torch_cudnn_tf32 autocast loss_finite error""".split()
)
"""The columns of a row of :func:`measure`, in table order."""

MAX_BATCH_COLUMNS = tuple(
    """framework T remat dtype max_batch first_failure exact probes linear_estimate search_s
    note""".split()
)
"""The columns of a row of :func:`max_batch`, in table order."""

SKIPPED = "skipped: the time budget was spent"

# Errors that say a batch does not fit besides running out of memory: cuDNN's 32-bit indexing
# refuses tensors of 2³¹ elements and more.
_SIZE_LIMITS = ("CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_BAD_PARAM", "canUse32BitIndexMath")

# XLA's allocator in a process that runs a glif_jax search: one pool of most of the device,
# allocated at start, like PyTorch's caching allocator free to use the whole device.
_JAX_SEARCH_ENVIRONMENT = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92",
}


# ------------------------------------------------------------------------------------------------
# Settings and rows


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration.

    Attributes:
      model: a name of :func:`glif_jax.models.names`, e.g. ``"resnet19"``.
      time_steps: T.
      batch: images per step.
      dtype: the compute dtype, ``"float32"`` or ``"bfloat16"``.
      image_shape: ``(H, W, C)``.
      remat: recompute each block in the backward pass.
      model_options: extra options of the model, ``(key, value)`` pairs.
    """

    model: str
    time_steps: int
    batch: int
    dtype: str
    image_shape: tuple[int, int, int]
    remat: bool = False
    model_options: tuple[tuple[str, Any], ...] = ()


def make_config(setting: Setting):
    """The experiment config (``ml_collections.ConfigDict``) of ``setting``: the reference's
    recipe (``base_config``) for its network and sizes."""
    config = base_config()
    config.model, config.time_steps = setting.model, setting.time_steps
    config.batch_size = setting.batch
    config.compute_dtype = setting.dtype
    config.model_options.remat = setting.remat
    config.model_options.in_channels = setting.image_shape[-1]
    for key, value in setting.model_options:
        config.model_options[key] = value
    return config


def torch_recipe(setting: Setting) -> dict[str, float]:
    """The keyword arguments of
    :func:`~experiments.benchmarks.torch_networks.reference_optimizer` for glif_jax's optimizer
    of ``setting``."""
    config = make_config(setting)
    return {
        "learning_rate": config.learning_rate,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "gate_lr_scale": config.gate_lr_scale,
    }


def batch_arrays(setting: Setting, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random batch of ``setting``'s size, the same for glif_jax and PyTorch: normalised
    images ``(B, H, W, C)`` float32 (standard normal) and labels ``(B,)`` int32."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(setting.batch, *setting.image_shape)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, setting.batch).astype(np.int32)
    return images, labels


def new_row(setting: Setting, framework: str, error: str | None = None) -> dict[str, Any]:
    """A row of :data:`COLUMNS` for ``setting``, with only its setting (and ``error``) filled."""
    row = dict.fromkeys(COLUMNS)
    row.update(
        framework=framework,
        T=setting.time_steps,
        batch=setting.batch,
        dtype=setting.dtype,
        remat=setting.remat,
        error=error,
    )
    return row


def _fill_times(row: dict, times: Sequence[float], flops: float | None, peak: float | None):
    """Fill the step times from ``times`` (seconds), and the rates of the best one: images/s,
    conv TFLOP/s and the fraction of ``peak``."""
    seconds = min(times)
    row["step_ms"] = 1e3 * seconds
    row["median_step_ms"] = 1e3 * statistics.median(times)
    row["images/s"] = row["batch"] / seconds
    if flops:
        row["conv_TFLOP/s"] = flops / seconds / 1e12
        row["of_peak"] = row["conv_TFLOP/s"] / peak if peak else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def annotate(rows: list[dict]) -> None:
    """Fill ``vs_eager``/``vs_compiled`` (images/s of each glif_jax row over its setting's
    PyTorch rows) and ``peak_vs_no_remat`` (peak memory with recomputation over that without)."""
    by_key = {(r["framework"], r["T"], r["batch"], r["dtype"], r["remat"]): r for r in rows}
    for row in rows:
        key = (row["T"], row["batch"], row["dtype"], row["remat"])
        if row["framework"] == "glif_jax":
            for variant in TORCH_VARIANTS:
                other = by_key.get((f"pytorch {variant}", *key))
                row[f"vs_{variant}"] = _ratio(row["images/s"], other and other["images/s"])
        if row["remat"]:
            plain = by_key.get((row["framework"], *key[:3], False))
            row["peak_vs_no_remat"] = _ratio(row["peak_MiB"], plain and plain["peak_MiB"])


def sorted_rows(rows: list[dict]) -> list[dict]:
    """``rows`` by T, batch, dtype, remat, then glif_jax, PyTorch eager and compiled."""
    order = {"glif_jax": 0, "pytorch eager": 1, "pytorch compiled": 2}
    return sorted(
        rows,
        key=lambda r: (r["T"], r["batch"], r["dtype"], r["remat"], order.get(r["framework"], 3)),
    )


# ------------------------------------------------------------------------------------------------
# The machine


def torch_device() -> str:
    """Where the PyTorch rows run: ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def peak_tflops(dtype: str, override: float | None = None) -> float | None:
    """The device's peak TFLOP/s for ``dtype`` convolutions: ``override`` when given, else from
    :data:`PEAK_TFLOPS` (``None`` for a device not in it, every CPU included)."""
    if override is not None:
        return override
    device = jax.devices()[0]
    if device.platform != "gpu":
        return None
    for name, peaks in PEAK_TFLOPS.items():
        if name in getattr(device, "device_kind", ""):
            return peaks.get(dtype)
    return None


def conv_flops(model, image_shape: Sequence[int], time_steps: int, batch: int) -> float:
    """Convolution FLOPs (2 per multiply-accumulate) of one training step of ``model`` (an NNX
    module): 3 × 2 × forward conv MACs × T × batch.

    The forward pass's convolutions, and in the backward pass the gradient with respect to their
    input and to their kernel, each as many multiply-accumulates (the stem's input gradient,
    which no one computes, included).
    """
    from glif_jax import analysis

    layers = analysis.count_macs(model, (1, *image_shape))
    macs = sum(macs for _, kind, macs in layers if kind == "conv")
    return 3 * 2 * macs * time_steps * batch


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (of a training step or of its compilation) is the device running out of
    memory: XLA's ``RESOURCE_EXHAUSTED``, ``torch.cuda.OutOfMemoryError``, or any error that
    says "out of memory"."""
    if type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


# ------------------------------------------------------------------------------------------------
# glif_jax


class JaxStep:
    """glif_jax's training step of a setting, jitted with the state donated, and its state (the
    batch size is no part of either)."""

    def __init__(self, setting: Setting):
        self.setting = setting
        self.config = make_config(setting)
        settings = Settings.from_config(self.config)
        self.graphs, self.state, self.tx = train.create_train_state(
            settings, num_classes=NUM_CLASSES, steps_per_epoch=STEPS_PER_EPOCH
        )
        self.step = jax.jit(
            functools.partial(
                train.train_step,
                graph=self.graphs.train,
                tx=self.tx,
                loss=settings.recipe,
            ),
            donate_argnums=0,
        )

    def model(self):
        """The network with the current state, in training mode."""
        from flax import nnx

        return nnx.merge(self.graphs.train, self.state.params, self.state.batch_stats)

    def reference_state_dict(self) -> dict[str, np.ndarray]:
        """The current weights and statistics in the reference's layout
        (:func:`glif_jax.interop.export_reference_state_dict`)."""
        from glif_jax import interop

        return interop.export_reference_state_dict(self.model())


def _jax_batch(setting: Setting) -> dict[str, jax.Array]:
    """:func:`batch_arrays` on the device, as :func:`experiments.train.train_step` takes them."""
    images, labels = batch_arrays(setting)
    return {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}


def _xla_memory(compiled) -> tuple[int, int] | None:
    """XLA's account of a compiled step: the bytes of its arguments and outputs not aliased, and
    of its scratch (``temp``); ``None`` where XLA gives none."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    resident = (
        memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    )
    return resident, memory.temp_size_in_bytes


def _device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def _time_jax(runner: JaxStep, compiled, data, repeats: int) -> tuple[list[float], jax.Array]:
    """One warm-up step, then ``repeats`` timed ones; the state moves on in ``runner.state``.

    Returns:
      The timed steps' wall times in seconds, and the last loss.
    """
    state, times = runner.state, []
    runner.state = None  # donated below
    for i in range(repeats + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics["loss"])
        if i:
            times.append(time.perf_counter() - start)
    runner.state = state
    return times, metrics["loss"]


def measure_jax(
    runner: JaxStep,
    setting: Setting,
    repeats: int,
    *,
    flops: float | None = None,
    peak: float | None = None,
) -> dict[str, Any]:
    """Compile glif_jax's step for ``setting``'s batch and time it: one warm-up step, then
    ``repeats`` timed ones.

    Args:
      runner: the step of ``setting``'s network; its state is consumed.
      setting: the configuration.
      repeats: timed steps.
      flops: convolution FLOPs of a step (:func:`conv_flops`).
      peak: the device's peak TFLOP/s (``None``: unknown).

    Returns:
      One row of :data:`COLUMNS`; a failure fills its ``error``.
    """
    row = new_row(setting, "glif_jax")
    row["jax_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    try:
        data = _jax_batch(setting)
        start = time.perf_counter()
        compiled = runner.step.lower(runner.state, data).compile()
        row["compile_s"] = time.perf_counter() - start
        xla = _xla_memory(compiled)
        if xla is not None:
            row["temp_MiB"] = xla[1] / 2**20
        device_before = _device_peak_bytes()
        times, loss = _time_jax(runner, compiled, data, repeats)
        device_after = _device_peak_bytes()
        if device_after is not None and device_before is not None and device_after > device_before:
            row["peak_MiB"], row["peak_source"] = device_after / 2**20, "device"
        elif xla is not None:
            row["peak_MiB"], row["peak_source"] = sum(xla) / 2**20, "xla"
        row["loss_finite"] = bool(jnp.isfinite(loss))
        _fill_times(row, times, flops, peak)
        timing.progress(
            f"training glif_jax T={row['T']} B={row['batch']} {row['dtype']} "
            f"remat={row['remat']}: {row['step_ms']:.1f} ms/step"
        )
    except Exception as error:  # one failing setting must not end the run
        row["error"] = _error_text(error)
        timing.progress(f"training glif_jax {setting}: {row['error']}")
    return row


# ------------------------------------------------------------------------------------------------
# PyTorch


@contextlib.contextmanager
def _reference_cudnn():
    """cuDNN as the reference's ``seed_all`` leaves it: deterministic, benchmark mode off."""
    import torch

    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _release_torch_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _torch_batch(setting: Setting, device: str):
    """:func:`batch_arrays` as PyTorch's network takes them: images ``(B, C, H, W)``, labels
    int64."""
    import torch

    images, labels = batch_arrays(setting)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    return x, torch.from_numpy(labels.astype(np.int64)).to(device)


def _time_torch(setting, state_dict, repeats, variant) -> tuple[list[float], list[float], float]:
    """Build PyTorch's network and optimizer from ``state_dict`` and run the warm-up steps, then
    ``repeats`` timed ones, each waited for.

    Returns:
      The warm-up steps' and the timed steps' wall times in seconds, and the last loss.
    """
    import torch

    from experiments.benchmarks import torch_networks

    device = torch_device()
    model = torch_networks.resnet19_from_state_dict(state_dict, remat=setting.remat, device=device)
    optimizer = torch_networks.reference_optimizer(model, **torch_recipe(setting))
    forward = model
    if variant == "compiled":
        torch._dynamo.reset()  # a fresh compilation, timed in the first step
        forward = torch.compile(model)
    autocast = torch.bfloat16 if setting.dtype == "bfloat16" else None
    x, y = _torch_batch(setting, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # The compiled step gets a second warm-up step, for a recompilation on the second call
    # (guards on state that the first call changed).
    warmup = 2 if variant == "compiled" else 1
    times = []
    for _ in range(repeats + warmup):
        start = time.perf_counter()
        loss = torch_networks.train_step(forward, optimizer, x, y, autocast_dtype=autocast)
        value = loss.item()  # waits for the step, as the reference's logging does
        times.append(time.perf_counter() - start)
    return times[:warmup], times[warmup:], value


def measure_torch(
    setting: Setting,
    state_dict: Mapping[str, np.ndarray],
    repeats: int,
    *,
    variant: str = "eager",
    flops: float | None = None,
    peak: float | None = None,
) -> dict[str, Any]:
    """Time the PyTorch transcription's step: one warm-up step (two for ``"compiled"``, the first
    of them the compilation), then ``repeats`` timed ones.

    Args:
      setting: the configuration (its ``model`` one of :data:`TORCH_MODELS`).
      state_dict: the initial weights in the reference's layout (e.g. glif_jax's, exported).
      repeats: timed steps.
      variant: ``"eager"`` or ``"compiled"`` (``torch.compile``, default mode).
      flops: convolution FLOPs of a step (:func:`conv_flops`).
      peak: the device's peak TFLOP/s (``None``: unknown).

    Returns:
      One row of :data:`COLUMNS`; a failure (compilation included) fills its ``error``.
    """
    import torch

    row = new_row(setting, f"pytorch {variant}")
    row["torch_matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    row["torch_cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    row["autocast"] = "bfloat16" if setting.dtype == "bfloat16" else "off"
    try:
        if variant not in TORCH_VARIANTS:
            raise ValueError(f"unknown PyTorch variant {variant!r}; expected {TORCH_VARIANTS}")
        with _reference_cudnn():
            warmup, times, loss = _time_torch(setting, state_dict, repeats, variant)
        if variant == "compiled":
            row["compile_s"] = max(warmup[0] - statistics.median(times), 0.0)
        if torch_device() == "cuda":
            row["peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
            row["peak_source"] = "torch.cuda"
        row["loss_finite"] = math.isfinite(loss)
        _fill_times(row, times, flops, peak)
        timing.progress(
            f"training pytorch {variant} T={row['T']} B={row['batch']} {row['dtype']}: "
            f"{row['step_ms']:.1f} ms/step"
        )
    except Exception as error:  # a failed compilation is a result, not the end of the run
        row["error"] = _error_text(error)
        timing.progress(f"training pytorch {variant} {setting}: {row['error']}")
    finally:
        if variant == "compiled":
            torch._dynamo.reset()  # its caches hold the network
        _release_torch_memory()  # the network, its optimizer and the batch are gone by now
    return row


# ------------------------------------------------------------------------------------------------
# The timing grid


class _Table:
    """The rows measured so far; after each new one, all are annotated and handed, sorted, to
    ``on_rows`` (to save partial results)."""

    def __init__(self, on_rows: Callable[[list[dict]], None] | None):
        self.rows: list[dict] = []
        self.on_rows = on_rows

    def add(self, row: dict) -> None:
        self.rows.append(row)
        annotate(self.rows)
        if self.on_rows is not None:
            self.on_rows(sorted_rows(self.rows))


@dataclasses.dataclass(frozen=True)
class _TorchStart:
    """What the PyTorch rows of one T and dtype take from glif_jax's."""

    weights: dict[str, np.ndarray] | None  # the initial weights, in the reference's layout
    flops_per_image: float  # of the convolutions, per training step


def _jax_rows(table, settings, repeats, peak, deadline, export_weights) -> _TorchStart | None:
    """glif_jax's rows of one T, dtype and remat, one per setting (batch size), into ``table``.

    Every batch starts from the same network and initial state. A row not started by
    ``deadline`` is skipped; a network that cannot be built gives the row its error, and is
    tried again for the next batch.

    Returns:
      The PyTorch rows' start (with the weights only if ``export_weights``), or ``None`` when no
      network was built.
    """
    runner = initial = start = None
    for setting in settings:
        if _past(deadline):
            table.add(new_row(setting, "glif_jax", SKIPPED))
            continue
        if runner is None:
            try:
                runner = JaxStep(setting)
            except Exception as error:
                table.add(new_row(setting, "glif_jax", _error_text(error)))
                continue
            # On the host: no device memory of the settings' high-water marks.
            initial = jax.device_get(runner.state)
            start = _TorchStart(
                runner.reference_state_dict() if export_weights else None,
                conv_flops(runner.model(), setting.image_shape, setting.time_steps, 1),
            )
        runner.state = jax.device_put(initial)
        flops = start.flops_per_image * setting.batch
        table.add(measure_jax(runner, setting, repeats, flops=flops, peak=peak))
    runner = initial = None
    gc.collect()  # this network's device memory, before the next one's high-water mark
    return start


def _torch_row(setting, variant, start, repeats, peak, deadline) -> dict[str, Any]:
    """A PyTorch row of ``setting`` from glif_jax's ``start``: skipped past ``deadline``, an
    error without weights."""
    framework = f"pytorch {variant}"
    if _past(deadline):
        return new_row(setting, framework, SKIPPED)
    if start is None or start.weights is None:
        return new_row(setting, framework, "no weights: glif_jax's network could not be built")
    flops = start.flops_per_image * setting.batch or None
    return measure_torch(setting, start.weights, repeats, variant=variant, flops=flops, peak=peak)


def measure(
    model: str,
    time_steps: Sequence[int],
    batches: Sequence[int],
    dtypes: Sequence[str],
    image_shape: tuple[int, int, int],
    repeats: int,
    *,
    torch_variants: Sequence[str] = TORCH_VARIANTS,
    remat: bool = False,
    model_options: Mapping[str, Any] | None = None,
    peak_tflops_override: float | None = None,
    budget_s: float | None = None,
    on_rows: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Time glif_jax's step and PyTorch's at every T, batch and dtype.

    The rows run by priority, so that a time budget cuts the least important: dtype by dtype in
    the order given, T increasing, batch increasing, glif_jax then PyTorch eager from the same
    weights; the ``torch.compile`` rows, whose compilations take longest, after all of them.

    Args:
      model: a name of :func:`glif_jax.models.names`; PyTorch runs only for :data:`TORCH_MODELS`.
      time_steps, batches, dtypes: the grid.
      image_shape: ``(H, W, C)``.
      repeats: timed steps after the warm-up.
      torch_variants: the PyTorch rows, from :data:`TORCH_VARIANTS` (none without torch).
      remat: also time glif_jax with recomputation, and give the ratio of its peak memory.
      model_options: extra model options, e.g. ``{"stem_channels": 8}``.
      peak_tflops_override: the device's peak TFLOP/s (``None``: :func:`peak_tflops`).
      budget_s: wall-clock seconds for the whole grid; rows not started by then are reported
        as skipped (``None``: no limit).
      on_rows: called with the rows so far after every row (to save partial results).

    Returns:
      Rows of :data:`COLUMNS`, sorted by T, batch, dtype and remat.
    """
    deadline = None if budget_s is None else time.time() + budget_s
    options = tuple(sorted((model_options or {}).items()))
    variants = list(torch_variants) if model in TORCH_MODELS else []
    grid = [(dtype, steps) for dtype in dtypes for steps in time_steps]
    table = _Table(on_rows)
    starts: dict[tuple[str, int], _TorchStart | None] = {}
    for dtype, steps in grid:
        peak = peak_tflops(dtype, peak_tflops_override)
        settings = [
            Setting(model, steps, batch, dtype, tuple(image_shape), False, options)
            for batch in batches
        ]
        starts[dtype, steps] = _jax_rows(table, settings, repeats, peak, deadline, bool(variants))
        if remat:
            recomputed = [dataclasses.replace(s, remat=True) for s in settings]
            _jax_rows(table, recomputed, repeats, peak, deadline, False)
        if "eager" in variants:
            for setting in settings:
                start = starts[dtype, steps]
                table.add(_torch_row(setting, "eager", start, repeats, peak, deadline))
    if "compiled" in variants:
        for dtype, steps in grid:
            peak = peak_tflops(dtype, peak_tflops_override)
            for batch in batches:
                setting = Setting(model, steps, batch, dtype, tuple(image_shape), False, options)
                start = starts[dtype, steps]
                table.add(_torch_row(setting, "compiled", start, repeats, peak, deadline))
    return sorted_rows(table.rows)


# ------------------------------------------------------------------------------------------------
# The largest batch that fits


def _bracketed(lo: int, hi: int | None, tolerance: float) -> bool:
    """Whether the largest fit ``lo`` and the smallest failure ``hi`` are close enough."""
    return hi is not None and hi - lo <= max(1, int(tolerance * lo))


def search_max_batch(
    fits: Callable[[int], bool],
    *,
    start: int,
    upper: int,
    tolerance: float = 0.0,
    deadline: float | None = None,
) -> dict[str, Any]:
    """The largest batch for which ``fits`` holds, assuming that it holds below some size:
    doubling from ``start`` until a failure or ``upper``, then bisection between the largest fit
    and the smallest failure until they are at most ``max(1, tolerance · fit)`` apart.

    Args:
      fits: runs one probe; False when the batch does not fit.
      start, upper: the first batch probed, and the largest.
      tolerance: the bisection's stopping gap, relative to the largest fit.
      deadline: ``time.time()`` after which no further probe starts; the first probe always
        runs (``None``: no limit).

    Returns:
      ``max_batch`` (the largest fit, 0 if none), ``first_failure`` (the smallest failure,
      ``None`` if none), ``exact`` (the search ended by its own rule, not the deadline),
      ``reached_upper`` and ``probes`` (``(batch, fitted)`` in order).
    """
    if not 1 <= start <= upper:
        raise ValueError(f"need 1 <= start <= upper, got start={start}, upper={upper}.")
    lo, hi, probes = 0, None, []
    batch = start
    while hi is None:  # doubling
        fitted = bool(fits(batch))
        probes.append((batch, fitted))
        if not fitted:
            hi = batch
        else:
            lo = batch
            if batch >= upper or _past(deadline):
                break
            batch = min(2 * batch, upper)
    while hi is not None and not _bracketed(lo, hi, tolerance) and not _past(deadline):
        batch = (lo + hi) // 2
        fitted = bool(fits(batch))
        probes.append((batch, fitted))
        if fitted:
            lo = batch
        else:
            hi = batch
    return {
        "max_batch": lo,
        "first_failure": hi,
        "exact": lo >= upper or _bracketed(lo, hi, tolerance),
        "reached_upper": lo >= upper,
        "probes": probes,
    }


def step_fits(step: Callable[[int], Any], batch: int) -> bool:
    """Whether ``step(batch)``, one training step, runs: False when the batch does not fit (the
    device out of memory, or past a library's size limit); any other error propagates."""
    try:
        step(batch)
    except Exception as error:
        if is_out_of_memory(error) or any(limit in str(error) for limit in _SIZE_LIMITS):
            return False
        raise
    return True


class JaxProbe:
    """glif_jax's ``fits`` of :func:`search_max_batch`: one training step at a batch size, from
    the same initial state every time.

    Attributes:
      estimates: for each batch that fits, the batch at which XLA's scratch for the step
        (``temp``, mostly activations), scaled linearly with the batch, would fill the device's
        memory limit beside the step's arguments (GPU only).
    """

    def __init__(self, setting: Setting):
        self.setting = setting
        self.runner = JaxStep(setting)
        self.initial = self.runner.state
        self.estimates: dict[int, int] = {}

    def __call__(self, batch: int) -> bool:
        return step_fits(self.step, batch)

    def step(self, batch: int) -> None:
        """One step at ``batch``, compiled for it."""
        try:
            data = _jax_batch(dataclasses.replace(self.setting, batch=batch))
            state = jax.tree.map(jnp.copy, self.initial)  # the step donates its input
            compiled = self.runner.step.lower(state, data).compile()
            _, metrics = compiled(state, data)
            jax.block_until_ready(metrics["loss"])
        finally:
            state = data = None
            gc.collect()
        xla = _xla_memory(compiled)
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
        if xla is not None and limit and xla[1]:
            resident, temp = xla
            self.estimates[batch] = int(batch * (limit - resident) / temp)


class TorchProbe:
    """The PyTorch transcription's ``fits`` of :func:`search_max_batch`: one training step at a
    batch size.

    Args:
      setting: the configuration (its ``batch`` is ignored).
      layout: the reference state-dict layout of its network, ``{name: (shape, dtype)}``.

    Attributes:
      estimates: for each batch that fits, the batch at which the step's memory beyond the
        weights and optimizer state, scaled linearly with the batch, would fill the device (CUDA
        only).
    """

    def __init__(self, setting: Setting, layout: Mapping[str, tuple]):
        import torch

        from experiments.benchmarks import torch_networks

        self.setting = setting
        self.device = torch_device()
        shapes = {key: shape for key, (shape, _) in layout.items()}
        model = torch_networks.ResNet19(
            **torch_networks.resnet19_architecture(shapes), remat=setting.remat
        )
        self.model = model.to(self.device).train()
        self.optimizer = torch_networks.reference_optimizer(self.model, **torch_recipe(setting))
        self.autocast = torch.bfloat16 if setting.dtype == "bfloat16" else None
        self.estimates: dict[int, int] = {}

    def __call__(self, batch: int) -> bool:
        return step_fits(self.step, batch)

    def step(self, batch: int) -> None:
        """One step at ``batch``."""
        import torch

        from experiments.benchmarks import torch_networks

        cuda = self.device == "cuda"
        x = y = None
        try:
            with _reference_cudnn():
                x, y = _torch_batch(dataclasses.replace(self.setting, batch=batch), self.device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                loss = torch_networks.train_step(
                    self.model, self.optimizer, x, y, autocast_dtype=self.autocast
                )
                loss.item()
            if cuda:
                used = torch.cuda.max_memory_allocated() - base
                _, total = torch.cuda.mem_get_info()
                self.estimates[batch] = int(batch * (total - base) / used)
        finally:
            x = y = loss = None
            self.optimizer.zero_grad(set_to_none=True)
            _release_torch_memory()


def _reference_layout(setting: Setting) -> dict[str, tuple]:
    """The reference's state-dict layout of ``setting``'s network, from shapes alone."""
    from flax import nnx

    from glif_jax import interop

    config = make_config(setting)
    network = Settings.from_config(config).network
    abstract = nnx.eval_shape(lambda: network.build(NUM_CLASSES, nnx.Rngs(0)))
    return interop.reference_layout(abstract)


def _max_batch_row(framework: str, setting: Setting, note: str | None = None) -> dict[str, Any]:
    row = dict.fromkeys(MAX_BATCH_COLUMNS)
    row.update(framework=framework, T=setting.time_steps, remat=setting.remat, dtype=setting.dtype)
    row["note"] = note
    return row


def max_batch_one(
    framework: str,
    setting: Setting,
    *,
    start: int,
    upper: int,
    tolerance: float,
    deadline: float | None,
    layout: Mapping[str, tuple] | None = None,
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`search_max_batch` for one framework and setting (its ``batch`` is ignored).

    Args:
      framework: ``"glif_jax"`` or ``"pytorch eager"``.
      setting: the configuration.
      start, upper, tolerance, deadline: see :func:`search_max_batch`.
      layout: the reference layout of the network (PyTorch only; default: from ``setting``).
      environment: variables to set first, before JAX or PyTorch claim the device (in a
        process of its own).

    Returns:
      One row of :data:`MAX_BATCH_COLUMNS`.
    """
    os.environ.update(environment or {})
    row = _max_batch_row(framework, setting)
    began = time.perf_counter()
    try:
        if framework == "glif_jax":
            probe = JaxProbe(setting)
        else:
            probe = TorchProbe(setting, layout or _reference_layout(setting))
        found = search_max_batch(
            probe, start=start, upper=upper, tolerance=tolerance, deadline=deadline
        )
        row.update({key: found[key] for key in ("max_batch", "first_failure", "exact")})
        row["probes"] = " ".join(f"{b}{'✓' if ok else '✗'}" for b, ok in found["probes"])
        row["linear_estimate"] = probe.estimates.get(found["max_batch"])
        if found["reached_upper"]:
            row["note"] = f"the bound {upper} fits"
        elif not found["exact"]:
            row["note"] = "out of time: the largest batch that fits is at least max_batch"
    except Exception as error:
        row["note"] = _error_text(error)
    row["search_s"] = time.perf_counter() - began
    timing.progress(
        f"max batch {framework} T={row['T']} remat={row['remat']}: {row['max_batch']} "
        f"({row['probes']}) {row['note'] or ''}"
    )
    return row


def _max_batch_in_a_process(framework: str, setting: Setting, **kwargs) -> dict[str, Any]:
    """:func:`max_batch_one` in a fresh process, whose device memory is all its own; a process
    that dies gives a row with a note."""
    environment = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if framework == "glif_jax":
        environment = _JAX_SEARCH_ENVIRONMENT
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(max_batch_one, framework, setting, environment=environment, **kwargs)
        try:
            return future.result()
        except Exception as error:  # the process died
            return _max_batch_row(framework, setting, _error_text(error))


def max_batch(
    model: str,
    time_steps: Sequence[int],
    image_shape: tuple[int, int, int],
    *,
    dtype: str = "float32",
    frameworks: Sequence[str] = ("glif_jax", "pytorch eager"),
    start: int = 64,
    upper: int = 8192,
    tolerance: float = 1 / 16,
    model_options: Mapping[str, Any] | None = None,
    budget_s: float | None = None,
    isolate: bool | None = None,
    on_rows: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """The largest batch that fits, for each T, without and with recomputation, and framework.

    Args:
      model: a name of :func:`glif_jax.models.names`; PyTorch runs only for :data:`TORCH_MODELS`.
      time_steps: the T values.
      image_shape: ``(H, W, C)``.
      dtype: the compute dtype.
      frameworks: from ``"glif_jax"`` and ``"pytorch eager"`` (the latter needs torch).
      start, upper, tolerance: see :func:`search_max_batch`.
      model_options: extra model options.
      budget_s: wall-clock seconds for all the searches, shared evenly among those not yet run;
        a search out of time reports what it found (``exact`` False), and every search makes
        at least one probe (``None``: no limit).
      isolate: run each search in a fresh process (``None``: on GPUs, where the memory pools of
        the earlier searches and of this process would otherwise hold part of the device).
      on_rows: called with the rows so far after every search.

    Returns:
      Rows of :data:`MAX_BATCH_COLUMNS`, by T, then remat, then framework.
    """
    if isolate is None:
        isolate = jax.default_backend() != "cpu"
    if model not in TORCH_MODELS:
        frameworks = [f for f in frameworks if f == "glif_jax"]
    options = tuple(sorted((model_options or {}).items()))
    jobs = [
        (framework, Setting(model, steps, 1, dtype, tuple(image_shape), remat, options))
        for steps in time_steps
        for remat in (False, True)
        for framework in frameworks
    ]
    end = None if budget_s is None else time.time() + budget_s
    search = _max_batch_in_a_process if isolate else max_batch_one
    rows = []
    for i, (framework, setting) in enumerate(jobs):
        deadline = None if end is None else time.time() + (end - time.time()) / (len(jobs) - i)
        kwargs = dict(start=start, upper=upper, tolerance=tolerance, deadline=deadline)
        if framework != "glif_jax":
            kwargs["layout"] = _reference_layout(setting)
        rows.append(search(framework, setting, **kwargs))
        if on_rows is not None:
            on_rows(list(rows))
    return rows
