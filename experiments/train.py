"""Training and evaluation of GLIF networks, data-parallel over every device of every host.

The shape of the Flax examples: :func:`create_train_state`, :func:`train_step`, :func:`eval_step`
and :func:`train_and_evaluate`. One ``jax.jit`` train step runs over a 1-D mesh of all devices:
the batch is sharded along it and the state replicated, so BatchNorm statistics are those of the
global batch (tdBN survives data parallelism, unlike the reference's SyncBN conversion).

A run is resumable at any point: the state (parameters, BN statistics, optimizer state, step, RNG)
is checkpointed every ``checkpoint_every_steps`` steps, at the end of every epoch and on SIGTERM or
Ctrl-C; the input pipeline's position is the step itself, because every batch is a pure function
of (seed, epoch, step). Started again with the same command, a run continues where it stopped and
ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import input_pipeline, reporting
from glif_jax import models
from glif_jax import nn as glif_nn

GATE_PARAMS = frozenset({"alpha", "beta", "gamma"})
NEURON_PARAMS = frozenset({"tau", "v_th", "leak", "v_reset", "conduct"})

# Keys that define what a checkpoint holds: resuming with a different value is an error.
_STATE_DEFINING_KEYS = (
    "dataset",
    "model",
    "model_options",
    "time_steps",
    "compute_dtype",
    "batch_size",
    "num_epochs",
    "seed",
    "learning_rate",
    "momentum",
    "weight_decay",
    "gate_lr_scale",
    "lr_period_epochs",
    "loss",
    "tet_lambda",
    "tet_means",
    "label_smoothing",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint in the workdir was written by a different config."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training step reads and writes; replicated over the mesh.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: the model's ``nnx.Param`` state.
      batch_stats: the model's ``nnx.BatchStat`` state (BN running statistics).
      opt_state: the optax state.
      rng: raw key data (uint32) for any stochastic layer; GLIF networks use none today.
    """

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of the model: its graph in training and in evaluation mode."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


# ------------------------------------------------------------------------------------------------
# Model, optimizer, state


