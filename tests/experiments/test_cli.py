"""The command as an operator meets it: one-line errors with their exit status, one run per
workdir, and a resume that changes the schedule when asked to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import checkpointing, train, workdir_lock
from tests.support import tiny_digits
from tests.support.runs import MULTI_PROCESS_VARIABLES, restore_params

ROOT = Path(__file__).resolve().parents[2]
TINY = "--config=tests/support/tiny_digits.py"


def _command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "experiments.main", *flags]


_ENV = {k: v for k, v in os.environ.items() if k not in MULTI_PROCESS_VARIABLES}


def _run(*flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*flags), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_ENV
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("--config.time_steps=0", "config.time_steps=0: expected a positive integer"),
        ("--config.batch_size=0", "config.batch_size=0: expected a positive integer"),
        ("--config.num_epochs=-1", "config.num_epochs=-1: expected a positive integer"),
        ("--config.learning_rate=nan", "config.learning_rate=nan: expected a finite number"),
        ("--config.learning_rate=inf", "config.learning_rate=inf: expected a finite number"),
        ("--config.learning_rate=-0.1", "config.learning_rate=-0.1: expected a finite number"),
        ("--config.model=resnet99", "unknown model 'resnet99'; expected one of"),
        ("--config.model_options.implementation=fast", "'fast'"),
        ("--config.foo=1", "unknown config key 'foo' (given: --config.foo)"),
        ("--mode=nope", "flag --mode=nope"),
        ("--topology=v5e:2x2", "go with --mode=compile"),
        ("--config.batch_size=100000", "exceeds the 1437 training examples of 'digits'"),
        ("--coordinator_address=localhost:1", "needs --num_processes (JAX_NUM_PROCESSES)"),
        ("--num_processes=2", "needs --coordinator_address"),
    ],
)
def test_a_usage_error_prints_one_line_and_exits_2_before_compiling(tmp_path, flag, said):
    result = _run(TINY, f"--workdir={tmp_path / 'run'}", flag)
    assert result.returncode == 2, result.stderr[-3000:]
    assert said in _error_line(result)
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


@pytest.mark.slow
def test_a_reference_checkpoint_without_torch_or_file_is_one_line(tmp_path):
    # torch hidden from this process only: the check looks for it, and imports nothing.
    hide_torch = (
        "import importlib.util, runpy, sys\n"
        "find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else find(name, *a)\n"
        "sys.argv = ['experiments.main', *sys.argv[1:]]\n"
        "runpy.run_module('experiments.main', run_name='__main__')\n"
    )
    flags = (TINY, f"--workdir={tmp_path}", "--mode=eval", "--reference_checkpoint=none.pth")
    result = subprocess.run(
        [sys.executable, "-c", hide_torch, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_ENV,
    )
    assert result.returncode == 2
    assert "pip install 'glif_jax[torch]'" in _error_line(result)
    pytest.importorskip("torch")
    result = _run(*flags)
    assert result.returncode == 2
    assert "--reference_checkpoint=none.pth: no such file" in _error_line(result)


@pytest.mark.slow
def test_a_workdir_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = _run(TINY, f"--workdir={tmp_path / 'file'}")
    assert result.returncode == 2
    assert "is a file; expected a directory" in _error_line(result)


@pytest.mark.slow
def test_a_run_failure_prints_one_line_and_exits_1_and_verbose_shows_the_traceback(tmp_path):
    args = (TINY, f"--workdir={tmp_path}", "--mode=eval")
    result = _run(*args)
    assert result.returncode == 1
    assert "no latest checkpoint" in _error_line(result)
    verbose = _run(*args, "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_check_config_names_the_key_and_what_was_expected():
    from experiments.configs.base import ConfigError, check_config

    config = tiny_digits.get_config()
    config.momentum = 1.0
    with pytest.raises(ConfigError, match=r"config.momentum=1.0: expected a finite number in"):
        check_config(config)


# ------------------------------------------------------------------------------------------------
# One run per workdir


def test_a_held_workdir_refuses_a_second_holder_naming_the_first(tmp_path):
    with workdir_lock.hold(tmp_path, report=lambda line: None):
        with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"pid {os.getpid()} on "):
            with workdir_lock.hold(tmp_path):
                pass
    with workdir_lock.hold(tmp_path):  # released: free again, with nothing to take over
        pass


def _start(workdir: Path) -> subprocess.Popen:
    """A tiny training run into ``workdir``, in the background."""
    return subprocess.Popen(
        _command(TINY, f"--workdir={workdir}"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_holder(workdir: Path, process: subprocess.Popen, timeout: float = 120) -> dict:
    lock = workdir / workdir_lock.LOCK_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        if lock.exists() and lock.read_text().strip():
            return json.loads(lock.read_text())
        time.sleep(0.2)
    raise AssertionError("the run never took its workdir's lock")


@pytest.mark.slow
def test_two_concurrent_runs_one_refuses_and_the_other_logs_every_step_once(tmp_path):
    first = _start(tmp_path)
    holder = _wait_for_holder(tmp_path, first)
    second = _run(TINY, f"--workdir={tmp_path}")
    assert second.returncode == 1
    line = _error_line(second)
    assert f"in use by another run (pid {holder['pid']} on {holder['host']}, started " in line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["split"], r["step"]) for r in records]
    assert len(logged) == len(set(logged))
    _, step = restore_params(tiny_digits.get_config(), tmp_path)
    assert step == 2 * 44  # two epochs of the 1,437 training digits at batch 32
    assert (tmp_path / workdir_lock.LOCK_FILE).read_text() == ""  # released at the end


@pytest.mark.slow
def test_a_killed_runs_lock_is_taken_over(tmp_path):
    killed = _start(tmp_path)
    holder = _wait_for_holder(tmp_path, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    result = _run(TINY, f"--workdir={tmp_path}", "--config.analyze_after_training=True")
    assert result.returncode == 0, result.stderr[-3000:]
    taken = "taking over the lock of a run that ended without releasing it"
    assert f"{taken} (pid {holder['pid']} on {holder['host']}" in result.stdout + result.stderr
    # The command ends with the spike analysis of the network it trained.
    assert "spike activity over 360 test images" in result.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------
# Resuming with a new schedule


@pytest.mark.slow
def test_a_resume_may_change_the_schedule_when_asked_and_records_it(tmp_path):
    config = tiny_digits.get_config()
    config.num_epochs = 1
    train.train_and_evaluate(config, tmp_path)
    longer = tiny_digits.get_config()
    longer.num_epochs = 2
    longer.learning_rate = 0.05
    with pytest.raises(checkpointing.CheckpointMismatchError, match="--allow_schedule_change"):
        train.train_and_evaluate(longer, tmp_path)
    summary = train.train_and_evaluate(longer, tmp_path, allow_schedule_change=True)
    assert summary["steps"] == 2 * 44
    (record,) = [json.loads(line) for line in (tmp_path / "changes.jsonl").read_text().splitlines()]
    assert record["step"] == 44
    assert record["changed"] == {"learning_rate": [0.1, 0.05], "num_epochs": [1, 2]}
    # The checkpoints now carry the new values: the same config resumes without the flag.
    train.train_and_evaluate(longer, tmp_path)


@pytest.mark.slow
def test_a_resume_that_changes_the_state_is_refused_even_when_asked(tmp_path):
    config = tiny_digits.get_config()
    config.num_train_steps = 5
    train.train_and_evaluate(config, tmp_path)
    other = tiny_digits.get_config()
    other.num_train_steps = 5
    other.time_steps = 2
    with pytest.raises(checkpointing.CheckpointMismatchError, match="time_steps: checkpoint has 4"):
        train.train_and_evaluate(other, tmp_path, allow_schedule_change=True)
