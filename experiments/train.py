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
checkpoint, so the newest checkpoint always holds finite parameters.

Below :func:`train_and_evaluate` and :func:`evaluate`, which read the config into
:class:`~experiments.settings.Settings`, everything takes typed values.
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
from experiments.checkpointing import CheckpointCorruptError, CheckpointMismatchError, Checkpoints
from experiments.configs.base import ConfigError
from experiments.settings import SCHEDULE_KEYS, Input, Settings
from glif_jax import nn as glif_nn
from glif_jax import placement

__all__ = [
    "Graphs",
    "NoCheckpointError",
    "NonFiniteError",
    "TrainState",
    "Trainer",
    "check_model",
    "create_train_state",
    "eval_step",
    "evaluate",
    "evaluate_dataset",
    "load_for_evaluation",
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


def check_model(settings: Settings) -> None:
    """Build the network without computing anything, so that a bad model, model option or
    time-step count is a :class:`~experiments.configs.base.ConfigError` before anything
    compiles."""
    num_classes = data.dataset_info(settings.input.dataset).num_classes
    try:
        nnx.eval_shape(lambda: settings.network.build(num_classes, nnx.Rngs(params=0)))
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None


def create_train_state(
    settings: Settings,
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
    init_key = jax.random.split(jax.random.key(settings.seed))[0]

    def build():
        return settings.network.build(num_classes, nnx.Rngs(params=init_key))

    model = nnx.eval_shape(build) if abstract else build()
    model.train()
    train_graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graph = nnx.graphdef(model)
    tx = recipe.create_optimizer(settings.recipe, params, steps_per_epoch)
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
    """The compiled steps of one run's settings on one mesh, and host-to-device batch transfer.

    The mesh may hold devices this process cannot run on (a TPU topology described on a CPU
    host): the steps then only compile (:meth:`lower`), and :attr:`initial_state` is not built.
    """

    def __init__(self, settings: Settings, num_classes: int, steps_per_epoch: int, mesh):
        self.settings = settings
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.mesh = mesh
        self.platform = mesh.devices.flat[0].platform
        self.graphs, abstract, self.tx = create_train_state(
            settings, num_classes, steps_per_epoch, abstract=True
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
            loss=settings.recipe,
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
        _, state, _ = create_train_state(self.settings, self.num_classes, self.steps_per_epoch)
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


def evaluate_dataset(trainer: Trainer, state: TrainState, source: Input) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the whole evaluation split, across every host."""
    totals = None
    for local in data.eval_batches(
        source.dataset,
        data_dir=source.data_dir,
        global_batch_size=source.batch_size,
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

    def stop_after(self, step: int, every: int) -> bool:
        """Whether the loop stops after ``step``."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags))


def _train_batches(
    settings: Settings, trainer: Trainer, steps_per_epoch: int, first_step: int, num_steps: int
):
    """``(step, batch)`` for the steps after ``first_step`` up to ``num_steps``, epoch after
    epoch, on device. A batch is a pure function of the seed, its epoch and its step, so a run
    that resumes reads what it would have read."""
    source = settings.input
    step = first_step
    while step < num_steps:
        epoch, start = divmod(step, steps_per_epoch)
        for local in data.train_batches(
            source.dataset,
            data_dir=source.data_dir,
            global_batch_size=source.batch_size,
            seed=settings.seed,
            epoch=epoch,
            start_step=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            step += 1
            yield step, trainer.to_device(local)
            if step == num_steps:
                return
        if step % steps_per_epoch:
            raise RuntimeError(
                f"epoch {epoch} of {source.dataset} ran out of batches after step {step}, short "
                f"of {steps_per_epoch} steps per epoch: its training split holds fewer examples "
                "than it should. Prepare the dataset again."
            )


def stop_if_non_finite(window: reporting.Window, state: TrainState, checkpoints, step: int):
    """The run's guard: raise :class:`NonFiniteError` if a training loss so far, or the state
    after ``step``, is not finite. The last checkpoint written then holds finite parameters."""
    first_non_finite, last_finite = window.loss_record()
    if first_non_finite is not None:
        what = f"the training loss turned non-finite at step {first_non_finite}"
    elif not bool(_all_finite((state.params, state.batch_stats))):
        what = f"the parameters are non-finite after step {step}"
    else:
        return
    checkpoints.wait()
    saved = checkpoints.steps()
    checkpoint = (
        f"the last checkpoint, {checkpoints.path(saved[-1])}, holds finite parameters"
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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    allow_schedule_change: bool = False,
) -> dict[str, Any]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint; returns the summary.

    The run holds ``workdir``'s lock (:mod:`experiments.workdir_lock`) until it returns. With
    ``allow_schedule_change`` it may resume a checkpoint written with other values of the recipe's
    keys (:class:`experiments.recipe.Recipe`); the change is printed and appended to
    ``changes.jsonl``.

    Writes ``metrics.jsonl``, TensorBoard events, ``summary.json``, the per-epoch GLIF parameter
    records (``glif_params.npz``) and plots (``learning_curve.png``, ``glif_params.png``).

    Raises:
      WorkdirLockedError: another run holds ``workdir``.
      NonFiniteError: the loss or the parameters turned non-finite (no checkpoint of that state).
      KeyboardInterrupt: Ctrl-C or SIGTERM, after the state was checkpointed.
    """
    with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
        settings = Settings.from_config(config)
        return _train_and_evaluate(settings, Path(workdir), allow_schedule_change, config.to_dict())


def _train_and_evaluate(
    settings: Settings, workdir: Path, allow_schedule_change: bool, config: dict
) -> dict[str, Any]:
    network, source, loop = settings.network, settings.input, settings.loop
    data.check_prepared(source.dataset, source.data_dir)  # before compiling anything
    info = data.dataset_info(source.dataset)
    steps_per_epoch = data.steps_per_epoch(source.dataset, source.batch_size)
    num_steps = steps_per_epoch * settings.recipe.num_epochs
    if loop.num_train_steps > 0:
        num_steps = min(loop.num_train_steps, num_steps)
    log = reporting.RunLog(workdir, enabled=jax.process_index() == 0)
    trainer = Trainer(settings, info.num_classes, steps_per_epoch, make_mesh(source.batch_size))
    checkpoints = Checkpoints(
        workdir,
        loop.max_to_keep,
        settings.fingerprint(),
        SCHEDULE_KEYS,
        report=log.print,
        allow_change=allow_schedule_change,
    )
    state, progress = _restore_or_start(trainer, checkpoints)
    first_step = int(jax.device_get(state.step))  # the loop's count from here on
    if checkpoints.changes:
        log.schedule_change(first_step, checkpoints.changes)
    log.start(resume_step=first_step)
    records = reporting.GlifRecords(workdir / "glif_params.npz", enabled=log.enabled)
    if first_step == 0:
        records.reset(glif_nn.glif_layers(trainer.model(state)))
    else:
        records.load(completed_epochs=first_step // steps_per_epoch)
        log.print(
            f"resuming {workdir} at step {first_step} (epoch {first_step // steps_per_epoch})"
        )
    log.print(
        f"{network.model} on {source.dataset}: {info.num_train} train / {info.num_eval} test "
        f"examples, T={network.time_steps}, global batch {source.batch_size} on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) in {jax.process_count()} "
        f"process(es); {steps_per_epoch} steps per epoch"
    )
    schedule = recipe.learning_rate_schedule(settings.recipe, steps_per_epoch)
    window = reporting.Window()
    wall_start = time.perf_counter() - progress.wall_time_s
    evaluation = None

    with _Interruptions() as interruptions, log.progress(num_steps, first_step) as bar:
        step = first_step
        try:
            for step, batch in _train_batches(
                settings, trainer, steps_per_epoch, first_step, num_steps
            ):
                if step == first_step + 1:
                    log.print(trainer.compile_report(batch))
                state, metrics = trainer.train_step(state, batch)
                window.add(metrics, step, source.batch_size)
                bar.update(1)
                epoch, end_of_epoch = (step - 1) // steps_per_epoch, step % steps_per_epoch == 0
                stop = step == num_steps or interruptions.stop_after(step, loop.log_every_steps)
                log_now = step % loop.log_every_steps == 0 or stop
                save_now = end_of_epoch or step % loop.checkpoint_every_steps == 0 or stop

                if log_now:
                    summary = window.flush()
                    log.train(step, epoch, summary, float(schedule(step - 1)))
                    bar.set_postfix(
                        loss=f"{summary['loss']:.3f}",
                        top1=f"{summary['top1']:.1f}",
                        img_s=f"{summary['images_per_s']:.0f}",
                    )
                if log_now or save_now:
                    stop_if_non_finite(window, state, checkpoints, step)
                if end_of_epoch or step == num_steps:
                    evaluation = evaluate_dataset(trainer, state, source)
                    if end_of_epoch:  # the best is that of an epoch's end, as the paper reports
                        best = progress.best_test_top1
                        progress.best_test_top1 = max(evaluation["top1"], best or -1.0)
                        progress.last_eval = evaluation
                        records.append(glif_nn.glif_layers(trainer.model(state)), epoch + 1)
                        bar.set_description(
                            f"epoch {epoch + 1}, test top-1 {evaluation['top1']:.2f}%"
                        )
                    best = progress.best_test_top1
                    log.eval(step, epoch, evaluation, evaluation["top1"] if best is None else best)
                if save_now:
                    progress.wall_time_s = time.perf_counter() - wall_start
                    top1 = evaluation["top1"] if end_of_epoch else None
                    checkpoints.save(state, dataclasses.asdict(progress), test_top1=top1)
                if stop:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            if any(leaf.is_deleted() for leaf in jax.tree.leaves(state)):
                # It came inside a step, whose input state was donated and is gone.
                checkpoints.wait()
                log.print(
                    f"stopped inside step {step}; the last checkpoint is step "
                    f"{(checkpoints.steps() or ['none'])[-1]}: run the same command to resume"
                )
            else:
                stop_if_non_finite(window, state, checkpoints, step)
                checkpoints.save(state, dataclasses.asdict(progress))
                checkpoints.wait()
                saved = int(jax.device_get(state.step))
                log.print(f"interrupted at step {saved}; checkpoint saved, run the same command")
            raise
        checkpoints.wait()
        if step < num_steps:
            log.print(
                f"interrupted at step {step}; checkpoint saved, run the same command to resume"
            )
            raise KeyboardInterrupt

        # Training is done and checkpointed: an interruption from here on waits for the summary.
        if evaluation is None:  # the run had already finished: its last evaluation
            evaluation = progress.last_eval
            if evaluation is None or step % steps_per_epoch:
                evaluation = evaluate_dataset(trainer, state, source)
        best = progress.best_test_top1
        summary = {
            "config": config,
            "best_test_top1": evaluation["top1"] if best is None else best,
            "final_test_top1": evaluation["top1"],
            "final_test_top5": evaluation["top5"],
            "final_test_loss": evaluation["loss"],
            "epochs": step / steps_per_epoch,
            "steps": step,
            "wall_time_s": time.perf_counter() - wall_start,
            "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind,
            "processes": jax.process_count(),
        }
        log.finish(summary, records)
        if interruptions.requested:  # it came during the summary: honoured now that it is written
            log.print(
                "interrupted after training, with the summary written; the same command finishes "
                "the run (it does not train again)"
            )
            raise KeyboardInterrupt
        return summary


def _restore_or_start(trainer: Trainer, checkpoints: Checkpoints) -> tuple[TrainState, Progress]:
    """The newest intact checkpoint (damaged ones set aside), or the initial state."""
    restored = checkpoints.restore(trainer.abstract_state, set_aside=True)
    if restored is None:
        return trainer.initial_state, Progress()
    state, meta = restored
    return state, Progress(**meta)


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
        Settings.from_config(config),
        workdir,
        checkpoint=checkpoint,
        reference_checkpoint=reference_checkpoint,
    )
    result = evaluate_dataset(trainer, state, trainer.settings.input)
    result["source"] = source
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _load_reference(path: str, model: nnx.Module, settings: Settings) -> None:
    """Load a released reference checkpoint file into ``model``; each failure one error.

    Raises:
      NoCheckpointError: no such file.
      CheckpointCorruptError: the file is not a PyTorch checkpoint holding a state dict.
      CheckpointMismatchError: its names or shapes do not fit ``model`` (another network, T or
        normalisation).
      ImportError: torch is not installed.
    """
    from glif_jax import interop

    if not Path(path).is_file():
        raise NoCheckpointError(f"--reference_checkpoint={path}: no such file.")
    try:
        state_dict = interop.read_reference_checkpoint(path)
    except ImportError:
        raise
    except Exception as error:  # torch.load fails in many ways on a file that is not its own
        raise CheckpointCorruptError(
            f"--reference_checkpoint={path} cannot be read as a PyTorch checkpoint: {error}"
        ) from None
    try:
        interop.load_reference_state_dict(model, state_dict)
    except (ValueError, TypeError) as error:  # other names or shapes; no layout known
        said = str(error).rstrip(".")
        if "plain_bn" in said and "plain_bn" in settings.network.model_options:
            said += ", which the config sets with --config.model_options.plain_bn"
        raise CheckpointMismatchError(
            f"--reference_checkpoint={path} does not fit the config's network: {said}."
        ) from None


def load_for_evaluation(
    settings: Settings,
    workdir: Path,
    *,
    checkpoint: str = "latest",
    reference_checkpoint: str | None = None,
) -> tuple[Trainer, TrainState, str]:
    """The trainer of ``settings`` and the state to evaluate: ``workdir``'s ``checkpoint``
    (``latest`` or ``best``), or a released reference checkpoint file; and a description of it.

    Raises:
      NoCheckpointError: ``workdir`` has no such checkpoint, or ``reference_checkpoint`` no file.
      CheckpointMismatchError: the checkpoint does not fit ``settings``' network (for a reference
        file: another network, T or normalisation, as :mod:`glif_jax.interop` says).
      CheckpointCorruptError: none can be read (see :mod:`experiments.checkpointing`), or the
        reference file is not a PyTorch checkpoint.
      ImportError: a reference file needs torch, which is not installed.
    """
    data.check_prepared(settings.input.dataset, settings.input.data_dir)
    info = data.dataset_info(settings.input.dataset)
    steps_per_epoch = data.steps_per_epoch(settings.input.dataset, settings.input.batch_size)
    mesh = make_mesh(settings.input.batch_size)
    trainer = Trainer(settings, info.num_classes, steps_per_epoch, mesh)
    if reference_checkpoint is not None:
        model = nnx.merge(
            trainer.graphs.eval, trainer.initial_state.params, trainer.initial_state.batch_stats
        )
        _load_reference(str(reference_checkpoint), model, settings)
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        state = jax.device_put(
            dataclasses.replace(trainer.initial_state, params=params, batch_stats=batch_stats),
            trainer.replicated,
        )
        return trainer, state, str(reference_checkpoint)
    # Evaluation does not depend on the schedule a checkpoint was trained with.
    checkpoints = Checkpoints(
        workdir, settings.loop.max_to_keep, settings.fingerprint(), SCHEDULE_KEYS, allow_change=True
    )
    restored = checkpoints.restore(trainer.abstract_state, which=checkpoint)
    if restored is None:
        when = " (the best is that of an epoch's end)" if checkpoint == "best" else ""
        raise NoCheckpointError(
            f"no {checkpoint} checkpoint{when} in {checkpoints.directory}; train first, or pass "
            "--reference_checkpoint=FILE."
        )
    state, _ = restored
    described = f"{workdir} ({checkpoint}, step {int(jax.device_get(state.step))})"
    return trainer, state, described
