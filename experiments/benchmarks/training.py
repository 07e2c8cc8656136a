"""One training step of the reference's recipe: glif_jax's against the PyTorch transcription's.

    python -m experiments.benchmarks --parts training --train-time-steps 2,4,6 --train-batch 64,128

:func:`measure` times, for each compute dtype, T and batch, one row per framework:

- **glif_jax**: :func:`experiments.train.train_step` on the state of
  :func:`experiments.train.create_train_state`, jitted with the state donated and compiled ahead
  of time; its memory is XLA's account of the compiled step;
- **pytorch eager**: the same network, initial weights, recipe and batch in the PyTorch
  transcription (:mod:`experiments.benchmarks.torch_networks`), as the reference runs it: cuDNN
  deterministic with its benchmark mode off, bfloat16 through ``torch.autocast`` (its ``--amp``);
- **pytorch compiled**: the same under ``torch.compile``; a failure is a row with its error.

A row's convolution TFLOP/s count 3 × 2 × the forward convolutions' MACs × T × batch (the forward
convolution and the two of its backward pass). The rows run by priority, so that a time budget
cuts the least important: dtype by dtype, T increasing, batch increasing, glif_jax (and with
``remat`` its recomputing step) then PyTorch eager; the ``torch.compile`` rows, whose
compilations take longest, after all of them. Every row is handed to ``on_rows`` as it comes, so
that a run cut short keeps what it measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import aot, train
from experiments.benchmarks import timing
from experiments.configs.base import base_config
from experiments.settings import Settings

NUM_CLASSES = 10
STEPS_PER_EPOCH = 10_000  # the learning rate stays that of the first epoch, as in PyTorch's loop

PEAK_TFLOPS = {"H200": {"float32": 494.7, "bfloat16": 989.4}}
"""Dense tensor-core TFLOP/s by a substring of the GPU's name, then by compute dtype (TF32 for
float32 convolutions)."""

TORCH_MODELS = ("resnet19",)
"""The networks the PyTorch transcription has."""

TORCH_VARIANTS = ("eager", "compiled")

COLUMNS = tuple(
    """framework T batch dtype remat compile_s step_ms median_step_ms images/s conv_TFLOP/s
    of_peak peak_MiB temp_MiB peak_vs_no_remat vs_eager vs_compiled jax_matmul_precision
    torch_cudnn_tf32 autocast loss_finite error""".split()
)
"""A row of :func:`measure`, in table order."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration: ``model`` (a name of :func:`glif_jax.models.names`), T, images
    per step, the compute dtype, the image ``(H, W, C)``, recomputation, and extra model options
    as ``(key, value)`` pairs."""

    model: str
    time_steps: int
    batch: int
    dtype: str
    image_shape: tuple[int, int, int]
    remat: bool = False
    model_options: tuple[tuple[str, Any], ...] = ()

    def config(self):
        """The experiment config: the reference's recipe (``base_config``) for this network."""
        config = base_config()
        config.model, config.time_steps = self.model, self.time_steps
        config.batch_size, config.compute_dtype = self.batch, self.dtype
        config.model_options.remat = self.remat
        config.model_options.in_channels = self.image_shape[-1]
        for key, value in self.model_options:
            config.model_options[key] = value
        return config

    def batch_arrays(self, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Random normalised images ``(B, H, W, C)`` float32 and labels ``(B,)`` int32, the same
        for both frameworks."""
        rng = np.random.default_rng(seed)
        images = rng.normal(size=(self.batch, *self.image_shape)).astype(np.float32)
        return images, rng.integers(0, NUM_CLASSES, self.batch).astype(np.int32)


def torch_recipe(setting: Setting) -> dict[str, float]:
    """The arguments of :func:`~experiments.benchmarks.torch_networks.reference_optimizer` that
    give glif_jax's optimizer of ``setting``."""
    config = setting.config()
    keys = ("learning_rate", "momentum", "weight_decay", "gate_lr_scale")
    return {key: config[key] for key in keys}


def new_row(setting: Setting, framework: str, error: str | None = None) -> dict[str, Any]:
    """A row of :data:`COLUMNS` with only its setting (and ``error``) filled."""
    row = dict.fromkeys(COLUMNS)
    row.update(framework=framework, T=setting.time_steps, batch=setting.batch)
    row.update(dtype=setting.dtype, remat=setting.remat, error=error)
    return row


def error_text(error: BaseException) -> str:
    """``Type: first line`` of an error, for a row's cell."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _fill_times(row: dict, times: Sequence[float], flops: float, peak: float | None) -> None:
    """The step times (seconds) and the rates of the best one."""
    seconds = min(times)
    row["step_ms"], row["median_step_ms"] = 1e3 * seconds, 1e3 * statistics.median(times)
    row["images/s"] = row["batch"] / seconds
    row["conv_TFLOP/s"] = flops / seconds / 1e12
    row["of_peak"] = row["conv_TFLOP/s"] / peak if peak else None
    timing.progress(
        f"training {row['framework']} T={row['T']} B={row['batch']} {row['dtype']} "
        f"remat={row['remat']}: {row['step_ms']:.1f} ms/step"
    )


# ------------------------------------------------------------------------------------------------
# glif_jax


class GlifJaxStep:
    """glif_jax's training step of a network, jitted with the state donated, and its initial
    state; neither depends on the batch size, so one serves every batch of a T and dtype.

    Attributes:
      conv_flops_per_image: convolution FLOPs of one training step per image.
    """

    def __init__(self, setting: Setting):
        self.network = dataclasses.replace(setting, batch=1)  # what it is built for
        settings = Settings.from_config(setting.config())
        self.graphs, self.state, tx = train.create_train_state(
            settings, num_classes=NUM_CLASSES, steps_per_epoch=STEPS_PER_EPOCH
        )
        self.step = jax.jit(
            functools.partial(
                train.train_step, graph=self.graphs.train, tx=tx, loss=settings.recipe
            ),
            donate_argnums=0,
        )
        self.initial = jax.device_get(self.state)  # on the host: each batch starts from it
        self.conv_flops_per_image = _conv_flops(self.model(), setting)

    def model(self):
        """The network with the current state, in training mode."""
        from flax import nnx

        return nnx.merge(self.graphs.train, self.state.params, self.state.batch_stats)

    def reference_state_dict(self) -> dict[str, np.ndarray]:
        """The current weights and statistics in the reference's layout."""
        from glif_jax import interop

        return interop.export_reference_state_dict(self.model())

    def time(self, setting: Setting, repeats: int, peak: float | None) -> dict[str, Any]:
        """A row for ``setting``'s batch: compile, one warm-up step, ``repeats`` timed steps."""
        row = new_row(setting, "glif_jax")
        row["jax_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
        images, labels = setting.batch_arrays()
        data = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
        self.state = None  # the step donates its state: each batch starts from the initial one
        state = jax.device_put(self.initial)
        start = time.perf_counter()
        compiled = self.step.lower(state, data).compile()
        row["compile_s"] = time.perf_counter() - start
        memory = compiled.memory_analysis()
        if memory is not None:  # XLA's account of the compiled step
            row["peak_MiB"] = aot.peak_bytes(memory) / 2**20
            row["temp_MiB"] = memory.temp_size_in_bytes / 2**20
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            state, metrics = compiled(state, data)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)
        self.state = state
        row["loss_finite"] = bool(jnp.isfinite(metrics["loss"]))
        _fill_times(row, times[1:], self.conv_flops_per_image * setting.batch, peak)
        return row


def _conv_flops(model, setting: Setting) -> float:
    """Convolution FLOPs of one training step per image: the forward pass's, and the gradients
    with respect to the input and to the kernel, each as many multiply-accumulates."""
    from glif_jax import analysis

    layers = analysis.count_macs(model, (1, *setting.image_shape))
    return 3 * 2 * setting.time_steps * sum(macs for _, kind, macs in layers if kind == "conv")


# ------------------------------------------------------------------------------------------------
# PyTorch


def torch_device() -> str:
    """Where the PyTorch rows run: ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def reference_cudnn():
    """cuDNN as the reference's ``seed_all`` leaves it: deterministic, benchmark mode off."""
    import torch

    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def free_torch_memory() -> None:
    """Hand PyTorch's cached device memory back, once its tensors are gone."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_batch(setting: Setting, device: str):
    """:meth:`Setting.batch_arrays` as PyTorch's network takes them: ``(B, C, H, W)``, int64."""
    import torch

    images, labels = setting.batch_arrays()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    return x, torch.from_numpy(labels.astype(np.int64)).to(device)


def time_pytorch(
    setting: Setting, weights: dict, variant: str, repeats: int, flops: float, peak: float | None
) -> dict[str, Any]:
    """A PyTorch row: the network from ``weights`` (the reference's layout), one warm-up step
    (two under ``torch.compile``: the first compiles, the second may recompile on the state the
    first changed), then ``repeats`` timed steps, each waited for as the reference's logging
    does."""
    import torch

    from experiments.benchmarks import torch_networks

    row = new_row(setting, f"pytorch {variant}")
    row["torch_cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    row["autocast"] = "bfloat16" if setting.dtype == "bfloat16" else "off"
    autocast = torch.bfloat16 if setting.dtype == "bfloat16" else None
    device, warmup = torch_device(), 2 if variant == "compiled" else 1
    model = optimizer = forward = x = y = loss = None
    try:
        with reference_cudnn():
            model = torch_networks.resnet19_from_state_dict(
                weights, remat=setting.remat, device=device
            )
            optimizer = torch_networks.reference_optimizer(model, **torch_recipe(setting))
            torch._dynamo.reset()  # a fresh compilation, timed in the first step
            forward = torch.compile(model) if variant == "compiled" else model
            x, y = torch_batch(setting, device)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(warmup + repeats):
                start = time.perf_counter()
                loss = torch_networks.train_step(forward, optimizer, x, y, autocast_dtype=autocast)
                row["loss_finite"] = math.isfinite(loss.item())
                times.append(time.perf_counter() - start)
            if variant == "compiled":
                row["compile_s"] = max(times[0] - statistics.median(times[warmup:]), 0.0)
            if device == "cuda":
                row["peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    finally:  # the next row gets the device back, whether this one ran or failed
        model = optimizer = forward = x = y = loss = None
        torch._dynamo.reset()  # its caches hold the network
        free_torch_memory()
    _fill_times(row, times[warmup:], flops, peak)
    return row


# ------------------------------------------------------------------------------------------------
# The grid


def peak_tflops(dtype: str, override: float | None = None) -> float | None:
    """The GPU's dense peak TFLOP/s for ``dtype`` (:data:`PEAK_TFLOPS`), or ``override``."""
    if override is not None:
        return override
    kind = getattr(jax.devices()[0], "device_kind", "")
    names = [name for name in PEAK_TFLOPS if jax.default_backend() == "gpu" and name in kind]
    return PEAK_TFLOPS[names[0]].get(dtype) if names else None


def annotate(rows: list[dict]) -> list[dict]:
    """``rows`` sorted, with glif_jax's images/s over each PyTorch row's of its setting
    (``vs_eager``, ``vs_compiled``) and peak memory with recomputation over that without."""
    by_key = {(r["framework"], r["T"], r["batch"], r["dtype"], r["remat"]): r for r in rows}

    def ratio(row, other, column):
        return row[column] / other[column] if other and row[column] and other[column] else None

    for row in rows:
        key = (row["T"], row["batch"], row["dtype"], row["remat"])
        if row["framework"] == "glif_jax":
            for variant in TORCH_VARIANTS:
                other = by_key.get((f"pytorch {variant}", *key))
                row[f"vs_{variant}"] = ratio(row, other, "images/s")
        if row["remat"]:
            plain = by_key.get((row["framework"], *key[:3], False))
            row["peak_vs_no_remat"] = ratio(row, plain, "peak_MiB")
    order = {"glif_jax": 0, "pytorch eager": 1, "pytorch compiled": 2}
    return sorted(
        rows, key=lambda r: (r["T"], r["batch"], r["dtype"], r["remat"], order[r["framework"]])
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
    model_options: dict[str, Any] | None = None,
    peak_tflops_override: float | None = None,
    budget_s: float | None = None,
    on_rows: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """Time glif_jax's step and PyTorch's at every T, batch and dtype, by priority.

    Args:
      model: a name of :func:`glif_jax.models.names`; PyTorch runs only for :data:`TORCH_MODELS`.
      time_steps, batches, dtypes: the grid; ``image_shape``: ``(H, W, C)``.
      repeats: timed steps after the warm-up.
      torch_variants: PyTorch's rows, from :data:`TORCH_VARIANTS`.
      remat: also time glif_jax with recomputation.
      model_options: extra model options, e.g. ``{"stem_channels": 8}``.
      peak_tflops_override: the device's peak TFLOP/s (default: :func:`peak_tflops`).
      budget_s: wall-clock seconds for the grid; the rows not started by then are skipped.
      on_rows: called with the rows so far (as returned) after every row.

    Returns:
      Rows of :data:`COLUMNS` by T, batch, dtype, remat and framework; a row that failed (a
      network that could not be built, a failed compilation) holds its error.
    """
    options = tuple(sorted((model_options or {}).items()))
    variants = [v for v in torch_variants if model in TORCH_MODELS]
    # Most important first: every glif_jax row (with and without recomputation) and PyTorch eager
    # one, by dtype, T and batch; then the torch.compile rows, whose compilations take longest.
    first_pass = [("glif_jax", False)] + [("glif_jax", True)] * remat
    first_pass += [("pytorch eager", False)] * ("eager" in variants)
    second_pass = [("pytorch compiled", False)] * ("compiled" in variants)
    plan = [
        (framework, Setting(model, steps, batch, dtype, image_shape, recompute, options))
        for rows_of_a_pass in (first_pass, second_pass)
        for dtype in dtypes
        for steps in time_steps
        for framework, recompute in rows_of_a_pass
        for batch in batches
    ]

    deadline = math.inf if budget_s is None else time.time() + budget_s
    rows: list[dict] = []
    glif_jax = None  # the latest glif_jax network, kept for all its batches
    starts = {}  # (dtype, T) -> PyTorch's initial weights and FLOPs per image, from glif_jax's
    for framework, setting in plan:
        row = new_row(setting, framework, "skipped: the time budget was spent")
        peak = peak_tflops(setting.dtype, peak_tflops_override)
        try:
            if time.time() < deadline and framework == "glif_jax":
                if glif_jax is None or glif_jax.network != dataclasses.replace(setting, batch=1):
                    glif_jax = None
                    gc.collect()  # the last network's device memory, before this one's
                    glif_jax = GlifJaxStep(setting)
                    if variants and not setting.remat:
                        starts[setting.dtype, setting.time_steps] = (
                            glif_jax.reference_state_dict(),
                            glif_jax.conv_flops_per_image,
                        )
                row = glif_jax.time(setting, repeats, peak)
            elif time.time() < deadline:
                if (setting.dtype, setting.time_steps) not in starts:
                    raise RuntimeError("no initial weights: glif_jax's network was not built")
                weights, flops = starts[setting.dtype, setting.time_steps]
                variant = framework.removeprefix("pytorch ")
                row = time_pytorch(setting, weights, variant, repeats, flops * setting.batch, peak)
        except Exception as error:  # one failing setting must not end the run
            row = new_row(setting, framework, error_text(error))
            timing.progress(f"training {framework} {setting}: {row['error']}")
        rows.append(row)
        on_rows(annotate(rows))
    return annotate(rows)
