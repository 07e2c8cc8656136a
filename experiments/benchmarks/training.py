"""End-to-end training steps: glif_jax's against the reference's, as PyTorch runs it.

For each T, batch size and compute dtype, one run times:

- **glif_jax**: the project's step (:func:`experiments.train.train_step` on the state of
  :func:`experiments.train.create_train_state`, the reference's recipe of ``experiments/configs``),
  jitted with the state donated, compiled ahead of time;
- **pytorch eager**: the same network, weights, recipe and batch in the independent PyTorch
  transcription (:mod:`experiments.benchmarks.torch_networks`: the per-step GLIF loop over
  ``(T, B, C, H, W)``, tdBN, SGD with the reference's three parameter groups), as the reference
  code runs it: eager, cuDNN deterministic with its benchmark mode off (the reference's
  ``seed_all``), bfloat16 through ``torch.autocast`` (the reference's ``--amp`` path);
- **pytorch compiled**: the same under ``torch.compile`` (default mode); a failure is reported as
  a row with its error.

Every row has the step's best and median wall time over the timed steps, images/s, the peak
device memory, and the convolutions' achieved TFLOP/s: 3 × 2 × the forward convolutions' MACs
(:func:`glif_jax.analysis.count_macs`) × T × batch per step (the forward convolution and the two
of its backward pass), over the best step time, and that over the device's peak. The precision
each side's convolutions run in is stated in the row (JAX's default matmul precision; PyTorch's
TF32 switches). The glif_jax rows carry the images/s ratios to both PyTorch rows of the setting.

Memory of glif_jax is the device's high-water mark (``memory_stats()['peak_bytes_in_use']``)
when it rose during the setting, as it does when the settings grow (T and batch increase within
each dtype); otherwise, and off GPU, XLA's own account of the compiled step
(``memory_analysis()``: arguments and outputs not aliased, plus ``temp``, the scratch the step
needs, mostly the activations kept for the backward pass). PyTorch's is
``torch.cuda.max_memory_allocated``.

:func:`max_batch` finds the largest batch that fits on the device, for each framework, T and
with or without recomputation (``remat``; ``torch.utils.checkpoint`` per block on the PyTorch
side): doubling, then bisection, one training step per probe, out-of-memory errors caught.
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

from experiments import recipe, train
from experiments.benchmarks import timing
from experiments.configs.base import base_config

NUM_CLASSES = 10
STEPS_PER_EPOCH = 10_000  # the learning rate stays that of the first epoch, as in PyTorch's loop

PEAK_TFLOPS = {
    # Dense tensor-core peaks: TF32 for float32 convolutions, BF16 for bfloat16 ones.
    "H200": {"float32": 494.7, "bfloat16": 989.4},
}
"""Peak TFLOP/s by a substring of the device's name, then by compute dtype."""

TORCH_VARIANTS = ("eager", "compiled")

COLUMNS = (
    "framework",
    "T",
    "batch",
    "dtype",
    "remat",
    "compile_s",
    "step_ms",
    "median_step_ms",
    "images/s",
    "conv_TFLOP/s",
    "of_peak",
    "peak_MiB",
    "peak_source",
    "temp_MiB",
    "peak_vs_no_remat",
    "vs_eager",
    "vs_compiled",
    "jax_matmul_precision",
    "torch_matmul_tf32",
    "torch_cudnn_tf32",
    "autocast",
    "loss_finite",
    "error",
)
"""The columns of a timing row, in table order."""

MAX_BATCH_COLUMNS = (
    "framework",
    "T",
    "remat",
    "dtype",
    "max_batch",
    "first_failure",
    "exact",
    "probes",
    "linear_estimate",
    "search_s",
    "note",
)
"""The columns of a row of :func:`max_batch`."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration.

    Attributes:
      model: a name of :func:`glif_jax.models.names`, e.g. ``"resnet19"``.
      time_steps: T.
      batch: images per step.
      dtype: the compute dtype, ``"float32"`` or ``"bfloat16"`` (``config.compute_dtype``).
      image_shape: ``(H, W, C)`` of an image.
      remat: recompute each block in the backward pass.
      model_options: extra options of the model (e.g. ``stem_channels``), as ``(key, value)``
        pairs.
    """

    model: str
    time_steps: int
    batch: int
    dtype: str
    image_shape: tuple[int, int, int]
    remat: bool = False
    model_options: tuple[tuple[str, Any], ...] = ()


