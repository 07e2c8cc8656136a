"""The largest training batch that fits on the device: glif_jax's step and PyTorch's.

    python -m experiments.benchmarks --parts max_batch --max-batch-time-steps 4,6

:func:`measure` searches, for each T, without and with recomputation, and each framework, the
largest batch whose training step (:mod:`experiments.benchmarks.training`) runs:
:func:`experiments.aot.largest_that_fits`, each probe one step, a step that runs out of memory (or
past cuDNN's 32-bit size limit) a probe that fails. On a GPU each search runs in a fresh process,
whose device memory is all its own: glif_jax with XLA's allocator given 92 % of the device at
start, PyTorch with its caching allocator.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from experiments import aot
from experiments.benchmarks import timing
from experiments.benchmarks.training import (
    NUM_CLASSES,
    GlifJaxStep,
    Setting,
    error_text,
    free_torch_memory,
    reference_cudnn,
    torch_batch,
    torch_device,
    torch_recipe,
)

COLUMNS = tuple(
    "framework T remat dtype max_batch first_failure exact probes search_s note".split()
)
"""A row of :func:`measure`, in table order."""

# Errors that say a batch does not fit besides running out of memory: cuDNN's 32-bit indexing
# refuses tensors of 2³¹ elements and more.
_SIZE_LIMITS = ("CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_BAD_PARAM", "canUse32BitIndexMath")

_ENVIRONMENT = {
    "glif_jax": {"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92"},
    "pytorch eager": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
}


def step_fits(step: Callable[[int], Any], batch: int) -> bool:
    """Whether ``step(batch)`` runs: False when the device is out of memory (XLA's
    ``RESOURCE_EXHAUSTED``, ``torch.cuda.OutOfMemoryError``) or past a size limit; any other
    error propagates."""
    try:
        step(batch)
    except Exception as error:
        text = str(error)
        out_of_memory = type(error).__name__ == "OutOfMemoryError" or "RESOURCE_EXHAUSTED" in text
        if out_of_memory or "out of memory" in text.lower() or any(s in text for s in _SIZE_LIMITS):
            return False
        raise
    return True


def glif_jax_step(setting: Setting) -> Callable[[int], None]:
    """One glif_jax training step at a batch size, compiled for it, from the initial state."""
    network = GlifJaxStep(setting)
    network.state = None  # the initial state stays on the host; a probe puts a copy on the device

    def step(batch: int) -> None:
        images, labels = dataclasses.replace(setting, batch=batch).batch_arrays()
        data = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
        _, metrics = network.step(jax.device_put(network.initial), data)
        jax.block_until_ready(metrics["loss"])

    return step


def pytorch_step(setting: Setting) -> Callable[[int], None]:
    """One step of the PyTorch transcription at a batch size (its weights initialised as PyTorch
    does: only their shapes matter here)."""
    import torch
    from flax import nnx

    from experiments.benchmarks import torch_networks
    from experiments.settings import Settings
    from glif_jax import interop

    network = Settings.from_config(setting.config()).network
    abstract = nnx.eval_shape(lambda: network.build(NUM_CLASSES, nnx.Rngs(0)))
    shapes = {key: shape for key, (shape, _) in interop.reference_layout(abstract).items()}
    architecture = torch_networks.resnet19_architecture(shapes)
    device = torch_device()
    model = torch_networks.ResNet19(**architecture, remat=setting.remat).to(device).train()
    optimizer = torch_networks.reference_optimizer(model, **torch_recipe(setting))
    autocast = torch.bfloat16 if setting.dtype == "bfloat16" else None

    def step(batch: int) -> None:
        x = y = None
        try:
            with reference_cudnn():
                x, y = torch_batch(dataclasses.replace(setting, batch=batch), device)
                torch_networks.train_step(model, optimizer, x, y, autocast_dtype=autocast).item()
        finally:  # the next probe gets the device back, whether this one fitted or not
            x = y = None
            optimizer.zero_grad(set_to_none=True)
            free_torch_memory()

    return step


def _row(framework: str, setting: Setting, note: str | None = None) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(framework=framework, T=setting.time_steps, remat=setting.remat, dtype=setting.dtype)
    return row | {"note": note}


def search(
    framework: str,
    setting: Setting,
    *,
    start: int,
    upper: int,
    tolerance: float,
    deadline: float | None,
) -> dict[str, Any]:
    """One row of :data:`COLUMNS`: the largest batch of ``framework``'s step of ``setting``
    (its ``batch`` ignored); an error that is not the device's memory ends it with a note."""
    row = _row(framework, setting)
    began = time.perf_counter()
    try:
        step = (glif_jax_step if framework == "glif_jax" else pytorch_step)(setting)
        found = aot.largest_that_fits(
            lambda batch: step_fits(step, batch),
            start=start,
            upper=upper,
            tolerance=tolerance,
            deadline=deadline,
        )
        row.update(max_batch=found.largest, first_failure=found.smallest_failure)
        row["exact"] = found.exact
        row["probes"] = " ".join(f"{b}{'✓' if ok else '✗'}" for b, ok in found.probes)
        if found.largest >= upper:
            row["note"] = f"the bound {upper} fits"
        elif not found.exact:
            row["note"] = "out of time: the largest batch that fits is at least max_batch"
    except Exception as error:
        row["note"] = error_text(error)
    row["search_s"] = time.perf_counter() - began
    timing.progress(
        f"max batch {framework} T={row['T']} remat={row['remat']}: {row['max_batch']} "
        f"({row['probes']}) {row['note'] or ''}"
    )
    return row