def build_model(config: ml_collections.ConfigDict, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    """The network a config names, with its neuron options."""
    options = {k: v for k, v in config.model_options.to_dict().items() if v is not None}
    if config.compute_dtype != "float32":
        options["dtype"] = jnp.dtype(config.compute_dtype)
    return models.create(
        config.model,
        num_classes=num_classes,
        time_steps=config.time_steps,
        rngs=rngs,
        **options,
    )


def param_group(path: tuple) -> str:
    """The optimizer group of a parameter, by its name as the reference does (spec §4.1).

    Args:
      path: the parameter's pytree path in the model's ``nnx.State``; its last dictionary key is
        the attribute name (``kernel``, ``alpha``...), followed by the Variable's ``.value``.
    """
    name = next(str(k.key) for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
    if name in GATE_PARAMS:
        return "gates"
    if name in NEURON_PARAMS:
        return "neuron"
    return "weights"  # conv, linear and BN affine parameters


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """The reference's cosine, constant within an epoch: lr·(1 + cos(π·e/period))/2.

    ``e`` is the 0-based epoch of the step; ``period`` is ``num_epochs`` unless
    ``lr_period_epochs`` is set (torch's CosineAnnealingLR is periodic beyond T_max). The rates
    are computed per epoch in float64, so that the last epochs' small rates are exact in float32.
    """
    period = config.lr_period_epochs or config.num_epochs
    epochs = np.arange(config.num_epochs, dtype=np.float64)
    table = jnp.asarray(
        config.learning_rate * (1 + np.cos(np.pi * epochs / period)) / 2, jnp.float32
    )

    def schedule(step):
        return table[jnp.minimum(jnp.floor_divide(step, steps_per_epoch), len(table) - 1)]

    return schedule


def create_optimizer(
    config: ml_collections.ConfigDict, params: nnx.State, steps_per_epoch: int
) -> optax.GradientTransformation:
    """SGD with momentum in torch's convention, three parameter groups (spec §4.1).

    Conv, linear and BN parameters get ``weight_decay`` (added to the gradient before the
    momentum, as torch's SGD); the GLIF parameters get none; the gates α, β, γ run at
    ``learning_rate · gate_lr_scale``.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)

    def sgd(lr_scale: float, weight_decay: float):
        return optax.chain(
            optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
            optax.sgd(lambda step: lr_scale * schedule(step), momentum=config.momentum),
        )

    labels = jax.tree_util.tree_map_with_path(lambda path, _: param_group(path), params)
    return optax.multi_transform(
        {
            "weights": sgd(1.0, config.weight_decay),
            "neuron": sgd(1.0, 0.0),
            "gates": sgd(config.gate_lr_scale, 0.0),
        },
        labels,
    )


def create_train_state(
    config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int
) -> tuple[Graphs, TrainState, optax.GradientTransformation]:
    """Build the model and optimizer; returns the graphs, the initial state and the optimizer."""
    key = jax.random.key(config.seed)
    init_key, state_key = jax.random.split(key)
    model = build_model(config, num_classes, nnx.Rngs(params=init_key))
    model.train()
    train_graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graph = nnx.graphdef(model)
    tx = create_optimizer(config, params, steps_per_epoch)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_key),
    )
    return Graphs(train=train_graph, eval=eval_graph), state, tx


# ------------------------------------------------------------------------------------------------
# Steps


def _cross_entropy(logits, labels, label_smoothing):
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def compute_loss(per_step_logits, labels, config) -> jax.Array:
    """Mean cross-entropy of the mean-over-T logits (the reference), or the TET loss.

    TET (Deng et al., ICLR 2022): ``(1 − λ)·mean_t CE(o_t, y) + λ·mean_t MSE(o_t, means)``.

    Args:
      per_step_logits: ``(T, B, n)`` float32.
      labels: ``(B,)`` int32.
    """
    if config.loss == "cross_entropy":
        return jnp.mean(_cross_entropy(per_step_logits.mean(0), labels, config.label_smoothing))
    if config.loss == "tet":
        per_step = jax.vmap(lambda z: _cross_entropy(z, labels, config.label_smoothing))(
            per_step_logits
        )
        regulariser = jnp.mean(jnp.square(per_step_logits - config.tet_means))
        return (1 - config.tet_lambda) * jnp.mean(per_step) + config.tet_lambda * regulariser
    raise ValueError(f"unknown loss {config.loss!r}; expected 'cross_entropy' or 'tet'.")


def _topk_correct(logits, labels, k):
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graph: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a (global) batch: ``image`` ``(B, ...)``, ``label`` ``(B,)``."""

    def loss_fn(params):
        model = nnx.merge(graph, params, state.batch_stats, copy=True)
        per_step_logits = model(batch["image"], per_step=True).astype(jnp.float32)
        loss = compute_loss(per_step_logits, batch["label"], config)
        return loss, (per_step_logits.mean(0), nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "top1": jnp.mean(_topk_correct(logits, batch["label"], 1)),
        "top5": jnp.mean(_topk_correct(logits, batch["label"], min(5, logits.shape[-1]))),
    }
    new_state = dataclasses.replace(
        state, step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, graph: nnx.GraphDef
) -> dict[str, jax.Array]:
    """Sums over the real (``mask``) examples of a padded evaluation batch."""
    model = nnx.merge(graph, state.params, state.batch_stats, copy=True)
    logits = model(batch["image"]).astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(_topk_correct(logits, labels, 1) * mask),
        "top5": jnp.sum(_topk_correct(logits, labels, min(5, logits.shape[-1])) * mask),
        "count": jnp.sum(mask),
    }


# ------------------------------------------------------------------------------------------------
# Devices


def make_mesh(global_batch_size: int, devices: Sequence[jax.Device] | None = None):
    """A 1-D mesh named ``data`` over ``devices`` (default: every device of every host).

    Raises:
      ValueError: the global batch does not divide by the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if global_batch_size % len(devices):
        raise ValueError(
            f"batch_size={global_batch_size} (the global batch) does not divide by the "
            f"{len(devices)} devices; choose a multiple of {len(devices)}."
        )
    # Automatic sharding propagation: the model code needs no sharding annotations.
    return jax.sharding.Mesh(
        np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )


class Trainer:
    """The compiled steps of one config on one mesh, and host-to-device batch transfer."""

    def __init__(self, config, num_classes: int, steps_per_epoch: int, mesh):
        self.config = config
        self.mesh = mesh
        self.graphs, state, self.tx = create_train_state(config, num_classes, steps_per_epoch)
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.initial_state = jax.device_put(state, self.replicated)
        self.abstract_state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
            self.initial_state,
        )
        self.train_step = jax.jit(
            functools.partial(train_step, graph=self.graphs.train, tx=self.tx, config=config),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            functools.partial(eval_step, graph=self.graphs.eval),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
        )

    def model(self, state: TrainState) -> nnx.Module:
        """The network with ``state``'s parameters, in evaluation mode."""
        return nnx.merge(self.graphs.eval, state.params, state.batch_stats)

    def to_device(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assemble the global batch from every host's rows (each host passes its own)."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()
        }

    def compile_report(self, example_batch) -> str:
        """Compile the train step ahead of time; returns a line on its memory and compile time."""
        start = time.perf_counter()
        compiled = self.train_step.lower(self.initial_state, example_batch).compile()
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        if memory is None:
            return f"train step compiled in {seconds:.1f} s"
        temp = getattr(memory, "temp_size_in_bytes", 0) / 2**20
        args = getattr(memory, "argument_size_in_bytes", 0) / 2**20
        return (
            f"train step compiled in {seconds:.1f} s; per device: {args:.1f} MiB of arguments, "
            f"{temp:.1f} MiB of temporaries"
        )


# ------------------------------------------------------------------------------------------------
# Checkpoints


def config_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {
        key: json.loads(json.dumps(config[key], default=lambda o: o.to_dict()))
        for key in _STATE_DEFINING_KEYS
    }


class Checkpoints:
    """``latest/`` (every few steps, each epoch, on interruption) and ``best/`` (best top-1)."""

    def __init__(self, workdir: Path, max_to_keep: int):
        root = (workdir / "checkpoints").absolute()

        def options(name: str, max_to_keep: int) -> ocp.CheckpointManagerOptions:
            # Each manager its own barrier keys: the two save the same step numbers, and with
            # shared keys one save's cross-process barrier could be met by the other's.
            multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
            return ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, multiprocessing_options=multiprocessing
            )

        self.latest = ocp.CheckpointManager(root / "latest", options=options("latest", max_to_keep))
        self.best = ocp.CheckpointManager(root / "best", options=options("best", 1))

    @staticmethod
    def _save(manager, state: TrainState, meta: dict) -> None:
        step = int(jax.device_get(state.step))
        if step in manager.all_steps():
            return
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    # One manager's save in flight at a time, so that every process meets the barriers of the
    # two managers' background threads in one order.

    def save_latest(self, state: TrainState, meta: dict) -> None:
        self.best.wait_until_finished()
        self._save(self.latest, state, meta)

    def save_best(self, state: TrainState, meta: dict) -> None:
        self.latest.wait_until_finished()
        self._save(self.best, state, meta)

    def restore(
        self, abstract_state: TrainState, fingerprint: dict, which: str = "latest"
    ) -> tuple[TrainState, dict] | None:
        """The newest checkpoint of ``which`` (``latest`` or ``best``), or None if there is none.

        Raises:
          CheckpointMismatchError: the checkpoint was written by a different config, or its
            arrays do not match this model.
        """
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step()
        if step is None:
            return None
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        saved = meta.get("config", {})
        differences = {
            key: (saved.get(key), fingerprint[key])
            for key in fingerprint
            if saved.get(key) != fingerprint[key]
        }
        if differences:
            lines = "\n".join(
                f"  {key}: checkpoint has {was!r}, config has {now!r}"
                for key, (was, now) in differences.items()
            )
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {manager.directory} was written by a "
                f"different config:\n{lines}\nUse a new --workdir, or the config it was written "
                "with."
            )
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except ValueError as error:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {manager.directory} does not match the model "
                f"of this config: {error}"
            ) from error
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()