def make_config(setting: Setting):
    """The experiment config of ``setting``: the reference's recipe (``base_config``).

    Args:
      setting: the configuration.

    Returns:
      An ``ml_collections.ConfigDict``.
    """
    config = base_config()
    config.model, config.time_steps = setting.model, setting.time_steps
    config.batch_size = setting.batch
    config.compute_dtype = setting.dtype
    config.model_options.remat = setting.remat
    config.model_options.in_channels = setting.image_shape[-1]
    for key, value in setting.model_options:
        config.model_options[key] = value
    return config


def has_torch_transcription(model: str) -> bool:
    """Whether :mod:`~experiments.benchmarks.torch_networks` has a trainable ``model``.

    Args:
      model: a name of :func:`glif_jax.models.names`.

    Returns:
      True for ``"resnet19"``.
    """
    return model == "resnet19"


def torch_available() -> bool:
    """Whether PyTorch can be imported.

    Returns:
      True when ``import torch`` succeeds.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def peak_tflops(dtype: str, override: float | None = None) -> float | None:
    """The device's peak TFLOP/s for ``dtype`` convolutions.

    Args:
      dtype: ``"float32"`` (TF32 tensor cores) or ``"bfloat16"``.
      override: the value to use (``None``: look the device up in :data:`PEAK_TFLOPS`).

    Returns:
      The peak, or ``None`` for a device not in the table (every CPU).
    """
    if override is not None:
        return override
    device = jax.devices()[0]
    if device.platform != "gpu":
        return None
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_TFLOPS.items():
        if name in kind:
            return peaks.get(dtype)
    return None


def conv_flops(model, image_shape: Sequence[int], time_steps: int, batch: int) -> float:
    """Convolution FLOPs of one training step: 3 × 2 × forward conv MACs × T × batch.

    The forward pass's convolutions, and in the backward pass the gradient with respect to
    their input and to their kernel, each as many multiply-accumulates (the stem's input
    gradient, which no one computes, included).

    Args:
      model: the network (an NNX module).
      image_shape: ``(H, W, C)``.
      time_steps: T.
      batch: images per step.

    Returns:
      FLOPs (2 per multiply-accumulate).
    """
    from glif_jax import analysis

    layers = analysis.count_macs(model, (1, *image_shape))
    macs = sum(_macs_of(layer) for layer in layers if _kind_of(layer) == "conv")
    return 3 * 2 * macs * time_steps * batch


def _kind_of(layer) -> str:
    return layer["kind"] if isinstance(layer, Mapping) else layer[1]


def _macs_of(layer) -> float:
    return float(layer["macs"] if isinstance(layer, Mapping) else layer[2])


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory.

    Args:
      error: an exception of a training step or of its compilation.

    Returns:
      True for XLA's ``RESOURCE_EXHAUSTED`` (``jax.errors.JaxRuntimeError``),
      ``torch.cuda.OutOfMemoryError`` and other errors that say "out of memory".
    """
    if type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


_SIZE_LIMITS = ("CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_BAD_PARAM", "canUse32BitIndexMath")


def _too_large(error: BaseException) -> bool:
    """Whether ``error`` says the batch does not fit: out of memory, or past a library's size
    limit (cuDNN's 32-bit indexing refuses tensors of 2³¹ elements and more)."""
    return is_out_of_memory(error) or any(marker in str(error) for marker in _SIZE_LIMITS)


def _error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def batch_arrays(setting: Setting, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random batch of ``setting``'s size, the same for glif_jax and PyTorch.

    Args:
      setting: its ``batch`` and ``image_shape``.
      seed: of NumPy's generator.

    Returns:
      Normalised images ``(B, H, W, C)`` float32 (standard normal) and labels ``(B,)`` int32.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(setting.batch, *setting.image_shape)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, setting.batch).astype(np.int32)
    return images, labels


