"""Checkpoints of a run: one orbax ``CheckpointManager`` over ``workdir/checkpoints/<step>``.

What orbax gives: atomic commits (each checkpoint is written into a temporary folder and renamed
when complete, so a process killed while writing leaves the previous ones intact), asynchronous
saves, and a preservation policy: the newest ``max_to_keep`` checkpoints (2 by default, so that a
damaged one has an intact one to fall back to) and the one of the best end-of-epoch test top-1
(each end-of-epoch checkpoint carries it as orbax's ``metrics``).

What this module adds, because orbax does not do it:

- the config's fingerprint (:meth:`experiments.settings.Settings.fingerprint`) in each
  checkpoint's ``meta``, checked on restore: a checkpoint of another config, or for another
  model, is a :class:`CheckpointMismatchError` (a different run, not damage, so no fallback);
- an integrity record (:data:`INTEGRITY_FILE`: each file's size and CRC-32). Tensorstore checks
  the CRC-32C of the OCDBT b-tree nodes and a truncated file fails to read, but the arrays'
  bytes carry no checksum: one byte changed in a data file restores silently as another value
  (orbax writes zarr3's ``crc32c`` codec only on shard indices, with no option to add it to the
  data). A checkpoint killed before its record was written is checked by reading it back whole;
- the fallback: a checkpoint that is damaged is reported in one line naming its step and the
  reason, and :meth:`Checkpoints.restore` takes the newest intact one (a run that resumes moves
  the damaged ones to ``checkpoints/damaged/``); with none intact it raises
  :class:`CheckpointCorruptError`, rather than start from scratch over a workdir that had
  checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = [
    "INTEGRITY_FILE",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "Checkpoints",
]

INTEGRITY_FILE = "integrity.json"
"""Written into each finished checkpoint: the size and CRC-32 of every file of it."""

BEST_METRIC = "test_top1"
"""The ``metrics`` key by which orbax keeps the best checkpoint (the higher, the better)."""


def _rank(metrics: dict) -> tuple[float, int]:
    """A checkpoint's rank by its metrics: the higher top-1, then the earlier step (the first
    epoch to reach a top-1 stays the best, as a ``>`` comparison keeps it). A checkpoint inside
    an epoch has no top-1: it ranks below every end-of-epoch one, the newest first, so that
    before the first epoch's end the "best" orbax keeps is the newest, which it keeps anyway."""
    if BEST_METRIC not in metrics:
        return -math.inf, metrics["step"]
    return metrics[BEST_METRIC], -metrics["step"]


class CheckpointMismatchError(ValueError):
    """A checkpoint in the workdir was written by a different config, or for a different model."""


class CheckpointCorruptError(RuntimeError):
    """Checkpoints exist in the workdir but none of them can be read (or a reference checkpoint
    file cannot be read)."""


