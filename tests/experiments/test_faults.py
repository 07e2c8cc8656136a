"""Faults a long run meets, each injected: a non-finite loss, damaged checkpoints, kills at any
moment, a dead peer. Each must stop the run clearly or let it recover, and lose no state."""

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing, reporting, train
from tests.support import faults, tiny_digits
from tests.support.runs import assert_same_params, restore_params

# Whole training runs and their processes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _strict_records(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# A non-finite loss


def test_a_non_finite_loss_stops_the_run_and_no_checkpoint_holds_it(tmp_path, monkeypatch):
    # From step 17 on, the parameters the step returns are NaN: as a learning rate far too high
    # would make them.
    step = train.Trainer.train_step

    def diverging(self, state, batch):
        state, metrics = step(self, state, batch)
        if int(state.step) >= 17:
            params = jax.tree.map(lambda a: a * jnp.nan, state.params)
            state = dataclasses.replace(state, params=params)
        return state, metrics

    monkeypatch.setattr(train.Trainer, "train_step", diverging)
    config = tiny_digits.get_config()
    with pytest.raises(train.NonFiniteError) as error:
        train.train_and_evaluate(config, tmp_path)
    message = str(error.value)
    assert "step 18" in message and "last finite loss" in message
    assert str(tmp_path / "checkpoints" / "14") in message
    assert "learning_rate" in message
    monkeypatch.undo()
    params, saved_step = restore_params(config, tmp_path)
    assert saved_step == 14
    assert all(np.isfinite(value).all() for value in params.values())
    records = _strict_records(tmp_path / "metrics.jsonl")
    assert records[-1]["step"] == 20 and records[-1]["loss"] is None  # NaN written as null


def test_the_command_exits_non_zero_with_one_line_on_a_non_finite_loss(tmp_path):
    command = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=tests/support/tiny_digits.py",
        f"--workdir={tmp_path}",
        "--config.learning_rate=1e9",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the ") and "non-finite" in last
    assert "Traceback" not in result.stderr
    _strict_records(tmp_path / "metrics.jsonl")


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints


def _truncate_data_files(step_dir: Path) -> None:
    for path in step_dir.glob("state/**/d/*"):
        path.write_bytes(path.read_bytes()[:10])


@pytest.fixture(scope="module")
def _stopped_at_30_once(tmp_path_factory):
    config = tiny_digits.get_config()
    config.num_train_steps = 30
    workdir = tmp_path_factory.mktemp("stopped_at_30")
    train.train_and_evaluate(config, workdir)
    checkpoints = workdir / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [28, 30]
    return workdir


@pytest.fixture
def stopped_at_30(_stopped_at_30_once, tmp_path):
    """A tiny run stopped at step 30 (inside the first epoch), with checkpoints 28 and 30: a copy
    of one run, each test's own to damage."""
    workdir = tmp_path / "run"
    shutil.copytree(_stopped_at_30_once, workdir)
    return workdir


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "unsealed"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    uninterrupted, stopped_at_30, sealed, capfd
):
    _, summary, want, _ = uninterrupted
    damaged = stopped_at_30 / "checkpoints" / "30"
    _truncate_data_files(damaged)
    if not sealed:  # as if killed before the integrity record was written: orbax must fail
        (damaged / checkpointing.INTEGRITY_FILE).unlink()
    capfd.readouterr()
    resumed = train.train_and_evaluate(tiny_digits.get_config(), stopped_at_30)
    out, err = capfd.readouterr()
    assert "checkpoint 30 is damaged" in out
    assert "resuming from the newest intact checkpoint, 28" in out
    # Set aside, not deleted; the run then wrote its own step 30 and went on.
    assert (stopped_at_30 / "checkpoints" / "damaged" / "30").is_dir()
    assert "moved the damaged checkpoint 30" in out
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert resumed["steps"] == summary["steps"]
    assert_same_params(restore_params(tiny_digits.get_config(), stopped_at_30)[0], want)


def test_evaluation_falls_back_too(stopped_at_30, capsys):
    _truncate_data_files(stopped_at_30 / "checkpoints" / "30")
    result = train.evaluate(tiny_digits.get_config(), stopped_at_30)
    assert "step 28" in result["source"]
    assert "checkpoint 30 is damaged" in capsys.readouterr().out


def test_with_no_intact_checkpoint_the_run_stops_and_overwrites_nothing(stopped_at_30):
    latest = stopped_at_30 / "checkpoints"
    for step_dir in latest.iterdir():
        _truncate_data_files(step_dir)
    metrics = (stopped_at_30 / "metrics.jsonl").read_text()
    files = {p: p.read_bytes() for p in latest.rglob("*") if p.is_file()}
    with pytest.raises(checkpointing.CheckpointCorruptError) as error:
        train.train_and_evaluate(tiny_digits.get_config(), stopped_at_30)
    message = str(error.value)
    assert "step 30:" in message and "step 28:" in message and "Nothing was overwritten" in message
    assert (stopped_at_30 / "metrics.jsonl").read_text() == metrics
    assert {p: p.read_bytes() for p in latest.rglob("*") if p.is_file()} == files