def new_row(setting: Setting, framework: str) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(
        framework=framework,
        T=setting.time_steps,
        batch=setting.batch,
        dtype=setting.dtype,
        remat=setting.remat,
    )
    return row


def _rates(row: dict, flops: float | None, peak: float | None) -> None:
    """Fill images/s, conv TFLOP/s and the fraction of peak from ``row["step_ms"]``."""
    seconds = row["step_ms"] / 1e3
    row["images/s"] = row["batch"] / seconds
    if flops:
        row["conv_TFLOP/s"] = flops / seconds / 1e12
        row["of_peak"] = row["conv_TFLOP/s"] / peak if peak else None


# ------------------------------------------------------------------------------------------------
# glif_jax


class JaxStep:
    """glif_jax's training step of one setting: the state, the jitted step, the network.

    Args:
      setting: the configuration.
    """

    def __init__(self, setting: Setting):
        self.setting = setting
        self.config = make_config(setting)
        self.graphs, self.state, self.tx = train.create_train_state(
            self.config, num_classes=NUM_CLASSES, steps_per_epoch=STEPS_PER_EPOCH
        )
        self.step = jax.jit(
            functools.partial(
                train.train_step,
                graph=self.graphs.train,
                tx=self.tx,
                loss=recipe.Recipe.from_config(self.config),
            ),
            donate_argnums=0,
        )

    def model(self):
        """The network with the current state, in training mode."""
        from flax import nnx

        return nnx.merge(self.graphs.train, self.state.params, self.state.batch_stats)

    def reference_state_dict(self) -> dict[str, np.ndarray]:
        """The current weights and statistics in the reference's layout.

        Returns:
          ``{name: NumPy array}`` (:func:`glif_jax.interop.export_reference_state_dict`).
        """
        from glif_jax import interop

        return interop.export_reference_state_dict(self.model())

    def batch(self, images: np.ndarray, labels: np.ndarray) -> dict[str, jax.Array]:
        """The batch on the device.

        Args:
          images: ``(B, H, W, C)``.
          labels: ``(B,)``.

        Returns:
          ``{"image", "label"}`` as :func:`experiments.train.train_step` takes them.
        """
        return {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}


def _device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def measure_jax(
    runner: JaxStep,
    images: np.ndarray,
    labels: np.ndarray,
    repeats: int,
    *,
    flops: float | None,
    peak: float | None,
) -> dict[str, Any]:
    """Compile and run glif_jax's step: one warm-up step, then ``repeats`` timed ones.

    Args:
      runner: the step; its state is consumed.
      images, labels: the batch.
      repeats: timed steps.
      flops: convolution FLOPs of a step (:func:`conv_flops`).
      peak: the device's peak TFLOP/s (``None``: unknown).

    Returns:
      One row of :data:`COLUMNS`.
    """
    row = new_row(runner.setting, "glif_jax")
    row["jax_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    try:
        data = runner.batch(images, labels)
        start = time.perf_counter()
        compiled = runner.step.lower(runner.state, data).compile()
        row["compile_s"] = time.perf_counter() - start
        memory = compiled.memory_analysis()
        xla_peak = None
        if memory is not None:
            xla_peak = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
                + memory.temp_size_in_bytes
            )
            row["temp_MiB"] = memory.temp_size_in_bytes / 2**20
        device_before = _device_peak_bytes()
        state, times = runner.state, []
        runner.state = None  # donated below
        for i in range(repeats + 1):
            start = time.perf_counter()
            state, metrics = compiled(state, data)
            jax.block_until_ready(metrics["loss"])
            if i:
                times.append(time.perf_counter() - start)
        runner.state = state
        device_after = _device_peak_bytes()
        if device_after is not None and device_before is not None and device_after > device_before:
            row["peak_MiB"], row["peak_source"] = device_after / 2**20, "device"
        elif xla_peak is not None:
            row["peak_MiB"], row["peak_source"] = xla_peak / 2**20, "xla"
        row["step_ms"] = 1e3 * min(times)
        row["median_step_ms"] = 1e3 * statistics.median(times)
        row["loss_finite"] = bool(jnp.isfinite(metrics["loss"]))
        _rates(row, flops, peak)
        timing.progress(
            f"training glif_jax T={row['T']} B={row['batch']} {row['dtype']} "
            f"remat={row['remat']}: {row['step_ms']:.1f} ms/step"
        )
    except Exception as error:  # one failing setting must not end the run
        row["error"] = _error_text(error)
        timing.progress(f"training glif_jax {runner.setting}: {row['error']}")
    return row


