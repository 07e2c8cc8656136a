"""Checkpoints of a run: ``latest/`` and ``best/`` in the workdir, written by orbax.

``latest/`` is written every ``checkpoint_every_steps`` steps, at the end of every epoch and when
a run is interrupted, and keeps the newest ``max_to_keep`` (2 by default, so that a damaged one
has an intact one to fall back to); ``best/`` keeps the state
of the best end-of-epoch test accuracy. Each checkpoint holds the training state and a small JSON
``meta``: the config's state-defining keys (:func:`config_fingerprint`), the best and last test
results and the wall time so far.

What survives what:

- orbax writes each checkpoint into a temporary folder and renames it when complete, so a process
  killed while writing leaves the previous checkpoints intact; the temporary folder is ignored;
- a checkpoint that cannot be read (its files truncated by a full disk or a copy cut short) is
  reported in one line naming its step and the reason, and :meth:`Checkpoints.restore` falls back
  to the newest intact one (a run that resumes moves the damaged ones to
  ``checkpoints/damaged/``); with none intact it raises :class:`CheckpointCorruptError` and the
  run stops, rather than start from scratch over a workdir that had checkpoints;
- a checkpoint written by another config, or for another model, is a
  :class:`CheckpointMismatchError`: a different run, not damage, so there is no fallback.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from experiments import recipe

__all__ = [
    "SCHEDULE_KEYS",
    "STATE_DEFINING_KEYS",
    "STRUCTURE_KEYS",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "Checkpoints",
    "config_fingerprint",
]

STRUCTURE_KEYS = (
    "dataset",
    "model",
    "model_options",
    "time_steps",
    "compute_dtype",
    "batch_size",
    "seed",
)
"""Config keys that define what a checkpoint's state is (its arrays, and which example each step
reads): resuming with another value is an error."""

SCHEDULE_KEYS = tuple(field.name for field in dataclasses.fields(recipe.Recipe))
"""The recipe's keys (:class:`experiments.recipe.Recipe`: learning rate, epochs, schedule,
optimizer and loss settings): they change how the state moves on, not what it is, so a resume may
change them when asked to (``allow_change``); the change is recorded."""

STATE_DEFINING_KEYS = STRUCTURE_KEYS + SCHEDULE_KEYS
"""Every key a checkpoint records (:func:`config_fingerprint`)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint in the workdir was written by a different config, or for a different model."""


class CheckpointCorruptError(RuntimeError):
    """Checkpoints exist in the workdir but none of them can be read."""


def config_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's :data:`STATE_DEFINING_KEYS` as plain JSON values."""
    return {
        key: json.loads(json.dumps(config[key], default=lambda o: o.to_dict()))
        for key in STATE_DEFINING_KEYS
    }


