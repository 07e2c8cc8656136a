"""Joining a multi-process run: the address, count and index come together or not at all."""

import pytest

from experiments import distributed

_ENVIRONMENT = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
)


@pytest.fixture(autouse=True)
def _single_host(monkeypatch):
    for name in _ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"coordinator_address": "localhost:1"}, "--num_processes .*, --process_id"),
        ({"num_processes": 2}, "--coordinator_address .*, --process_id"),
        ({"process_id": 1}, "--coordinator_address .*, --num_processes"),
        ({"coordinator_address": "localhost:1", "num_processes": 2}, "--process_id"),
    ],
)
def test_a_multi_process_run_given_in_part_is_refused(given, missing):
    with pytest.raises(ValueError, match=f"a multi-process run needs {missing}"):
        distributed.initialize_distributed(**given)


def test_the_environment_counts_as_given(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    with pytest.raises(ValueError, match="needs --num_processes"):
        distributed.initialize_distributed()


def test_one_process_needs_nothing():
    assert distributed.initialize_distributed() is False
    assert distributed.initialize_distributed(num_processes=1) is False
