"""Fault injection: a short training run killed at random moments, restarted each time with the
same command, must end with the parameters of a run never interrupted.

    python -m tests.support.faults --trials 10 [--seed 0]      # what `make faults` runs

Each trial starts the tiny digits run (``tests/support/tiny_digits.py``, 88 steps, a checkpoint
every 7 steps and each epoch) in a fresh workdir and kills it, several times, at one of:

- ``random``: a moment drawn uniformly over a run's duration (start-up and compilation included);
- ``writing``: while a checkpoint is being written (orbax's temporary folder is on disk);
- ``sigterm``: SIGTERM at a random moment: inside the training loop it checkpoints, then exits
  with status 130; before the loop starts or after the run has finished it ends the process as
  the signal does (nothing new to save then);

then runs the same command until it finishes, and compares the final parameters, bit for bit, with
the uninterrupted run's, and checks ``metrics.jsonl``: strict JSON, every logged step once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tests/support/tiny_digits.py"
KINDS = ("random", "writing", "sigterm")


@dataclasses.dataclass
class Kill:
    kind: str
    at_s: float  # seconds after the process started
    exit_code: int
    during_write: bool  # a checkpoint was being written when the signal went


def command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.main", f"--config={CONFIG}", f"--workdir={workdir}"]


def environment() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def run(workdir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The run to its end, as a user would start it."""
    return subprocess.run(
        command(workdir), cwd=ROOT, env=environment(), capture_output=True, timeout=timeout
    )


def _temporary_folders(workdir: Path) -> set[Path]:
    """Orbax's temporary folders in the workdir: checkpoints being written, or left behind by a
    process killed while writing one."""
    checkpoints = workdir / "checkpoints"
    if not checkpoints.is_dir():
        return set()
    return {entry for entry in checkpoints.iterdir() if "tmp" in entry.name}


def _writing(workdir: Path, left_behind: set[Path]) -> bool:
    """Whether the running process is writing a checkpoint: a temporary folder that was not
    there when it started."""
    return bool(_temporary_folders(workdir) - left_behind)


def killed_run(workdir: Path, kind: str, duration_s: float, rng: random.Random) -> Kill | None:
    """Start the run and kill it as ``kind`` says; ``None`` if it finished first."""
    left_behind = _temporary_folders(workdir)  # by an earlier kill: not this process's writes
    process = subprocess.Popen(
        command(workdir),
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    start = time.monotonic()
    deadline = start + (rng.uniform(0.0, duration_s) if kind != "writing" else duration_s)
    during_write = False
    while process.poll() is None and time.monotonic() < deadline:
        if kind == "writing" and _writing(workdir, left_behind):
            during_write = True
            break
        time.sleep(0.002 if kind == "writing" else 0.05)
    if process.poll() is not None:
        process.communicate()
        return None
    during_write = during_write or _writing(workdir, left_behind)
    at = time.monotonic() - start
    process.send_signal(signal.SIGTERM if kind == "sigterm" else signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    if kind == "sigterm":
        _check_sigterm_exit(workdir, process.returncode, stderr.decode(errors="replace"))
    return Kill(kind, at, process.returncode, during_write)


def _check_sigterm_exit(workdir: Path, status: int, stderr: str) -> None:
    """A SIGTERM inside the training loop, or while the summary is written, checkpoints or finishes
    the summary and exits with 130. Ended by the signal itself is right only before the loop set its
    handler (start-up: the progress bar, shown as the loop starts, is not on stderr yet) or after
    the run had finished (``summary.json`` written): there is nothing new to save then."""
    if status == 130:
        return
    outside_loop = "%|" not in stderr or (workdir / "summary.json").exists()
    if status == -signal.SIGTERM and outside_loop:
        return
    raise AssertionError(
        f"SIGTERM: exit status {status}, expected 130 (the loop had started): {stderr[-2000:]}"
    )


def _describe(kill: Kill) -> str:
    text = f"{kill.kind} at {kill.at_s:.1f} s"
    if kill.during_write:
        text += ", writing a checkpoint"
    if kill.kind == "sigterm":
        text += {130: ": checkpointed, exit 130", 0: ": exit 0"}.get(
            kill.exit_code, ": outside the loop, ended by the signal"
        )
    return text


def check_logs(workdir: Path, steps: int) -> None:
    """``metrics.jsonl`` is strict JSON, with every logged step once, in order."""

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    records = [
        json.loads(line, parse_constant=refuse)
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r["step"] for r in records if r["split"] == "train"]
    if train != sorted(set(train)) or train[-1] != steps:
        raise AssertionError(f"{workdir}/metrics.jsonl logs the train steps {train}")
    summary = json.loads((workdir / "summary.json").read_text())
    if summary["steps"] != steps:
        raise AssertionError(f"summary.json says {summary['steps']} steps, expected {steps}")


def trial(workdir: Path, kinds: list[str], duration_s: float, rng: random.Random) -> list[Kill]:
    """Kill the run once per entry of ``kinds``, then let it finish; returns the kills made."""
    kills = []
    for kind in kinds:
        kill = killed_run(workdir, kind, duration_s, rng)
        if kill is not None:
            kills.append(kill)
    finished = run(workdir)
    if finished.returncode != 0:
        raise AssertionError(
            f"the run did not finish after {kills}: {finished.stderr.decode()[-3000:]}"
        )
    return kills


def params(workdir: Path):
    """The final parameters of a workdir's run, by path."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # read on the CPU, as the runs train
    sys.path.insert(0, str(ROOT))
    from tests.support import tiny_digits
    from tests.support.runs import restore_params

    return restore_params(tiny_digits.get_config(), workdir)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faults", description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3, help="kills per trial")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.monotonic()
        reference = run(tmp / "reference")
        duration = time.monotonic() - start
        if reference.returncode != 0:
            print(reference.stderr.decode()[-3000:])
            return 1
        want = params(tmp / "reference")
        print(f"uninterrupted run: {duration:.1f} s")
        rows, failures = [], 0
        for index in range(args.trials):
            kinds = [KINDS[(index + k) % len(KINDS)] for k in range(args.kills)]
            workdir = tmp / f"trial{index}"
            try:
                kills = trial(workdir, kinds, duration, rng)
                check_logs(workdir, 88)
                got = params(workdir)
                same = want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)
                outcome = "same parameters" if same else "DIFFERENT parameters"
            except AssertionError as error:
                kills, outcome = [], f"FAILED: {error}"
            failures += outcome != "same parameters"
            detail = ", ".join(_describe(kill) for kill in kills)
            rows.append(f"| {index} | {len(kills)} | {detail} | {outcome} |")
            print(rows[-1], flush=True)
    writes = sum(row.count("writing a checkpoint") for row in rows)
    honoured = sum(row.count("checkpointed, exit 130") for row in rows)
    terms = sum(row.count("sigterm at") for row in rows)
    print(
        f"\n{args.trials} trials, {sum(int(r.split('|')[2]) for r in rows)} kills "
        f"({writes} while a checkpoint was being written; {terms} SIGTERMs, {honoured} of them "
        f"inside the training loop, which checkpointed), {failures} failed: "
        + ("no state lost." if not failures else "STATE LOST.")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
