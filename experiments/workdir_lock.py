"""One run per workdir: a training run holds ``run.lock`` in its workdir while it runs.

The lock is an advisory ``flock`` on the file, which the kernel releases when the process ends
however it ends (a SIGKILL, a crash, a lost machine's reboot): a lock left by a killed run is
free, and the next run takes it over and says whose it was. The file holds the holder's host, pid,
start time and command, for the message of a run that finds it held. Of a multi-host run only
process 0 holds it. ``flock`` is exact on a local or POSIX file system; on a network file system
that does not pass locks between hosts, two runs on two hosts are not kept apart.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "WorkdirLockedError", "hold"]

LOCK_FILE = "run.lock"


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir."""


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}"
    )


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


@contextlib.contextmanager
def hold(workdir: str | Path, *, enabled: bool = True, report=print) -> Iterator[None]:
    """Hold ``workdir``'s lock for the block.

    Args:
      workdir: the run's directory (made if missing).
      enabled: ``False`` (processes other than 0) holds nothing.
      report: prints the one line said when a killed run's lock is taken over.

    Raises:
      WorkdirLockedError: another live run holds it, named by host, pid and start time.
    """
    if not enabled:
        yield
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLockedError(
                f"{workdir} is in use by another run ({_describe(_read(fd))}); wait for it to "
                "end or stop it, or use another --workdir."
            ) from None
        previous = _read(fd)
        if previous:
            # Held by nobody, yet written: that run ended without releasing it (killed).
            report(
                f"taking over the lock of a run that ended without releasing it "
                f"({_describe(previous)})"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
        os.fsync(fd)
        try:
            yield
        finally:
            # Emptied, not removed: a run that opened the file before it was removed could lock
            # the removed file while a later run locks a new one.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