# ------------------------------------------------------------------------------------------------
# Kills at any moment


def test_a_kill_while_a_checkpoint_is_written_loses_no_state(uninterrupted, tmp_path):
    # One trial of tests/support/faults.py (`make faults` runs many, and SIGTERMs too): SIGKILL
    # while a checkpoint is being written, then the same command to the end.
    _, summary, want, _ = uninterrupted
    seed = int(os.environ.get("GLIF_FAULTS_SEED", "0"))
    duration = summary["wall_time_s"] + 10  # start-up and compilation around the steps
    kills = faults.trial(tmp_path, ["writing"], duration, random.Random(seed))
    assert kills, "the run finished before any kill"
    faults.check_logs(tmp_path, summary["steps"])
    assert_same_params(restore_params(tiny_digits.get_config(), tmp_path)[0], want)


def _signalling(monkeypatch, at_step: int, signals: list[int]):
    """Make the step that ends at ``at_step`` send ``signals`` to this process, as a scheduler's
    preemption notice (SIGTERM) or a user's Ctrl-C (SIGINT) would arrive while it runs."""
    step = train.Trainer.train_step

    def signalled(self, state, batch):
        result = step(self, state, batch)
        if int(result[0].step) == at_step:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(train.Trainer, "train_step", signalled)


def test_sigterm_checkpoints_the_step_in_hand_and_the_run_resumes_bit_identical(
    uninterrupted, tmp_path, monkeypatch
):
    # Step 51 is inside the second epoch and no checkpoint step: the resumed run must restore the
    # optimizer, the schedule and the input pipeline's position from the SIGTERM's checkpoint.
    _, summary, want, _ = uninterrupted
    _signalling(monkeypatch, 51, [signal.SIGTERM])
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(tiny_digits.get_config(), tmp_path)
    monkeypatch.undo()
    assert restore_params(tiny_digits.get_config(), tmp_path)[1] == 51
    resumed = train.train_and_evaluate(tiny_digits.get_config(), tmp_path)
    assert resumed["steps"] == summary["steps"]
    assert resumed["best_test_top1"] == summary["best_test_top1"]
    assert resumed["final_test_top1"] == summary["final_test_top1"]
    assert_same_params(restore_params(tiny_digits.get_config(), tmp_path)[0], want)


def test_a_sigterm_during_the_summary_is_honoured_once_it_is_written(
    uninterrupted, tmp_path, monkeypatch, capsys
):
    # A finished run, run again, goes straight to its summary; the signal arrives inside it.
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    (workdir / "summary.json").unlink()
    finish = reporting.RunLog.finish

    def finish_and_receive_sigterm(self, *args):
        os.kill(os.getpid(), signal.SIGTERM)
        finish(self, *args)

    monkeypatch.setattr(reporting.RunLog, "finish", finish_and_receive_sigterm)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(tiny_digits.get_config(), workdir)
    assert json.loads((workdir / "summary.json").read_text())["steps"] == uninterrupted[1]["steps"]
    assert "interrupted after training, with the summary written" in capsys.readouterr().out


def test_a_second_ctrl_c_inside_a_step_stops_at_once_from_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    # Both arrive while step 23 runs: the state it was given is donated and gone, so the run
    # stops without a checkpoint of its own and names the last one (step 21).
    _signalling(monkeypatch, 23, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(tiny_digits.get_config(), tmp_path)
    assert "stopped inside step 23; the last checkpoint is step 21" in capsys.readouterr().out
    assert restore_params(tiny_digits.get_config(), tmp_path)[1] == 21


# ------------------------------------------------------------------------------------------------
# A dead peer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _processes(workdir: Path, port: int, env: dict) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.main",
                "--config=tests/support/tiny_digits.py",
                f"--workdir={workdir}",
                "--config.num_train_steps=14",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={index}",
                "--heartbeat_timeout_seconds=10",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]


def test_a_dead_peer_ends_the_other_process_and_both_resume(tmp_path):
    """Two processes on localhost, one CPU device each: killing one ends the other with an error
    within the heartbeat bound; started again, both resume, and the run ends with the
    parameters of a single process with two devices."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    workdir = tmp_path / "two"
    first, second = _processes(workdir, _free_port(), env)
    latest = workdir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-3000:]
    second.kill()
    killed = time.monotonic()
    _, stderr = first.communicate(timeout=120)
    waited = time.monotonic() - killed
    second.communicate()
    assert first.returncode != 0
    assert waited < 60, f"the surviving process took {waited:.0f} s to stop"
    assert "another process" in stderr or "another task died" in stderr, stderr[-3000:]

    for process in _processes(workdir, _free_port(), env):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    single = tmp_path / "one"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=tests/support/tiny_digits.py",
            f"--workdir={single}",
            "--config.num_train_steps=14",
        ],
        cwd=ROOT,
        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = tiny_digits.get_config()
    config.num_train_steps = 14
    two, step = restore_params(config, workdir)
    assert step == 14
    assert_same_params(two, restore_params(config, single)[0], exact=False)