# ------------------------------------------------------------------------------------------------
# PyTorch


def torch_device() -> str:
    """Where the PyTorch rows run.

    Returns:
      ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``.
    """
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def torch_recipe(setting: Setting) -> dict[str, float]:
    """The hyperparameters of glif_jax's optimizer for ``setting``, for PyTorch's.

    Args:
      setting: the configuration (its config's recipe keys are read).

    Returns:
      The keyword arguments of
      :func:`~experiments.benchmarks.torch_networks.reference_optimizer`.
    """
    config = make_config(setting)
    return {
        "learning_rate": config.learning_rate,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "gate_lr_scale": config.gate_lr_scale,
    }


def measure_torch(
    setting: Setting,
    state_dict: Mapping[str, np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    repeats: int,
    *,
    variant: str = "eager",
    flops: float | None = None,
    peak: float | None = None,
) -> dict[str, Any]:
    """Run the PyTorch transcription's step: one warm-up step (the compilation, for
    ``"compiled"``), then ``repeats`` timed ones.

    Args:
      setting: the configuration (its ``model`` must be ``"resnet19"``).
      state_dict: the initial weights in the reference's layout (e.g. glif_jax's, exported).
      images, labels: the batch, ``(B, H, W, C)`` (laid out as ``(B, C, H, W)`` here).
      repeats: timed steps.
      variant: ``"eager"`` or ``"compiled"`` (``torch.compile``, default mode, with a second
        untimed step).
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
            _time_torch(row, setting, state_dict, images, labels, repeats, variant)
        _rates(row, flops, peak)
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


def _time_torch(row, setting, state_dict, images, labels, repeats, variant) -> None:
    """The timed steps of :func:`measure_torch`, into ``row``."""
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
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
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
    first, times = times[0], times[warmup:]
    row["step_ms"] = 1e3 * min(times)
    row["median_step_ms"] = 1e3 * statistics.median(times)
    if variant == "compiled":
        row["compile_s"] = max(first - statistics.median(times), 0.0)
    if device == "cuda":
        row["peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
        row["peak_source"] = "torch.cuda"
    row["loss_finite"] = math.isfinite(value)


# ------------------------------------------------------------------------------------------------
# The timing grid


def _skipped(setting: Setting, framework: str) -> dict[str, Any]:
    row = new_row(setting, framework)
    row["error"] = "skipped: the time budget was spent"
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def annotate(rows: list[dict]) -> None:
    """Images/s of each glif_jax row over its setting's PyTorch rows; peak memory with
    recomputation over that without."""
    by_key = {}
    for row in rows:
        by_key[row["framework"], row["T"], row["batch"], row["dtype"], row["remat"]] = row
    for row in rows:
        key = (row["T"], row["batch"], row["dtype"], row["remat"])
        if row["framework"] == "glif_jax":
            for variant in TORCH_VARIANTS:
                other = by_key.get((f"pytorch {variant}", *key))
                row[f"vs_{variant}"] = _ratio(row["images/s"], other and other["images/s"])
        if row["remat"]:
            plain = by_key.get((row["framework"], row["T"], row["batch"], row["dtype"], False))
            row["peak_vs_no_remat"] = _ratio(row["peak_MiB"], plain and plain["peak_MiB"])


def _sorted(rows: list[dict]) -> list[dict]:
    order = {"glif_jax": 0, "pytorch eager": 1, "pytorch compiled": 2}
    return sorted(
        rows,
        key=lambda r: (r["T"], r["batch"], r["dtype"], r["remat"], order.get(r["framework"], 3)),
    )


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
    the order given, T increasing, batch increasing, glif_jax (one network and initial state
    per dtype and T, for every batch) then PyTorch eager from the same weights; the
    ``torch.compile`` rows, whose compilations take longest, after all of them.

    Args:
      model: a name of :func:`glif_jax.models.names`; PyTorch runs only for ``"resnet19"``.
      time_steps, batches, dtypes: the grid.
      image_shape: ``(H, W, C)``.
      repeats: timed steps after the warm-up.
      torch_variants: the PyTorch rows, from :data:`TORCH_VARIANTS` (empty: none).
      remat: also time glif_jax with recomputation, and give the ratio of its peak memory.
      model_options: extra model options, e.g. ``{"stem_channels": 8}``.
      peak_tflops_override: the device's peak TFLOP/s (``None``: :func:`peak_tflops`).
      budget_s: wall-clock seconds for the whole grid; rows not started by then are reported
        as skipped (``None``: no limit).
      on_rows: called with the rows so far after every row (to save partial results).

    Returns:
      Rows of :data:`COLUMNS`, sorted by T, batch, dtype and remat.
    """
    deadline = None if budget_s is None else time.monotonic() + budget_s
    options = tuple(sorted((model_options or {}).items()))
    variants = list(torch_variants) if has_torch_transcription(model) and torch_available() else []
    rows: list[dict] = []
    weights: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # (T, dtype) → PyTorch's start
    flops_per_image: dict[int, float] = {}

    def add(row):
        rows.append(row)
        annotate(rows)
        if on_rows is not None:
            on_rows(_sorted(rows))

    def over_budget():
        return deadline is not None and time.monotonic() > deadline

    def setting(steps, batch, dtype, with_remat=False):
        return Setting(model, steps, batch, dtype, tuple(image_shape), with_remat, options)

    def jax_rows(steps, dtype, with_remat):
        runner = initial = None
        for batch in batches:
            one = setting(steps, batch, dtype, with_remat)
            if over_budget():
                add(_skipped(one, "glif_jax"))
                continue
            if runner is None:
                try:
                    runner = JaxStep(one)  # the batch size is no part of the state
                except Exception as error:
                    row = new_row(one, "glif_jax")
                    row["error"] = _error_text(error)
                    add(row)
                    continue
                # On the host: no device memory of the settings' high-water marks.
                initial = jax.device_get(runner.state)
                if steps not in flops_per_image:
                    flops_per_image[steps] = conv_flops(runner.model(), image_shape, steps, 1)
                if variants and not with_remat:
                    weights[steps, dtype] = runner.reference_state_dict()
            runner.state = jax.device_put(initial)
            images, labels = batch_arrays(one)
            peak = peak_tflops(dtype, peak_tflops_override)
            flops = flops_per_image[steps] * batch
            add(measure_jax(runner, images, labels, repeats, flops=flops, peak=peak))
        del runner, initial
        gc.collect()

    def torch_row(steps, batch, dtype, variant):
        one = setting(steps, batch, dtype)
        if over_budget():
            return _skipped(one, f"pytorch {variant}")
        if (steps, dtype) not in weights:
            row = new_row(one, f"pytorch {variant}")
            row["error"] = "no weights: glif_jax's network could not be built"
            return row
        images, labels = batch_arrays(one)
        return measure_torch(
            one,
            weights[steps, dtype],
            images,
            labels,
            repeats,
            variant=variant,
            flops=flops_per_image.get(steps, 0.0) * batch or None,
            peak=peak_tflops(dtype, peak_tflops_override),
        )

    for dtype in dtypes:
        for steps in time_steps:
            for with_remat in (False, True) if remat else (False,):
                jax_rows(steps, dtype, with_remat)
            if "eager" in variants:
                for batch in batches:
                    add(torch_row(steps, batch, dtype, "eager"))
    if "compiled" in variants:
        for dtype in dtypes:
            for steps in time_steps:
                for batch in batches:
                    add(torch_row(steps, batch, dtype, "compiled"))
    return _sorted(rows)


# ------------------------------------------------------------------------------------------------
# The largest batch that fits


def search_max_batch(
    fits: Callable[[int], bool],
    *,
    start: int,
    upper: int,
    tolerance: float = 0.0,
    deadline: float | None = None,
) -> dict[str, Any]:
    """The largest batch for which ``fits`` holds, assuming that it holds below some size.

    Doubling from ``start`` until a failure or ``upper``, then bisection between the largest
    fit and the smallest failure until they are at most ``max(1, tolerance · fit)`` apart.

    Args:
      fits: runs one probe; False when the batch does not fit.
      start: the first batch probed.
      upper: the largest batch probed (the search's bound).
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

    def out_of_time():
        return deadline is not None and time.time() > deadline

    def probe(batch):
        ok = bool(fits(batch))
        probes.append((batch, ok))
        return ok

    def close_enough():
        return hi is not None and hi - lo <= max(1, int(tolerance * lo))

    batch = start
    while True:
        if probe(batch):
            lo = batch
            if batch >= upper or out_of_time():
                break
            batch = min(2 * batch, upper)
        else:
            hi = batch
            break
    while not close_enough() and hi is not None and not out_of_time():
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return {
        "max_batch": lo,
        "first_failure": hi,
        "exact": lo >= upper or close_enough(),
        "reached_upper": lo >= upper,
        "probes": probes,
    }


def _jax_fits(setting: Setting, estimates: dict[int, int]) -> Callable[[int], bool]:
    """A probe of glif_jax: one training step at a batch size, from the same initial state.

    Each fit also records in ``estimates`` the batch at which XLA's scratch for the step
    (``temp``, mostly activations), scaled linearly with the batch, would fill the device's
    memory limit beside the step's arguments (GPU only).
    """
    runner = JaxStep(setting)
    initial = runner.state

    def fits(batch: int) -> bool:
        images, labels = batch_arrays(dataclasses.replace(setting, batch=batch))
        try:
            data = runner.batch(images, labels)
            state = jax.tree.map(jnp.copy, initial)  # the step donates its input
            compiled = runner.step.lower(state, data).compile()
            _, metrics = compiled(state, data)
            jax.block_until_ready(metrics["loss"])
        except Exception as error:
            if _too_large(error):
                return False
            raise
        finally:
            state = data = None
            gc.collect()
        memory = compiled.memory_analysis()
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
        if memory is not None and limit and memory.temp_size_in_bytes:
            resident = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
            )
            estimates[batch] = int(batch * (limit - resident) / memory.temp_size_in_bytes)
        return True

    return fits


def _torch_fits(
    setting: Setting, layout: Mapping[str, tuple], estimates: dict[int, int]
) -> Callable[[int], bool]:
    """A probe of the PyTorch transcription: one training step at a batch size.

    Each fit also records in ``estimates`` the batch at which the step's memory beyond the
    weights and optimizer state, scaled linearly with the batch, would fill the device (CUDA
    only).
    """
    import torch

    from experiments.benchmarks import torch_networks

    device = torch_device()
    architecture = torch_networks.resnet19_architecture(
        {key: shape for key, (shape, _) in layout.items()}
    )
    model = torch_networks.ResNet19(**architecture, remat=setting.remat).to(device).train()
    optimizer = torch_networks.reference_optimizer(model, **torch_recipe(setting))
    autocast = torch.bfloat16 if setting.dtype == "bfloat16" else None

    def fits(batch: int) -> bool:
        images, labels = batch_arrays(dataclasses.replace(setting, batch=batch))
        x = y = None
        cuda = device == "cuda"
        try:
            with _reference_cudnn():
                x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
                x, y = x.to(device), torch.from_numpy(labels.astype(np.int64)).to(device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                torch_networks.train_step(model, optimizer, x, y, autocast_dtype=autocast).item()
            if cuda:
                used = torch.cuda.max_memory_allocated() - base
                _, total = torch.cuda.mem_get_info()
                estimates[batch] = int(batch * (total - base) / used)
            return True
        except Exception as error:
            if _too_large(error):
                return False
            raise
        finally:
            x = y = None
            optimizer.zero_grad(set_to_none=True)
            _release_torch_memory()

    return fits


def _reference_layout(setting: Setting) -> dict[str, tuple]:
    """The reference's state-dict layout of ``setting``'s network, from shapes alone."""
    from flax import nnx

    from glif_jax import interop

    config = make_config(setting)
    abstract = nnx.eval_shape(lambda: train.build_model(config, NUM_CLASSES, nnx.Rngs(0)))
    return interop.reference_layout(abstract)


def _max_batch_row(framework: str, setting: Setting) -> dict[str, Any]:
    row = dict.fromkeys(MAX_BATCH_COLUMNS)
    row.update(framework=framework, T=setting.time_steps, remat=setting.remat, dtype=setting.dtype)
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
) -> dict[str, Any]:
    """:func:`search_max_batch` for one framework and setting (its ``batch`` is ignored).

    Args:
      framework: ``"glif_jax"`` or ``"pytorch eager"``.
      setting: the configuration.
      start, upper, tolerance, deadline: see :func:`search_max_batch`.
      layout: the reference layout of the network (PyTorch only; default: from ``setting``).

    Returns:
      One row of :data:`MAX_BATCH_COLUMNS`.
    """
    row = _max_batch_row(framework, setting)
    began = time.perf_counter()
    estimates: dict[int, int] = {}
    try:
        if framework == "glif_jax":
            fits = _jax_fits(setting, estimates)
        else:
            fits = _torch_fits(setting, layout or _reference_layout(setting), estimates)
        found = search_max_batch(
            fits, start=start, upper=upper, tolerance=tolerance, deadline=deadline
        )
        row.update({key: found[key] for key in ("max_batch", "first_failure", "exact")})
        row["probes"] = " ".join(f"{b}{'✓' if ok else '✗'}" for b, ok in found["probes"])
        row["linear_estimate"] = estimates.get(found["max_batch"])
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


def _isolated_max_batch_one(framework, setting, kwargs, environment) -> dict[str, Any]:
    """:func:`max_batch_one` in a fresh process, whose device memory is all its own."""
    os.environ.update(environment)  # before JAX or PyTorch claim the device
    return max_batch_one(framework, setting, **kwargs)


# XLA's allocator in a process that runs a glif_jax search: one pool of most of the device,
# allocated at start, like PyTorch's caching allocator free to use the whole device.
_JAX_SEARCH_ENVIRONMENT = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92",
}


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
      model: a name of :func:`glif_jax.models.names`; PyTorch runs only for ``"resnet19"``.
      time_steps: the T values.
      image_shape: ``(H, W, C)``.
      dtype: the compute dtype.
      frameworks: from ``"glif_jax"`` and ``"pytorch eager"``.
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
    if not (has_torch_transcription(model) and torch_available()):
        frameworks = [f for f in frameworks if f == "glif_jax"]
    options = tuple(sorted((model_options or {}).items()))
    jobs = [
        (framework, Setting(model, steps, 1, dtype, tuple(image_shape), remat, options))
        for steps in time_steps
        for remat in (False, True)
        for framework in frameworks
    ]
    end = None if budget_s is None else time.time() + budget_s
    rows = []
    for i, (framework, setting) in enumerate(jobs):
        deadline = None if end is None else time.time() + (end - time.time()) / (len(jobs) - i)
        kwargs = dict(start=start, upper=upper, tolerance=tolerance, deadline=deadline)
        if framework != "glif_jax":
            kwargs["layout"] = _reference_layout(setting)
        if not isolate:
            rows.append(max_batch_one(framework, setting, **kwargs))
        else:
            environment = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
            if framework == "glif_jax":
                environment = _JAX_SEARCH_ENVIRONMENT
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                future = pool.submit(
                    _isolated_max_batch_one, framework, setting, kwargs, environment
                )
                try:
                    rows.append(future.result())
                except Exception as error:  # the process died
                    row = _max_batch_row(framework, setting)
                    row["note"] = _error_text(error)
                    rows.append(row)
        if on_rows is not None:
            on_rows(list(rows))
    return rows
