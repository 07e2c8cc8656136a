"""Train or evaluate a GLIF network from a config.

    python -m experiments.main --config=experiments/configs/digits.py --workdir=runs/digits
    python -m experiments.main --config=experiments/configs/cifar.py:model=resnet19,dataset=cifar10,t=4 \
        --workdir=runs/r19 --config.batch_size=128
    python -m experiments.main --config=... --workdir=runs/r19 --mode=eval --checkpoint=best
    python -m experiments.main --config=... --workdir=runs/eval --mode=eval \
        --reference_checkpoint=resCifar19-CIFAR10-step4-CW.pth.tar

Multi-host: start one process per host. On TPU pods, Slurm and Open MPI, ``jax.distributed``
finds its peers by itself; elsewhere pass ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (file.py[:variant]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming if possible) or evaluate.")
flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Checkpoint that --mode=eval reads.")
flags.DEFINE_string(
    "reference_checkpoint", None, "--mode=eval: a released reference checkpoint file to evaluate."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def _launched_by_a_cluster_manager() -> bool:
    """Slurm, Open MPI or a multi-host TPU slice started several processes of this program."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run when the arguments, the environment or the launcher say so.

    Arguments left unset are read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; without them, processes started by Slurm, Open MPI or a multi-host TPU
    slice find each other through ``jax.distributed``'s own detection.
    """
    import jax

    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if address and count > 1:
        # CPU hosts exchange collectives through gloo; GPU and TPU ignore this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(address, num_processes=count, process_id=process_id)
    elif _launched_by_a_cluster_manager():
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # checkpointing logs every save at INFO
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from experiments import checkpointing, data, train

    config = FLAGS.config
    try:
        if FLAGS.mode == "train":
            if FLAGS.reference_checkpoint:
                raise app.UsageError("--reference_checkpoint is for --mode=eval.")
            train.train_and_evaluate(config, FLAGS.workdir)
        else:
            result = train.evaluate(
                config,
                FLAGS.workdir,
                checkpoint=FLAGS.checkpoint,
                reference_checkpoint=FLAGS.reference_checkpoint,
            )
            print(
                f"{result['source']}: test loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%, "
                f"top-5 {result['top5']:.2f}% over {result['count']} examples"
            )
    except (
        data.DatasetNotPreparedError,
        checkpointing.CheckpointMismatchError,
        checkpointing.CheckpointCorruptError,
        train.NonFiniteError,
    ) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)
