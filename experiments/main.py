"""Train, evaluate or analyse a GLIF network from a config.

    python -m experiments.main --config=experiments/configs/digits.py --workdir=runs/digits
    python -m experiments.main --config=experiments/configs/cifar.py:model=resnet19,dataset=cifar10,t=4 \
        --workdir=runs/r19 --config.batch_size=128
    python -m experiments.main --config=... --workdir=runs/r19 --mode=eval --checkpoint=best
    python -m experiments.main --config=... --workdir=runs/r19 --mode=analyze --checkpoint=best
    python -m experiments.main --config=... --workdir=runs/eval --mode=eval \
        --reference_checkpoint=resCifar19-CIFAR10-step4-CW.pth.tar
    python -m experiments.main --config=experiments/configs/cifar.py --workdir=runs/v5e \
        --mode=compile --topology=v5e:16x16 --per_device_batch=64 [--find_max_batch]

Multi-host: start one process per host. On TPU pods, Slurm and Open MPI, ``jax.distributed``
finds its peers by itself; elsewhere pass ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``).
A process whose peer dies exits with an error within ``--heartbeat_timeout_seconds``
(:mod:`experiments.distributed`); start them all again with the same command to resume.

Exit status: 0 when done; 2 with one line ``error: ...`` for a usage error (a bad flag, config key
or value, workdir or topology), found before anything compiles; 1 with one line for a run that
failed (a missing dataset, a checkpoint that does not match or cannot be read, a workdir another
run holds, a non-finite loss, a failed peer, a step that does not fit); 130 when interrupted
(after checkpointing). ``--verbose`` shows the traceback of these errors too; any other error is
a bug and always shows it.
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (file.py[:variant]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "analyze", "compile"],
    "Train (resuming if possible), evaluate, analyse the spike activity and energy, or compile "
    "the train and eval steps ahead of time and report their cost per device.",
)
flags.DEFINE_string(
    "topology",
    None,
    "--mode=compile: a TPU topology to compile for without the hardware, e.g. v5e:16x16, "
    "v4:4x4x4, v5p:4x4x4, v6e:16x16 (needs libtpu: pip install -e '.[tpu]').",
)
flags.DEFINE_integer("num_slices", 1, "--mode=compile: slices of --topology.")
flags.DEFINE_integer(
    "per_device_batch", None, "--mode=compile: images per device (default: batch_size / devices)."
)
flags.DEFINE_bool(
    "find_max_batch",
    False,
    "--mode=compile: also find the largest per-device batch that fits, with and without remat.",
)
flags.DEFINE_enum(
    "checkpoint",
    None,
    ["latest", "best"],
    "The checkpoint --mode=eval (latest) or analyze (best) reads.",
)
flags.DEFINE_string(
    "reference_checkpoint",
    None,
    "--mode=eval or analyze: a released reference checkpoint file to read instead.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host runs).")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    distributed.HEARTBEAT_TIMEOUT_SECONDS,
    "Multi-host runs: seconds a silent process may stay silent before every process is ended.",
)
flags.DEFINE_bool(
    "allow_schedule_change",
    False,
    "Resume a run with other values of the recipe keys (learning rate, epochs, schedule, "
    "optimizer and loss settings); the change is recorded in the workdir's changes.jsonl.",
)
flags.DEFINE_bool("verbose", False, "Show the traceback of an error, not only its one line.")
flags.mark_flags_as_required(["config", "workdir"])


class UsageError(ValueError):
    """A flag, config key or workdir that cannot run: exit status 2."""


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, each error said in one line (exit status 2) instead of the usage."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).split())
    except (AttributeError, KeyError) as error:  # a --config.KEY the config does not have
        given = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
        key = str(error).strip("\"'")
        message = (
            f"unknown config key {key!r} (given: {', '.join(given)}); the keys are documented in "
            "experiments/configs/base.py."
        )
    print(f"error: {message} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)


def _config():
    """The config, checked before anything is built."""
    from experiments import data
    from experiments.configs.base import ConfigError, check_config

    config = FLAGS.config
    check_config(config)
    try:
        data.dataset_info(config.dataset)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return config


def _check_workdir(workdir: str) -> None:
    """A directory (made if missing) that this user can write."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir={workdir} is a file; expected a directory (new or a run's).")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--workdir={workdir} cannot be made: {error.strerror}.") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir={workdir} is not writable by this user.")


def train_and_analyze(config, workdir: str, *, allow_schedule_change: bool = False) -> dict:
    """Train (:func:`experiments.train.train_and_evaluate`), then, with
    ``config.analyze_after_training`` and one process, analyse the final network's spike activity
    and energy (:func:`experiments.analyze.analyze`) and print its summary line; returns the
    training summary."""
    import jax

    from experiments import analyze, train

    summary = train.train_and_evaluate(config, workdir, allow_schedule_change=allow_schedule_change)
    if config.analyze_after_training and jax.process_count() == 1:
        report = analyze.analyze(config, workdir, checkpoint="latest")
        print(analyze.summary_line(report), flush=True)
    return summary