def _reason(error: BaseException) -> str:
    """The gist of an error in one line, without the details orbax and tensorstore add."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" See full TensorStore details")[0] if lines else ""
    return f"{type(error).__name__}: {text}"[:200]


INTEGRITY_FILE = "integrity.json"
"""Written into each finished checkpoint: the size and CRC-32 of every file of it."""


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def seal(step_dir: Path) -> None:
    """Record the size and CRC-32 of every file of a finished checkpoint, in
    :data:`INTEGRITY_FILE`."""
    files = {
        str(path.relative_to(step_dir)): [path.stat().st_size, _crc32(path)]
        for path in sorted(step_dir.rglob("*"))
        if path.is_file() and not path.name.startswith(INTEGRITY_FILE)
    }
    tmp = step_dir / (INTEGRITY_FILE + ".tmp")
    tmp.write_text(json.dumps({"files": files}))
    tmp.replace(step_dir / INTEGRITY_FILE)


def damage(step_dir: Path) -> str | None:
    """What is wrong with a sealed checkpoint's files (the first difference found); ``None`` if
    they are as recorded, or if the checkpoint was never sealed."""
    try:
        recorded = json.loads((step_dir / INTEGRITY_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, (size, crc) in recorded.items():
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        found = path.stat().st_size
        if found != size:
            return f"{name} has {found} bytes, {size} were written"
        if _crc32(path) != crc:
            return f"{name} does not hold the bytes that were written (its CRC-32 differs)"
    return None


def _attempt(read: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(read(), None)``, or ``(None, reason)`` if it raised; stderr is held back meanwhile.

    A failing orbax restore leaves tensorstore's other reads to fail one by one in background
    threads, each printing a traceback: they are let finish into the capture and dropped. What
    a successful read prints is passed on.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        result, reason = None, None
        try:
            result = read()
        except CheckpointMismatchError:
            raise
        except Exception as error:  # any damage is reported, then skipped
            reason = _reason(error)
        finally:
            if reason is not None:
                # The failed reads' coroutines print when they are collected.
                gc.collect()
                time.sleep(0.5)
                gc.collect()
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if reason is None:
            captured.seek(0)
            if text := captured.read():
                os.write(2, text)
    return result, reason


class Checkpoints:
    """The ``latest`` and ``best`` checkpoints of a workdir.

    Args:
      workdir: the run's folder; checkpoints go to ``workdir/checkpoints/{latest,best}``.
      max_to_keep: how many ``latest`` checkpoints to keep (``best`` keeps one).
      fingerprint: this run's :func:`config_fingerprint`, stored with each checkpoint and checked
        on restore.
      report: where the one-line reports of damaged checkpoints go.
      allow_change: restore a checkpoint whose :data:`SCHEDULE_KEYS` differ from
        ``fingerprint``'s (its :data:`STRUCTURE_KEYS` must still match); the differences are then
        in :attr:`changes` after :meth:`restore`.
    """

    def __init__(
        self,
        workdir: Path,
        max_to_keep: int,
        fingerprint: dict[str, Any],
        *,
        report: Callable[[str], None] = print,
        allow_change: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}.")
        root = (Path(workdir) / "checkpoints").absolute()
        self.fingerprint = fingerprint
        self.report = report
        self.allow_change = allow_change
        self.changes: dict[str, list] = {}  # key -> [checkpoint's value, this run's]

        def manager(name: str, keep: int) -> ocp.CheckpointManager:
            # Each manager its own barrier keys: the two save the same step numbers, and with
            # shared keys one save's cross-process barrier could be met by the other's.
            multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, multiprocessing_options=multiprocessing
            )
            handlers = {
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            }
            return ocp.CheckpointManager(root / name, options=options, item_handlers=handlers)

        self.managers = {"latest": manager("latest", max_to_keep), "best": manager("best", 1)}

    def _save(self, which: str, state, meta: dict) -> None:
        # One save in flight at a time, so that every process meets the barriers of the two
        # managers' background threads in one order; the finished ones are sealed.
        self.wait()
        manager = self.managers[which]
        step = int(jax.device_get(state.step))
        if step in manager.all_steps():
            return
        meta = {"config": self.fingerprint, **meta}
        saving = manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        if not saving:
            newest = manager.latest_step()
            self.report(
                f"checkpoint {which}/{step} was not written: {which}/{newest} is newer; move it "
                "away if it does not belong to this run"
            )

    def save_latest(self, state, meta: dict) -> None:
        """Write ``state`` (a pytree with a ``step``) and ``meta`` to ``latest/``, in the
        background."""
        self._save("latest", state, meta)

    def save_best(self, state, meta: dict) -> None:
        """Write ``state`` and ``meta`` to ``best/``, in the background."""
        self._save("best", state, meta)

    def seal_finished(self) -> None:
        """Seal (:func:`seal`) every finished checkpoint that is not sealed yet; on process 0."""
        if jax.process_index() != 0:
            return
        for which, manager in self.managers.items():
            if manager.is_saving_in_progress():
                continue
            for step in manager.all_steps():
                step_dir = self._step_dir(which, step)
                if step_dir.is_dir() and not (step_dir / INTEGRITY_FILE).exists():
                    seal(step_dir)

    def wait(self) -> None:
        """Wait for the saves in flight, and seal them."""
        for manager in self.managers.values():
            manager.wait_until_finished()
        self.seal_finished()

    def steps(self, which: str = "latest") -> list[int]:
        """The steps of the finished checkpoints of ``which``, oldest first."""
        return sorted(self.managers[which].all_steps())

    def _step_dir(self, which: str, step: int) -> Path:
        return Path(self.managers[which].directory) / str(step)

    def restore(
        self, abstract_state, which: str = "latest", *, set_aside: bool = False
    ) -> tuple[Any, dict] | None:
        """The newest intact checkpoint of ``which`` (``latest`` or ``best``) as ``(state,
        meta)``, or ``None`` if there is none at all.

        A checkpoint whose files differ from what was written, or that orbax cannot read, is
        reported in one line and skipped. With ``set_aside`` (a run that will write again), the
        damaged checkpoints newer than the one restored are moved to ``checkpoints/damaged/``, so
        that the run writes its next checkpoints over neither them nor their slots.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint was written by a different
            config, or its arrays do not match this model.
          CheckpointCorruptError: checkpoints exist, but none is intact.
        """
        manager = self.managers[which]
        failures = []
        for step in reversed(self.steps(which)):
            step_dir = self._step_dir(which, step)
            problem = damage(step_dir)
            if problem is None:
                restored, problem = _attempt(
                    lambda step=step: self._read(manager, step, abstract_state)
                )
            if problem is not None:
                failures.append((step, problem))
                self.report(f"checkpoint {which}/{step} is damaged: {problem}")
                continue
            if failures:
                self.report(f"resuming from the newest intact checkpoint, {which}/{step}")
                if set_aside:
                    self._set_aside(which, [failed for failed, _ in failures])
            if jax.process_index() == 0 and not (step_dir / INTEGRITY_FILE).exists():
                seal(step_dir)  # it was read back whole
            return restored
        if failures:
            lines = "\n".join(f"  step {step}: {reason}" for step, reason in failures)
            raise CheckpointCorruptError(
                f"no checkpoint in {manager.directory} is intact:\n{lines}\n"
                "Nothing was overwritten. Restore the folder from a copy, or move it away to "
                "start this run again from scratch."
            )
        return None

    def _set_aside(self, which: str, steps: list[int]) -> None:
        """Move damaged checkpoints out of the manager's folder (kept, not deleted)."""
        manager = self.managers[which]
        damaged = Path(manager.directory).parent / "damaged"
        if jax.process_index() == 0:
            damaged.mkdir(exist_ok=True)
            for step in steps:
                target = damaged / f"{which}-{step}"
                while target.exists():
                    target = target.with_name(target.name + "+")
                self._step_dir(which, step).rename(target)
                self.report(f"moved the damaged checkpoint {which}/{step} to {target}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set aside damaged {which} checkpoints")
        manager.reload()

    def _read(self, manager, step: int, abstract_state) -> tuple[Any, dict]:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(meta["meta"])
        self._check_fingerprint(meta, manager.directory, step)
        self._check_arrays(manager, step, abstract_state)
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        meta.pop("config", None)
        return restored["state"], meta

    def _check_fingerprint(self, meta: dict, directory, step: int) -> None:
        saved = meta.get("config", {})
        differences = {
            key: [saved.get(key), value]
            for key, value in self.fingerprint.items()
            if saved.get(key) != value
        }
        described = "; ".join(
            f"{key}: checkpoint has {was!r}, config has {now!r}"
            for key, (was, now) in differences.items()
        )
        structural = set(differences) - set(SCHEDULE_KEYS)
        if structural:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {directory} was written by a different "
                f"config ({described}). Use a new --workdir, or the config it was written with."
            )
        if differences and not self.allow_change:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {directory} was written with another schedule "
                f"({described}). To continue it with the new values, pass "
                "--allow_schedule_change; else use the config it was written with."
            )
        self.changes = differences

    @staticmethod
    def _check_arrays(manager, step: int, abstract_state) -> None:
        """Raise :class:`CheckpointMismatchError` when the checkpoint holds other arrays than the
        model's: a different run or version, not damage."""
        saved = jax.tree.leaves(manager.item_metadata(step)["state"])

        def shapes(leaves):
            return Counter((tuple(a.shape), str(a.dtype)) for a in leaves)

        ours, theirs = shapes(jax.tree.leaves(abstract_state)), shapes(saved)
        if ours != theirs:
            missing = sorted((ours - theirs).elements())[:3]
            extra = sorted((theirs - ours).elements())[:3]
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {manager.directory} holds other arrays than "
                f"the model of this config ({sum(ours.values())} in the model, "
                f"{sum(theirs.values())} in the checkpoint; the model's {missing} against the "
                f"checkpoint's {extra}). Use a new --workdir, or the config and version it was "
                "written with."
            )
