"""Training and evaluation of GLIF networks, data-parallel over every device of every host.

The shape of the Flax examples: :func:`create_train_state`, :func:`train_step`, :func:`eval_step`
and :func:`train_and_evaluate`. One ``jax.jit`` train step runs over a 1-D mesh of all devices:
the batch is sharded along it and the state replicated, so BatchNorm statistics are those of the
global batch (tdBN survives data parallelism, unlike the reference's SyncBN conversion,
docs/reference.md §5.5). The mesh is also set in context while the steps are traced, so that the
GLIF layers run their Pallas kernels per device (:mod:`glif_jax.kernels.pallas`).

A run is resumable at any point: the state (parameters, BN statistics, optimizer state, step) is
checkpointed every ``checkpoint_every_steps`` steps, at the end of every epoch and on SIGTERM or
Ctrl-C (:mod:`experiments.checkpointing`); the input pipeline's position is the step itself,
because every batch is a pure function of (seed, epoch, step). Started again with the same
command, a run continues where it stopped and ends with the same parameters as an uninterrupted
one. A loss that turns non-finite stops the run (:class:`NonFiniteError`) without writing a
checkpoint, so ``latest`` always holds finite parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import data, recipe, reporting, workdir_lock
from experiments.checkpointing import Checkpoints, config_fingerprint
from experiments.configs.base import ConfigError
from glif_jax import models, placement
from glif_jax import nn as glif_nn

__all__ = [
    "Graphs",
    "NoCheckpointError",
    "NonFiniteError",
    "TrainState",
    "Trainer",
    "build_model",
    "check_model",
    "create_train_state",
    "eval_step",
    "evaluate",
    "make_mesh",
    "train_and_evaluate",
    "train_step",
]


class NoCheckpointError(FileNotFoundError):
    """The workdir has no checkpoint to evaluate."""


class NonFiniteError(FloatingPointError):
    """The training loss (or the parameters) turned non-finite; the run stopped without writing a
    checkpoint of that state."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training step reads and writes; replicated over the mesh.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: the model's ``nnx.Param`` state.
      batch_stats: the model's ``nnx.BatchStat`` state (BN running statistics).
      opt_state: the optax state.
    """

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of the model: its graph in training and in evaluation mode."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


# ------------------------------------------------------------------------------------------------
# Model, optimizer, state


def build_model(config: ml_collections.ConfigDict, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    """The network a config names, with its model options and compute dtype."""
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


def check_model(config: ml_collections.ConfigDict) -> None:
    """Build the network ``config`` names without computing anything, so that a bad model, model
    option or time-step count is a :class:`~experiments.configs.base.ConfigError` before anything
    compiles."""
    num_classes = data.dataset_info(config.dataset).num_classes
    try:
        nnx.eval_shape(lambda: build_model(config, num_classes, nnx.Rngs(params=0)))
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None


def create_train_state(
    config: ml_collections.ConfigDict,
    num_classes: int,
    steps_per_epoch: int,
    *,
    abstract: bool = False,
) -> tuple[Graphs, TrainState, optax.GradientTransformation]:
    """Build the model and optimizer; returns the graphs, the initial state and the optimizer.

    With ``abstract=True`` nothing is computed: the state's leaves are ``jax.ShapeDtypeStruct``
    (for compiling ahead of time, and for restoring a checkpoint into).
    """
    # The first key of the seed's split: the initialisation of runs made by earlier versions,
    # which kept the second for a state RNG, so that a seed still gives the same network.
    init_key = jax.random.split(jax.random.key(config.seed))[0]

    def build():
        return build_model(config, num_classes, nnx.Rngs(params=init_key))

    model = nnx.eval_shape(build) if abstract else build()
    model.train()
    train_graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graph = nnx.graphdef(model)
    tx = recipe.create_optimizer(recipe.Recipe.from_config(config), params, steps_per_epoch)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32) if abstract else jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=jax.eval_shape(tx.init, params) if abstract else tx.init(params),
    )
    return Graphs(train=train_graph, eval=eval_graph), state, tx


# ------------------------------------------------------------------------------------------------
# Steps


def _topk_correct(logits, labels, k):
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graph: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss: recipe.Recipe,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a (global) batch.

    Args:
      state: the training state.
      batch: ``image`` ``(B, ...)`` and ``label`` ``(B,)``.
      graph: the model's graph in training mode.
      tx: the optimizer.
      loss: the recipe whose loss is minimised (:func:`experiments.recipe.compute_loss`).

    Returns:
      The new state, and the batch's ``loss``, ``top1`` and ``top5`` (fractions).
    """

    def loss_fn(params):
        model = nnx.merge(graph, params, state.batch_stats, copy=True)
        per_step_logits = model(batch["image"], per_step=True).astype(jnp.float32)
        value = recipe.compute_loss(per_step_logits, batch["label"], loss)
        return value, (per_step_logits.mean(0), nnx.state(model, nnx.BatchStat))

    (value, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": value,
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
    """Sums over the real (``mask``) examples of a padded evaluation batch: ``loss``, ``top1``,
    ``top5`` and ``count``."""
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


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


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
    """The compiled steps of one config on one mesh, and host-to-device batch transfer.

    The mesh may hold devices this process cannot run on (a TPU topology described on a CPU
    host): the steps then only compile (:meth:`lower`), and :attr:`initial_state` is not built.
    """

    def __init__(self, config, num_classes: int, steps_per_epoch: int, mesh):
        self.config = config
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.mesh = mesh
        self.platform = mesh.devices.flat[0].platform
        self.graphs, abstract, self.tx = create_train_state(
            config, num_classes, steps_per_epoch, abstract=True
        )
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.abstract_state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), abstract
        )
        step = functools.partial(
            train_step,
            graph=self.graphs.train,
            tx=self.tx,
            loss=recipe.Recipe.from_config(config),
        )
        self._train_step = jax.jit(
            step,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        self._eval_step = jax.jit(
            functools.partial(eval_step, graph=self.graphs.eval),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
        )

    @functools.cached_property
    def initial_state(self) -> TrainState:
        """The state before the first step, replicated over the mesh."""
        _, state, _ = create_train_state(self.config, self.num_classes, self.steps_per_epoch)
        return jax.device_put(state, self.replicated)

    @contextlib.contextmanager
    def _placed(self):
        # The steps are traced with the mesh and its platform in context: the time fold keeps each
        # device's rows, and the GLIF layers choose and run their kernels for those devices.
        with jax.set_mesh(self.mesh), placement.target_platform(self.platform):
            yield

    def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """:func:`train_step`, jitted over the mesh; ``state`` is donated."""
        with self._placed():
            return self._train_step(state, batch)

    def eval_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
        """:func:`eval_step`, jitted over the mesh."""
        with self._placed():
            return self._eval_step(state, batch)

    def lower(self, which: str, batch) -> jax.stages.Lowered:
        """The ``"train"`` or ``"eval"`` step lowered for the abstract state and ``batch`` (arrays
        or ``jax.ShapeDtypeStruct`` with the batch sharding)."""
        jitted = {"train": self._train_step, "eval": self._eval_step}[which]
        with self._placed():
            return jitted.trace(self.abstract_state, batch).lower()

    def model(self, state: TrainState) -> nnx.Module:
        """The network with ``state``'s parameters, in evaluation mode."""
        return nnx.merge(self.graphs.eval, state.params, state.batch_stats)

    def to_device(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assemble the global batch from every host's rows (each host passes its own)."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()
        }

    def all_finite(self, state: TrainState) -> bool:
        """Whether every parameter and BN statistic of ``state`` is finite."""
        return bool(_all_finite((state.params, state.batch_stats)))

    def compile_report(self, example_batch) -> str:
        """Compile the train step ahead of time; returns a line on its memory and compile time."""
        start = time.perf_counter()
        compiled = self.lower("train", example_batch).compile()
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


def evaluate_dataset(trainer: Trainer, state: TrainState, config) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the whole evaluation split, across every host."""
    totals = None
    for local in data.eval_batches(
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


# ------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class Progress:
    """What a checkpoint's ``meta`` holds besides the state: the best end-of-epoch test top-1 (as
    the paper reports), the last evaluation and the wall time so far."""

    best_test_top1: float | None = None
    last_eval: dict[str, float] | None = None
    wall_time_s: float = 0.0


class _Interruptions:
    """SIGTERM and Ctrl-C as a request to stop, honoured between two steps, so that the state the
    loop holds is always whole when it is checkpointed; a second Ctrl-C stops at once.

    With several processes, the request is honoured at the next log step (where the processes
    meet anyway) once any process has received it, so that they all checkpoint the same step;
    there a second Ctrl-C ends only the process that receives it.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                break
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def stop_now(self, step: int, every: int) -> bool:
        """Whether the loop stops after ``step``."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags))


class _Run:
    """The loop's state and its side effects: checkpoints, logs, records and the guard against a
    non-finite loss."""

    def __init__(self, config, workdir: Path, *, allow_schedule_change: bool = False):
        self.config = config
        self.workdir = workdir
        data.check_prepared(config.dataset, config.data_dir)  # before compiling anything
        self.info = data.dataset_info(config.dataset)
        self.steps_per_epoch = data.steps_per_epoch(config.dataset, config.batch_size)
        total = self.steps_per_epoch * config.num_epochs
        self.stop_step = min(config.num_train_steps, total) if config.num_train_steps > 0 else total
        is_chief = jax.process_index() == 0
        self.log = reporting.RunLog(workdir, enabled=is_chief)
        self.trainer = Trainer(
            config, self.info.num_classes, self.steps_per_epoch, make_mesh(config.batch_size)
        )
        self.checkpoints = Checkpoints(
            workdir,
            config.max_to_keep,
            config_fingerprint(config),
            report=self.log.print,
            allow_change=allow_schedule_change,
        )
        restored = self.checkpoints.restore(self.trainer.abstract_state, set_aside=True)
        self.state, meta = restored or (self.trainer.initial_state, {})
        self.progress = Progress(**meta)
        self.step = int(jax.device_get(self.state.step))
        if self.checkpoints.changes:
            self.log.schedule_change(self.step, self.checkpoints.changes)
        self.log.start(resume_step=self.step)
        self.records = reporting.GlifRecords(workdir / "glif_params.npz", enabled=is_chief)
        if self.step == 0:
            self.records.reset(glif_nn.glif_layers(self.trainer.model(self.state)))
        else:
            self.records.load(completed_epochs=self.step // self.steps_per_epoch)
            self.log.print(f"resuming {workdir} at step {self.step} (epoch {self.epoch})")
        self.log.print(
            f"{config.model} on {config.dataset}: {self.info.num_train} train / "
            f"{self.info.num_eval} test examples, T={config.time_steps}, global batch "
            f"{config.batch_size} on {jax.device_count()} {jax.devices()[0].platform} device(s) "
            f"in {jax.process_count()} process(es); {self.steps_per_epoch} steps per epoch"
        )
        self.window = reporting.Window()
        self.schedule = recipe.learning_rate_schedule(
            recipe.Recipe.from_config(config), self.steps_per_epoch
        )
        self.wall_start = time.perf_counter() - self.progress.wall_time_s
        self.compiled = False

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def batches(self):
        """The training batches from the current step to the end of its epoch, on device."""
        epoch, start = divmod(self.step, self.steps_per_epoch)
        for local in data.train_batches(
            self.config.dataset,
            data_dir=self.config.data_dir,
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            epoch=epoch,
            start_step=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            batch = self.trainer.to_device(local)
            if not self.compiled:
                self.log.print(self.trainer.compile_report(batch))
                self.compiled = True
            yield batch

    def after_step(self, state, metrics, bar) -> None:
        """Count the step; log, evaluate and checkpoint when it is time."""
        self.state = state
        self.step += 1
        bar.update(1)
        self.window.add(metrics, self.step, self.config.batch_size)
        if self.step % self.config.log_every_steps == 0 or self.step == self.stop_step:
            self.log_train(bar)
        if self.step % self.steps_per_epoch == 0:
            self.end_epoch(bar)
        elif self.step % self.config.checkpoint_every_steps == 0:
            self.save()

    def log_train(self, bar) -> None:
        summary = self.window.flush()
        rate = float(self.schedule(self.step - 1))
        self.log.train(self.step, self.epoch_of_last_step, summary, rate)
        self._check_finite(summary)
        self.checkpoints.seal_finished()
        bar.set_postfix(
            loss=f"{summary['loss']:.3f}",
            top1=f"{summary['top1']:.1f}",
            img_s=f"{summary['images_per_s']:.0f}",
        )

    @property
    def epoch_of_last_step(self) -> int:
        return (self.step - 1) // self.steps_per_epoch

    def end_epoch(self, bar) -> None:
        """Evaluate on the test split, record the GLIF parameters, checkpoint."""
        epoch = self.epoch_of_last_step
        result = evaluate_dataset(self.trainer, self.state, self.config)
        best = self.progress.best_test_top1
        improved = best is None or result["top1"] > best
        self.progress.best_test_top1 = result["top1"] if improved else best
        self.progress.last_eval = result
        self.log.eval(self.step, epoch, result, self.progress.best_test_top1)
        self.records.append(glif_nn.glif_layers(self.trainer.model(self.state)), epoch + 1)
        bar.set_description(f"epoch {epoch + 1}, test top-1 {result['top1']:.2f}%")
        if improved:
            self.save(best=True)
        self.save()

    def save(self, *, best: bool = False) -> None:
        """Checkpoint the state, unless it is not finite (then stop)."""
        first_non_finite, last_finite = self.window.check()
        if first_non_finite is not None:
            self._stop_non_finite(
                f"the training loss turned non-finite at step {first_non_finite}", last_finite
            )
        if not self.trainer.all_finite(self.state):
            self._stop_non_finite(
                f"the parameters are non-finite after step {self.step}", last_finite
            )
        self.progress.wall_time_s = time.perf_counter() - self.wall_start
        meta = dataclasses.asdict(self.progress)
        if best:
            self.checkpoints.save_best(self.state, meta)
        else:
            self.checkpoints.save_latest(self.state, meta)

    def _check_finite(self, summary: dict) -> None:
        step = summary["first_non_finite_step"]
        if step is not None:
            self._stop_non_finite(
                f"the training loss turned non-finite at step {step}", summary["last_finite"]
            )

    def _stop_non_finite(self, what: str, last_finite: dict | None) -> None:
        self.checkpoints.wait()
        saved = self.checkpoints.steps()
        checkpoint = (
            f"the last checkpoint, {self.workdir / 'checkpoints' / 'latest' / str(saved[-1])}, "
            "holds finite parameters"
            if saved
            else "no checkpoint was written"
        )
        previous = (
            f" The last finite loss was {last_finite['loss']:.4g}, at step {last_finite['step']}."
            if last_finite
            else ""
        )
        raise NonFiniteError(
            f"{what}.{previous} The run stopped without checkpointing that state; {checkpoint}. "
            "Try a lower learning rate (--config.learning_rate), or "
            "--config.compute_dtype=float32 if it ran in bfloat16."
        )

    def interrupted(self) -> None:
        """Checkpoint the state the loop holds, unless a second Ctrl-C came inside a step (its
        input was then handed to the step and is gone)."""
        if any(leaf.is_deleted() for leaf in jax.tree.leaves(self.state)):
            self.checkpoints.wait()
            saved = self.checkpoints.steps()
            self.log.print(
                f"stopped inside step {self.step + 1}; the last checkpoint is step "
                f"{saved[-1] if saved else 'none'}: run the same command to resume from it"
            )
            return
        self.save()
        self.checkpoints.wait()
        self.log.print(
            f"interrupted at step {self.step}; checkpoint saved, run the same command to resume"
        )

    def check_epoch_complete(self) -> None:
        if self.step % self.steps_per_epoch:
            raise RuntimeError(
                f"epoch {self.epoch} of {self.config.dataset} ran out of batches after step "
                f"{self.step}, short of {self.steps_per_epoch} steps per epoch: its training "
                f"split holds fewer than the {self.info.num_train} examples it should. "
                "Prepare the dataset again."
            )

    def finish(self) -> dict[str, Any]:
        """The final evaluation (when the run stopped inside an epoch), the last checkpoint, the
        summary and the plots."""
        final = self.progress.last_eval
        if self.step % self.steps_per_epoch:  # stopped inside an epoch by num_train_steps
            final = evaluate_dataset(self.trainer, self.state, self.config)
            best = self.progress.best_test_top1
            self.log.eval(self.step, self.epoch, final, final["top1"] if best is None else best)
        self.save()
        self.checkpoints.wait()
        best = self.progress.best_test_top1
        summary = {
            "config": self.config.to_dict(),
            "best_test_top1": final["top1"] if best is None else best,
            "final_test_top1": final["top1"],
            "final_test_top5": final["top5"],
            "final_test_loss": final["loss"],
            "epochs": self.step / self.steps_per_epoch,
            "steps": self.step,
            "wall_time_s": time.perf_counter() - self.wall_start,
            "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind,
            "processes": jax.process_count(),
        }
        self.log.finish(summary, self.records)
        return summary


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    allow_schedule_change: bool = False,
) -> dict[str, Any]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint; returns the summary.

    The run holds ``workdir``'s lock (:mod:`experiments.workdir_lock`) until it returns. With
    ``allow_schedule_change`` it may resume a checkpoint written with other values of the recipe's
    keys (:data:`experiments.checkpointing.SCHEDULE_KEYS`); the change is printed and appended to
    ``changes.jsonl``.

    Writes ``metrics.jsonl``, TensorBoard events, ``summary.json``, the per-epoch GLIF parameter
    records (``glif_params.npz``) and plots (``learning_curve.png``, ``glif_params.png``).

    Raises:
      WorkdirLockedError: another run holds ``workdir``.
      NonFiniteError: the loss or the parameters turned non-finite (no checkpoint of that state).
      KeyboardInterrupt: Ctrl-C or SIGTERM, after the state was checkpointed.
    """
    with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
        return _train_and_evaluate(config, Path(workdir), allow_schedule_change)


