"""Joining a multi-process run: the address and the process count come together or not at all."""

import pytest

from experiments import distributed
from tests.support.runs import MULTI_PROCESS_VARIABLES


@pytest.fixture(autouse=True)
def _single_host(monkeypatch):
    for name in MULTI_PROCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"coordinator_address": "localhost:1"}, r"--num_processes \(JAX_NUM_PROCESSES\) as"),
        ({"num_processes": 2}, r"--coordinator_address \(JAX_COORDINATOR_ADDRESS\) as"),
        ({"process_id": 1}, "--coordinator_address .* and --num_processes"),
    ],
)
def test_a_multi_process_run_given_in_part_is_refused(given, missing):
    with pytest.raises(ValueError, match=f"a multi-process run needs {missing}"):
        distributed.initialize_distributed(**given)


def test_the_environment_counts_as_given(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    with pytest.raises(ValueError, match="needs --num_processes"):
        distributed.initialize_distributed()


def test_the_address_and_count_join_and_leave_a_missing_index_to_jax(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # the gloo setting, left alone
    assert distributed.initialize_distributed("localhost:1", 2) is True
    ((args, kwargs),) = calls
    assert args == ("localhost:1",) and kwargs["num_processes"] == 2
    assert kwargs["process_id"] is None


def test_one_process_needs_nothing():
    assert distributed.initialize_distributed() is False
    assert distributed.initialize_distributed(num_processes=1) is False