# ------------------------------------------------------------------------------------------------
# The integrity record


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def seal(step_dir: Path) -> None:
    """Record the size and CRC-32 of every file of a finished checkpoint in
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


def _ignore_late_reads(previous):
    """An unraisable-exception hook that drops what a failed restore leaves behind: tensorstore's
    other reads of that checkpoint finish later and post their results to orbax's event loop,
    already closed (``asyncio``'s ``_check_closed`` raises in a callback nobody awaits). Anything
    else goes to ``previous``."""

    def hook(unraisable):
        error, frames = unraisable.exc_value, unraisable.exc_traceback
        while frames is not None and frames.tb_next is not None:
            frames = frames.tb_next
        late = frames is not None and frames.tb_frame.f_code.co_name == "_check_closed"
        if not (isinstance(error, RuntimeError) and late):
            previous(unraisable)

    hook.ignores_late_reads = True
    return hook


# ------------------------------------------------------------------------------------------------
# The manager


class Checkpoints:
    """The checkpoints of a workdir, in ``workdir/checkpoints``.

    Args:
      workdir: the run's folder.
      max_to_keep: how many of the newest checkpoints to keep (the best is kept besides).
      fingerprint: this run's :meth:`experiments.settings.Settings.fingerprint`, stored with
        each checkpoint and checked on restore.
      schedule_keys: the fingerprint's keys that a resume may change when ``allow_change``.
      report: where the one-line reports of damaged checkpoints go.
      allow_change: restore a checkpoint whose ``schedule_keys`` differ from ``fingerprint``'s
        (its other keys must still match); the differences are then in :attr:`changes` after
        :meth:`restore`.

    Raises:
      CheckpointMismatchError: the workdir holds checkpoints in the layout of the earlier
        versions (``checkpoints/latest``).
    """

    def __init__(
        self,
        workdir: Path,
        max_to_keep: int,
        fingerprint: dict[str, Any],
        schedule_keys: tuple[str, ...] = (),
        *,
        report: Callable[[str], None] = print,
        allow_change: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}.")
        self.directory = (Path(workdir) / "checkpoints").absolute()
        if (self.directory / "latest").is_dir():
            d = self.directory
            raise CheckpointMismatchError(
                f"{d} holds checkpoints in an earlier layout (latest/, best/). To resume them: "
                f"mv {d}/latest/* {d}/ && rm -r {d}/latest {d}/best ; or use a new --workdir."
            )
        self.fingerprint = fingerprint
        self.schedule_keys = tuple(schedule_keys)
        self.report = report
        self.allow_change = allow_change
        self.changes: dict[str, list] = {}  # key -> [checkpoint's value, this run's]
        best = ocp.checkpoint_managers.BestN(get_metric_fn=_rank, n=1)
        options = ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                [ocp.checkpoint_managers.LatestN(n=max_to_keep), best]
            ),
            # Orbax writes a checkpoint's metrics only when it tracks a best; every checkpoint
            # passes some (its step), so that none is saved without.
            best_fn=_rank,
            best_mode="max",
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self._unsealed: int | None = None

    def save(self, state, meta: dict, *, test_top1: float | None = None) -> None:
        """Write ``state`` (a pytree with a ``step``) and ``meta`` in the background; an
        end-of-epoch checkpoint passes its ``test_top1``, by which the best is kept."""
        self.wait()  # one save in flight: the previous one is finished and sealed first
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        metrics = {"step": step} if test_top1 is None else {BEST_METRIC: test_top1, "step": step}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"config": self.fingerprint, **meta}),
        )
        if self.manager.save(step, args=args, metrics=metrics):
            self._unsealed = step
        else:
            self.report(
                f"checkpoint {step} was not written: {self.manager.latest_step()} is newer; move "
                "it away if it does not belong to this run"
            )

    def wait(self) -> None:
        """Wait for the save in flight, and seal it (on process 0)."""
        self.manager.wait_until_finished()
        step, self._unsealed = self._unsealed, None
        if step is not None and jax.process_index() == 0 and self.path(step).is_dir():
            seal(self.path(step))

    def steps(self) -> list[int]:
        """The steps of the finished checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> Path:
        """The folder of the checkpoint of ``step``."""
        return self.directory / str(step)

    def _candidates(self, which: str) -> list[int]:
        """The steps ``restore`` tries, in order: the newest first, or the best first."""
        if which == "latest":
            return self.steps()[::-1]
        if which != "best":
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
        metrics = {step: self.manager.metrics(step) or {} for step in self.steps()}
        ranked = sorted((_rank(m), s) for s, m in metrics.items() if BEST_METRIC in m)
        return [step for _, step in reversed(ranked)]

    def restore(
        self, abstract_state, which: str = "latest", *, set_aside: bool = False
    ) -> tuple[Any, dict] | None:
        """The newest (``latest``) or best (``best``) intact checkpoint as ``(state, meta)``, or
        ``None`` if there is none at all.

        A checkpoint whose files differ from what was written, or that orbax cannot read, is
        reported in one line and skipped. With ``set_aside`` (a run that will write again), the
        damaged checkpoints skipped are moved to ``checkpoints/damaged/``, so that the run
        writes its next checkpoints over neither them nor their slots.

        Raises:
          CheckpointMismatchError: the checkpoint was written by a different config, or its
            arrays do not match this model.
          CheckpointCorruptError: checkpoints exist, but none is intact.
        """
        failures = []
        for step in self._candidates(which):
            problem = damage(self.path(step))
            if problem is None:
                try:
                    restored = self._read(step, abstract_state)
                except CheckpointMismatchError:
                    raise
                except Exception as error:  # whatever the read met, the checkpoint is damaged
                    problem = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                    problem = problem[:200]
                    if not getattr(sys.unraisablehook, "ignores_late_reads", False):
                        sys.unraisablehook = _ignore_late_reads(sys.unraisablehook)
            if problem is not None:
                failures.append((step, problem))
                self.report(f"checkpoint {step} is damaged: {problem}")
                continue
            if failures:
                self.report(f"resuming from the newest intact checkpoint, {step}")
                if set_aside:
                    self._set_aside([failed for failed, _ in failures])
            step_dir = self.path(step)
            if jax.process_index() == 0 and not (step_dir / INTEGRITY_FILE).exists():
                seal(step_dir)  # it was read back whole
            return restored
        if failures:
            lines = "\n".join(f"  step {step}: {reason}" for step, reason in failures)
            raise CheckpointCorruptError(
                f"no checkpoint in {self.directory} is intact:\n{lines}\n"
                "Nothing was overwritten. Restore the folder from a copy, or move it away to "
                "start this run again from scratch."
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints out of the manager's folder (kept, not deleted)."""
        damaged = self.directory / "damaged"
        if jax.process_index() == 0:
            damaged.mkdir(exist_ok=True)
            for step in steps:
                target = damaged / str(step)
                while target.exists():
                    target = target.with_name(target.name + "+")
                self.path(step).rename(target)
                self.report(f"moved the damaged checkpoint {step} to {target}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("set aside damaged checkpoints")
        self.manager.reload()

    def _read(self, step: int, abstract_state) -> tuple[Any, dict]:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(meta["meta"])
        self._check_fingerprint(meta.pop("config", {}), step)
        self._check_arrays(step, abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"], meta

    def _check_fingerprint(self, saved: dict, step: int) -> None:
        differences = {
            key: [saved.get(key), value]
            for key, value in self.fingerprint.items()
            if saved.get(key) != value
        }
        described = "; ".join(
            f"{key}: checkpoint has {was!r}, config has {now!r}"
            for key, (was, now) in differences.items()
        )
        if set(differences) - set(self.schedule_keys):
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} was written by a different "
                f"config ({described}). Use a new --workdir, or the config it was written with."
            )
        if differences and not self.allow_change:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} was written with another "
                f"schedule ({described}). To continue it with the new values, pass "
                "--allow_schedule_change; else use the config it was written with."
            )
        self.changes = differences

    def _check_arrays(self, step: int, abstract_state) -> None:
        """Raise :class:`CheckpointMismatchError` when the checkpoint holds other arrays than the
        model's: a different run or version, not damage."""
        saved = jax.tree.leaves(self.manager.item_metadata(step)["state"])

        def shapes(leaves):
            return Counter((tuple(a.shape), str(a.dtype)) for a in leaves)

        ours, theirs = shapes(jax.tree.leaves(abstract_state)), shapes(saved)
        if ours != theirs:
            missing = sorted((ours - theirs).elements())[:3]
            extra = sorted((theirs - ours).elements())[:3]
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} holds other arrays than the "
                f"model of this config ({sum(ours.values())} in the model, "
                f"{sum(theirs.values())} in the checkpoint; the model's {missing} against the "
                f"checkpoint's {extra}). Use a new --workdir, or the config and version it was "
                "written with."
            )