def _run(config, workdir: str) -> None:
    from experiments import analyze, aot, train

    if FLAGS.mode == "compile":
        report = aot.compile_and_report(
            config,
            workdir,
            topology=FLAGS.topology,
            num_slices=FLAGS.num_slices,
            per_device_batch=FLAGS.per_device_batch,
            max_batch=FLAGS.find_max_batch,
        )
        print(aot.summary_line(report))
        step = report["train_step"]
        if step["fits"] is False:
            hbm = f"{report['hbm_bytes_per_device'] / 2**30:.2f} GiB of HBM"
            if step["compiler_error"]:
                what = f"does not fit the {hbm} (the compiler: {step['compiler_error']})"
            else:
                what = f"needs {step['peak_bytes'] / 2**30:.2f} GiB per device, more than the {hbm}"
            print(
                f"error: the train step {what} of {report['device_kind']}: lower "
                "--per_device_batch or set --config.model_options.remat=True (see compile.json).",
                file=sys.stderr,
            )
            sys.exit(1)
        return
    if FLAGS.mode == "train":
        train_and_analyze(config, workdir, allow_schedule_change=FLAGS.allow_schedule_change)
    elif FLAGS.mode == "eval":
        result = train.evaluate(
            config,
            workdir,
            checkpoint=FLAGS.checkpoint or "latest",
            reference_checkpoint=FLAGS.reference_checkpoint,
        )
        print(
            f"{result['source']}: test loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%, "
            f"top-5 {result['top5']:.2f}% over {result['count']} examples"
        )
    else:
        report = analyze.analyze(
            config,
            workdir,
            checkpoint=FLAGS.checkpoint or "best",
            reference_checkpoint=FLAGS.reference_checkpoint,
        )
        print(f"{report['source']}: {analyze.summary_line(report)}")
        print(
            f"wrote {workdir}/analysis.json, analysis.md, analysis_rates.png, analysis_energy.png"
        )


def _check_flags(argv) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.mode != "compile" and (
        FLAGS.topology or FLAGS.find_max_batch or FLAGS.per_device_batch or FLAGS.num_slices != 1
    ):
        raise UsageError(
            "--topology, --num_slices, --per_device_batch and --find_max_batch go with "
            "--mode=compile."
        )
    if FLAGS.mode in ("train", "compile") and (FLAGS.reference_checkpoint or FLAGS.checkpoint):
        raise UsageError("--checkpoint and --reference_checkpoint go with --mode=eval or analyze.")
    if FLAGS.mode != "train" and FLAGS.allow_schedule_change:
        raise UsageError("--allow_schedule_change goes with --mode=train.")
    if FLAGS.reference_checkpoint and importlib.util.find_spec("torch") is None:
        raise UsageError(
            "--reference_checkpoint reads a PyTorch file, which needs torch: "
            "pip install 'glif_jax[torch]' (the CPU build is enough)."
        )
    if FLAGS.reference_checkpoint and not os.path.isfile(FLAGS.reference_checkpoint):
        raise UsageError(f"--reference_checkpoint={FLAGS.reference_checkpoint}: no such file.")


def _check_run_fits_the_devices(config, process_count: int) -> None:
    """The global batch against the training split and the devices, and the analysis on one
    process, before anything compiles. (``--mode=compile`` sets its own batch and devices:
    :mod:`experiments.aot` checks those.)"""
    from experiments import data, train

    if FLAGS.mode == "compile":
        return
    if FLAGS.mode == "analyze" and process_count > 1:
        raise UsageError("the spike analysis runs on one process: run --mode=analyze on one host.")
    try:
        data.steps_per_epoch(config.dataset, config.batch_size)
        train.make_mesh(config.batch_size)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _fail(error: BaseException, status: int):
    if FLAGS.verbose:
        raise error
    message = " ".join(str(error).split())  # one line, whatever the message holds
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def main(argv):
    logging.set_verbosity(logging.WARNING)  # checkpointing logs every save at INFO
    from experiments import aot, checkpointing, data, train, workdir_lock
    from experiments.configs.base import ConfigError
    from experiments.settings import Settings

    try:
        _check_flags(argv)
        config = _config()
        if os.path.isfile(FLAGS.workdir):
            _check_workdir(FLAGS.workdir)
    except (UsageError, ConfigError, aot.CompileError) as error:
        _fail(error, 2)
    try:
        several = distributed.initialize_distributed(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
        )
    except ValueError as error:
        _fail(error, 2)
    import jax

    try:
        train.check_model(Settings.from_config(config))
        _check_run_fits_the_devices(config, jax.process_count())
        _check_workdir(FLAGS.workdir)  # made only once everything else is known to be right
        _run(config, FLAGS.workdir)
    except (UsageError, ConfigError, aot.CompileError) as error:
        _fail(error, 2)
    except (
        data.DatasetNotPreparedError,
        checkpointing.CheckpointMismatchError,
        checkpointing.CheckpointCorruptError,
        workdir_lock.WorkdirLockedError,
        train.NonFiniteError,
        train.NoCheckpointError,
    ) as error:
        _fail(error, 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except jax.errors.JaxRuntimeError as error:
        if not several:
            raise
        first = str(error).strip().splitlines()[0][:300]
        print(
            f"error: a collective with another process of this run failed ({first}). If a "
            "process died, start every process again with the same command: the run resumes "
            "from its last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        # Without its peer the run cannot shut down cleanly (the shutdown barrier would wait for
        # the dead process), and the checkpoints on disk are whole: leave now.
        os._exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