def _train_and_evaluate(config, workdir: Path, allow_schedule_change: bool) -> dict[str, Any]:
    run = _Run(config, workdir, allow_schedule_change=allow_schedule_change)
    with _Interruptions() as interruptions:
        with run.log.progress(total=run.stop_step, initial=run.step) as bar:
            try:
                stop = False
                while run.step < run.stop_step and not stop:
                    for batch in run.batches():
                        run.after_step(*run.trainer.train_step(run.state, batch), bar)
                        stop = interruptions.stop_now(run.step, run.config.log_every_steps)
                        if stop or run.step >= run.stop_step:
                            break
                    else:
                        run.check_epoch_complete()
                if stop:
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                run.interrupted()
                raise
        # Training is done and checkpointed: an interruption from here on waits for the summary.
        return run.finish()


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
    trainer, state, source = load_for_evaluation(
        config, workdir, checkpoint=checkpoint, reference_checkpoint=reference_checkpoint
    )
    result = evaluate_dataset(trainer, state, config)
    result["source"] = source
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_for_evaluation(
    config: ml_collections.ConfigDict,
    workdir: Path,
    *,
    checkpoint: str = "latest",
    reference_checkpoint: str | None = None,
) -> tuple[Trainer, TrainState, str]:
    """The trainer of ``config`` and the state to evaluate: ``workdir``'s ``checkpoint``
    (``latest`` or ``best``), or a released reference checkpoint file; and a description of it.

    Raises:
      NoCheckpointError: ``workdir`` has no such checkpoint.
      CheckpointMismatchError, CheckpointCorruptError: see :mod:`experiments.checkpointing`.
    """
    data.check_prepared(config.dataset, config.data_dir)
    info = data.dataset_info(config.dataset)
    steps_per_epoch = data.steps_per_epoch(config.dataset, config.batch_size)
    trainer = Trainer(config, info.num_classes, steps_per_epoch, make_mesh(config.batch_size))
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
        return trainer, state, str(reference_checkpoint)
    # Evaluation does not depend on the schedule a checkpoint was trained with.
    checkpoints = Checkpoints(
        workdir, config.max_to_keep, config_fingerprint(config), allow_change=True
    )
    restored = checkpoints.restore(trainer.abstract_state, which=checkpoint)
    if restored is None:
        raise NoCheckpointError(
            f"no {checkpoint} checkpoint in {workdir / 'checkpoints' / checkpoint}; train "
            "first, or pass --reference_checkpoint=FILE."
        )
    state, _ = restored
    source = f"{workdir} ({checkpoint}, step {int(jax.device_get(state.step))})"
    return trainer, state, source