def _set_environment(variables: dict[str, str]) -> None:
    os.environ.update(variables)


def _search_in_a_process(framework: str, setting: Setting, **kwargs) -> dict[str, Any]:
    """:func:`search` in a fresh process, its allocator set before JAX or PyTorch claim the
    device; a process that dies gives a row with a note."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=_set_environment, initargs=(_ENVIRONMENT[framework],)
    ) as pool:
        try:
            return pool.submit(search, framework, setting, **kwargs).result()
        except Exception as error:  # the process died
            return _row(framework, setting, error_text(error))


def measure(
    model: str,
    time_steps: Sequence[int],
    image_shape: tuple[int, int, int],
    *,
    dtype: str = "float32",
    frameworks: Sequence[str] = ("glif_jax", "pytorch eager"),
    start: int = 64,
    upper: int = 8192,
    tolerance: float = 1 / 16,
    model_options: dict[str, Any] | None = None,
    budget_s: float | None = None,
    isolate: bool | None = None,
    on_rows: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """The largest batch that fits, for each T, without and with recomputation, and framework.

    Args:
      model: a name of :func:`glif_jax.models.names`; PyTorch runs only for ResNet-19.
      time_steps: the T values; ``image_shape``: ``(H, W, C)``; ``dtype``: the compute dtype.
      frameworks: from ``"glif_jax"`` and ``"pytorch eager"``.
      start, upper, tolerance: see :func:`experiments.aot.largest_that_fits`.
      model_options: extra model options.
      budget_s: wall-clock seconds for all the searches, shared evenly among those not yet run;
        a search out of time reports what it found (``exact`` False).
      isolate: each search in a fresh process (default: on GPUs, where the memory pools of the
        earlier searches would hold part of the device).
      on_rows: called with the rows so far after every search.

    Returns:
      Rows of :data:`COLUMNS`, by T, then remat, then framework.
    """
    isolate = jax.default_backend() != "cpu" if isolate is None else isolate
    options = tuple(sorted((model_options or {}).items()))
    jobs = [
        (framework, Setting(model, steps, 1, dtype, image_shape, remat, options))
        for steps in time_steps
        for remat in (False, True)
        for framework in frameworks
        if framework == "glif_jax" or model == "resnet19"
    ]
    end = None if budget_s is None else time.time() + budget_s
    rows = []
    for i, (framework, setting) in enumerate(jobs):
        deadline = None if end is None else time.time() + (end - time.time()) / (len(jobs) - i)
        kwargs = dict(start=start, upper=upper, tolerance=tolerance, deadline=deadline)
        rows.append((_search_in_a_process if isolate else search)(framework, setting, **kwargs))
        on_rows(list(rows))
    return rows
