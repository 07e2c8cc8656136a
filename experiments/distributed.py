"""Joining a multi-process run, and how long a process waits for a dead peer.

One process runs per host. On TPU pods, Slurm and Open MPI the processes find each other through
``jax.distributed``'s own detection; elsewhere the coordinator's address, the process count and
this process's index come from the arguments or from ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

**A dead peer.** Every process sends heartbeats to the coordination service that process 0 hosts.
When a process dies (killed, out of memory, its host lost), the service stops hearing from it and,
after ``heartbeat_timeout_seconds``, reports it to the others, whose runtime then ends them with a
message naming the missing task; if process 0 dies, the others lose the service and end the same
way. A process blocked in a collective with the dead one therefore exits within about that bound,
instead of waiting forever. Restarted with the same command, every process resumes from the last
checkpoint.
"""

from __future__ import annotations

import os

__all__ = ["HEARTBEAT_TIMEOUT_SECONDS", "initialize_distributed"]

HEARTBEAT_TIMEOUT_SECONDS = 100
"""How long the coordination service waits for a silent process before declaring it dead."""


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
    *,
    heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS,
) -> bool:
    """Join a multi-process run when the arguments, the environment or the launcher say so.

    Args:
      coordinator_address: ``host:port`` of process 0; else ``JAX_COORDINATOR_ADDRESS``.
      num_processes: the number of processes; else ``JAX_NUM_PROCESSES``.
      process_id: this process's index; else ``JAX_PROCESS_ID``.
      heartbeat_timeout_seconds: how long a silent peer may stay silent before every process
        of the run is ended (the bound on the wait for a dead peer).

    Returns:
      Whether this process joined a multi-process run.

    Raises:
      ValueError: an address without a process count above 1, or the other way round (outside
        a cluster manager), which would otherwise leave each process training alone.
    """
    import jax

    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    # The address and a count above 1 start a multi-process run (jax finds a missing index on
    # the platforms it knows); one without the other would leave each process training alone.
    missing = [
        name
        for name, absent in (
            ("--coordinator_address (JAX_COORDINATOR_ADDRESS)", not address),
            ("--num_processes (JAX_NUM_PROCESSES)", count < 2),
        )
        if absent
    ]
    given = bool(address) or count > 1 or process_id is not None
    if missing and given and count != 1 and not _launched_by_a_cluster_manager():
        raise ValueError(
            f"a multi-process run needs {' and '.join(missing)} as well as what was given; "
            "give both (and --process_id where jax cannot find it), or none for a single process."
        )
    if address and count > 1:
        # CPU hosts exchange collectives through gloo; GPU and TPU ignore this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            address,
            num_processes=count,
            process_id=process_id,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
        return True
    if _launched_by_a_cluster_manager():
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
        return True
    return False