@contextlib.contextmanager
def _stop_requests():
    """Turn SIGTERM into a flag so that the loop can checkpoint before exiting."""
    requested = {"stop": False}

    def handler(signum, frame):
        requested["stop"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield requested
        return
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------
# The loop


def evaluate_dataset(trainer: Trainer, state: TrainState, config) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the whole evaluation split, across every host."""
    totals = None
    for local in input_pipeline.eval_batches(
        config.dataset,
        data_dir=config.data_dir,
        global_batch_size=config.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        sums = trainer.eval_step(state, trainer.to_device(local))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "loss": float(totals["loss"]) / count,
        "top1": 100.0 * float(totals["top1"]) / count,
        "top5": 100.0 * float(totals["top5"]) / count,
        "count": int(count),
    }


def _train_batches(config, epoch: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    return input_pipeline.train_batches(
        config.dataset,
        data_dir=config.data_dir,
        global_batch_size=config.batch_size,
        seed=config.seed,
        epoch=epoch,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint; returns the summary.

    Writes ``metrics.jsonl``, TensorBoard events, ``summary.json``, the per-epoch GLIF parameter
    records (``glif_params.npz``) and plots (``learning_curve.png``, ``glif_params.png``).
    """
    workdir = Path(workdir)
    info = input_pipeline.dataset_info(config.dataset)
    input_pipeline.check_prepared(config.dataset, config.data_dir)  # before compiling anything
    mesh = make_mesh(config.batch_size)
    steps_per_epoch = input_pipeline.steps_per_epoch(config.dataset, config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    stop_step = (
        min(config.num_train_steps, total_steps) if config.num_train_steps > 0 else total_steps
    )
    is_chief = jax.process_index() == 0

    trainer = Trainer(config, info.num_classes, steps_per_epoch, mesh)
    checkpoints = Checkpoints(workdir, config.max_to_keep)
    fingerprint = config_fingerprint(config)
    restored = checkpoints.restore(trainer.abstract_state, fingerprint)
    if restored is None:
        state, meta = trainer.initial_state, {"best_test_top1": None, "wall_time_s": 0.0}
    else:
        state, meta = restored
    step = int(jax.device_get(state.step))
    log = reporting.RunLog(workdir, enabled=is_chief, resume_step=step)
    records = reporting.GlifRecords(workdir / "glif_params.npz", enabled=is_chief)
    if step == 0:
        records.reset(glif_nn.glif_layers(trainer.model(state)))
    else:
        records.load(completed_epochs=step // steps_per_epoch)
        log.print(f"resuming {workdir} at step {step} (epoch {step // steps_per_epoch})")
    log.print(
        f"{config.model} on {config.dataset}: {info.num_train} train / {info.num_eval} test "
        f"examples, T={config.time_steps}, global batch {config.batch_size} on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) in "
        f"{jax.process_count()} process(es); {steps_per_epoch} steps per epoch"
    )

    best = meta.get("best_test_top1")  # over end-of-epoch evaluations, as the paper reports
    last_eval = meta.get("last_eval")
    wall_start = time.perf_counter() - meta.get("wall_time_s", 0.0)
    schedule = learning_rate_schedule(config, steps_per_epoch)
    compiled = False
    with _stop_requests() as stop, log.progress(total=stop_step, initial=step) as bar:
        try:
            while step < stop_step and not stop["stop"]:
                epoch, start = divmod(step, steps_per_epoch)
                window = reporting.Window()
                for local in _train_batches(config, epoch, start):
                    batch = trainer.to_device(local)
                    if not compiled:
                        log.print(trainer.compile_report(batch))
                        compiled = True
                    state, metrics = trainer.train_step(state, batch)
                    step += 1
                    bar.update(1)
                    window.add(metrics, config.batch_size)
                    if step % config.log_every_steps == 0 or step == stop_step:
                        summary = window.flush()
                        log.train(step, epoch, summary, float(schedule(step - 1)))
                        bar.set_postfix(
                            loss=f"{summary['loss']:.3f}",
                            top1=f"{summary['top1']:.1f}",
                            img_s=f"{summary['images_per_s']:.0f}",
                        )
                    if step % steps_per_epoch == 0:
                        last_eval = evaluate_dataset(trainer, state, config)
                        improved = best is None or last_eval["top1"] > best
                        best = last_eval["top1"] if improved else best
                        log.eval(step, epoch, last_eval, best)
                        records.append(glif_nn.glif_layers(trainer.model(state)), epoch + 1)
                        bar.set_description(
                            f"epoch {epoch + 1}, test top-1 {last_eval['top1']:.2f}%"
                        )
                        meta = _meta(fingerprint, best, last_eval, wall_start)
                        if improved:
                            checkpoints.save_best(state, meta)
                        checkpoints.save_latest(state, meta)
                    elif step % config.checkpoint_every_steps == 0:
                        checkpoints.save_latest(
                            state, _meta(fingerprint, best, last_eval, wall_start)
                        )
                    if stop["stop"] or step >= stop_step:
                        break
                else:
                    if step % steps_per_epoch:
                        raise RuntimeError(
                            f"epoch {epoch} of {config.dataset} ran out of batches after step "
                            f"{step}, short of {steps_per_epoch} steps per epoch: its training "
                            f"split holds fewer than the {info.num_train} examples it should. "
                            "Prepare the dataset again."
                        )
            if stop["stop"]:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            checkpoints.save_latest(state, _meta(fingerprint, best, last_eval, wall_start))
            checkpoints.wait()
            log.print(
                f"interrupted at step {step}; checkpoint saved, run the same command to resume"
            )
            raise
    final_eval = last_eval
    if step % steps_per_epoch != 0:  # stopped inside an epoch by num_train_steps
        final_eval = evaluate_dataset(trainer, state, config)
        log.eval(
            step,
            step // steps_per_epoch,
            final_eval,
            best if best is not None else final_eval["top1"],
        )
    checkpoints.save_latest(state, _meta(fingerprint, best, last_eval, wall_start))
    checkpoints.wait()
    summary = {
        "config": config.to_dict(),
        "best_test_top1": best if best is not None else final_eval["top1"],
        "final_test_top1": final_eval["top1"],
        "final_test_top5": final_eval["top5"],
        "final_test_loss": final_eval["loss"],
        "epochs": step / steps_per_epoch,
        "steps": step,
        "wall_time_s": time.perf_counter() - wall_start,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(),
    }
    log.finish(summary, records)
    return summary


def _meta(fingerprint, best, last_eval, wall_start) -> dict:
    return {
        "config": fingerprint,
        "best_test_top1": best,
        "last_eval": last_eval,
        "wall_time_s": time.perf_counter() - wall_start,
    }


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    checkpoint: str = "latest",
    reference_checkpoint: str | None = None,
) -> dict[str, float]:
    """Evaluate the ``latest`` or ``best`` checkpoint of ``workdir`` (or a released reference
    checkpoint file) on the whole test split; writes ``eval.json`` in ``workdir``."""
    workdir = Path(workdir)
    info = input_pipeline.dataset_info(config.dataset)
    input_pipeline.check_prepared(config.dataset, config.data_dir)
    mesh = make_mesh(config.batch_size)
    steps_per_epoch = input_pipeline.steps_per_epoch(config.dataset, config.batch_size)
    trainer = Trainer(config, info.num_classes, steps_per_epoch, mesh)
    if reference_checkpoint is not None:
        from glif_jax import interop

        model = nnx.merge(
            trainer.graphs.eval, trainer.initial_state.params, trainer.initial_state.batch_stats
        )
        interop.load_reference_checkpoint(reference_checkpoint, model=model)
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        state = jax.device_put(
            dataclasses.replace(trainer.initial_state, params=params, batch_stats=batch_stats),
            trainer.replicated,
        )
        source = str(reference_checkpoint)
    else:
        restored = Checkpoints(workdir, config.max_to_keep).restore(
            trainer.abstract_state, config_fingerprint(config), which=checkpoint
        )
        if restored is None:
            raise FileNotFoundError(
                f"no {checkpoint} checkpoint in {workdir / 'checkpoints' / checkpoint}; train "
                "first, or pass --reference_checkpoint=FILE."
            )
        state, _ = restored
        source = f"{workdir} ({checkpoint}, step {int(jax.device_get(state.step))})"
    result = evaluate_dataset(trainer, state, config)
    result["source"] = source
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
