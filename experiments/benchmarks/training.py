"""Training-step throughput, compile time and memory of a spiking network (ResNet-19 by default),
with and without recomputation (the models' ``remat=True``).

The step is the project's own (:func:`experiments.train.train_step` on the state of
:func:`experiments.train.create_train_state`, the reference's recipe of ``experiments/configs``),
on random images, jitted with the state donated. Memory is XLA's own account of the compiled
step (``memory_analysis()``): ``temp`` is the scratch the step needs beyond its inputs and
outputs, mostly the activations kept for the backward pass; ``peak`` adds the arguments and
outputs that are not aliased.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp

from experiments import recipe, train
from experiments.benchmarks import timing
from experiments.configs.base import base_config


def measure_one(
    model: str,
    time_steps: int,
    remat: bool,
    batch: int,
    image_shape: tuple[int, int, int],
    repeats: int,
) -> dict:
    """Compile and run ``repeats`` training steps of ``model``; returns one row.

    Args:
      model: a name of :func:`glif_jax.models.names`, e.g. ``"resnet19"``.
      time_steps: T.
      remat: recompute each block in the backward pass.
      batch: images per step.
      image_shape: ``(H, W, C)`` of an image.
      repeats: timed steps after the first (which is not timed).
    """
    config = base_config()
    config.model, config.time_steps, config.batch_size = model, time_steps, batch
    config.model_options.remat = remat
    config.model_options.in_channels = image_shape[-1]
    graphs, state, tx = train.create_train_state(config, num_classes=10, steps_per_epoch=1)
    step = jax.jit(
        functools.partial(
            train.train_step, graph=graphs.train, tx=tx, loss=recipe.Recipe.from_config(config)
        ),
        donate_argnums=0,
    )
    batch_data = {
        "image": jax.random.normal(jax.random.key(1), (batch, *image_shape)),
        "label": jax.random.randint(jax.random.key(2), (batch,), 0, 10),
    }

    start = time.perf_counter()
    compiled = step.lower(state, batch_data).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, batch_data)
        jax.block_until_ready(metrics["loss"])
        if i:
            times.append(time.perf_counter() - start)
    best = min(times)
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    timing.progress(f"training {model} T={time_steps} remat={remat}: {1e3 * best:.0f} ms/step")
    return {
        "model": model,
        "T": time_steps,
        "remat": remat,
        "batch": batch,
        "compile_s": compile_s,
        "step_ms": 1e3 * best,
        "median_step_ms": 1e3 * statistics.median(times),
        "images/s": batch / best,
        "temp_MiB": memory.temp_size_in_bytes / 2**20,
        "peak_MiB": peak / 2**20,
        "loss_finite": bool(jnp.isfinite(metrics["loss"])),
    }


def measure(
    model: str,
    time_steps: list[int],
    batch: int,
    image_shape: tuple[int, int, int],
    repeats: int,
) -> list[dict]:
    """:func:`measure_one` for every T, without and with recomputation; each pair of rows also
    gets the ratio of peak memory with recomputation to without."""
    rows = []
    for steps in time_steps:
        pair = [
            measure_one(model, steps, remat, batch, image_shape, repeats) for remat in (False, True)
        ]
        for row in pair:
            row["peak_vs_no_remat"] = row["peak_MiB"] / pair[0]["peak_MiB"]
        rows += pair
    return rows
