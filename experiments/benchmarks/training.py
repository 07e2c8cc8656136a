"""Training-step throughput, compile time and memory of a spiking network (ResNet-19 by default),
with and without recomputation (the models' ``remat=True``).

One SGD step on random images: forward, backward through every GLIF layer and BatchNorm, and the
update, jitted with the parameters, statistics and optimizer state donated. Memory is XLA's own
account of the compiled step (``memory_analysis()``): ``temp`` is the scratch the step needs
beyond its inputs and outputs, mostly the activations kept for the backward pass; ``peak`` adds
the arguments and outputs that are not aliased.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.benchmarks import timing
from glif_jax import models


def _train_step(graphdef, optimizer):
    def step(params, rest, opt_state, images, labels):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest, copy=True)
            logits = model(images)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, nnx.state(model, nnx.Not(nnx.Param))

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    return step


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
    net = models.create(
        model,
        num_classes=10,
        time_steps=time_steps,
        rngs=nnx.Rngs(0),
        remat=remat,
        in_channels=image_shape[-1],
    )
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    optimizer = optax.sgd(0.1, momentum=0.9)
    opt_state = optimizer.init(params)
    images = jax.random.normal(jax.random.key(1), (batch, *image_shape))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    step = jax.jit(_train_step(graphdef, optimizer), donate_argnums=(0, 1, 2))

    start = time.perf_counter()
    compiled = step.lower(params, rest, opt_state, images, labels).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        params, rest, opt_state, loss = compiled(params, rest, opt_state, images, labels)
        jax.block_until_ready(loss)
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
        "loss_finite": bool(jnp.isfinite(loss)),
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
