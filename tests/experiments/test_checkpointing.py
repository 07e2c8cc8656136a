"""The checkpoints of a workdir on a small state: what orbax keeps, what the integrity record
catches that orbax does not, the fallback and the refusals. Whole runs meet them in
test_faults.py."""

import dataclasses
import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class State:
    step: jax.Array
    weights: jax.Array


def state(step: int) -> State:
    return State(step=jnp.asarray(step, jnp.int32), weights=jnp.arange(4096.0) * step)


ABSTRACT = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state(0))
FINGERPRINT = {"model": "tiny", "learning_rate": 0.1}


def manager(workdir: Path, lines: list[str] | None = None, **kwargs) -> checkpointing.Checkpoints:
    report = lines.append if lines is not None else (lambda line: None)
    return checkpointing.Checkpoints(
        workdir, 2, FINGERPRINT, ("learning_rate",), report=report, **kwargs
    )


def write(workdir: Path, steps: dict[int, float | None]) -> None:
    """Checkpoints of ``steps``, each with its end-of-epoch top-1 or ``None``."""
    checkpoints = manager(workdir)
    for step, top1 in steps.items():
        checkpoints.save(state(step), {"note": step}, test_top1=top1)
    checkpoints.wait()


def largest_data_file(step_dir: Path) -> Path:
    return max(step_dir.glob("state/**/d/*"), key=lambda p: p.stat().st_size)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_orbax_keeps_the_newest_and_the_best(tmp_path):
    write(tmp_path, {1: 50.0, 2: None, 3: 90.0, 4: 70.0, 5: None, 6: 60.0, 7: None})
    checkpoints = manager(tmp_path)
    assert checkpoints.steps() == [3, 6, 7]  # the newest two, and the best (step 3)
    restored, meta = checkpoints.restore(ABSTRACT, "best")
    assert int(restored.step) == 3 and meta["note"] == 3
    assert int(checkpoints.restore(ABSTRACT)[0].step) == 7
    # Each finished checkpoint carries its integrity record.
    assert all((checkpoints.path(s) / checkpointing.INTEGRITY_FILE).is_file() for s in [3, 6, 7])


def test_before_an_epoch_ends_only_the_newest_are_kept(tmp_path):
    write(tmp_path, {1: None, 2: None, 3: None, 4: None})
    assert manager(tmp_path).steps() == [3, 4]
    assert manager(tmp_path).restore(ABSTRACT, "best") is None


def test_of_two_equal_top1_the_earlier_stays_the_best(tmp_path):
    write(tmp_path, {1: 80.0, 2: 80.0, 3: None, 4: None})
    assert int(manager(tmp_path).restore(ABSTRACT, "best")[0].step) == 1


def test_a_changed_byte_restores_silently_without_the_integrity_record(tmp_path):
    # Why the record exists: orbax and tensorstore check no checksum over the arrays' bytes.
    write(tmp_path, {1: None})
    step_dir = tmp_path / "checkpoints" / "1"
    flip_a_byte(largest_data_file(step_dir))
    (step_dir / checkpointing.INTEGRITY_FILE).unlink()
    restored, _ = manager(tmp_path).restore(ABSTRACT)
    assert not np.array_equal(restored.weights, state(1).weights)


def test_a_changed_byte_is_damage_and_the_newest_intact_one_is_restored(tmp_path):
    write(tmp_path, {1: None, 2: None})
    flip_a_byte(largest_data_file(tmp_path / "checkpoints" / "2"))
    lines = []
    restored, _ = manager(tmp_path, lines).restore(ABSTRACT, set_aside=True)
    assert int(restored.step) == 1
    np.testing.assert_array_equal(restored.weights, state(1).weights)
    assert "checkpoint 2 is damaged" in lines[0] and "CRC-32 differs" in lines[0]
    assert (tmp_path / "checkpoints" / "damaged" / "2").is_dir()
    assert manager(tmp_path).steps() == [1]


def test_a_damaged_best_falls_back_to_the_next_best(tmp_path):
    write(tmp_path, {1: 60.0, 2: 80.0, 3: None, 4: 70.0})
    flip_a_byte(largest_data_file(tmp_path / "checkpoints" / "2"))
    lines = []
    restored, _ = manager(tmp_path, lines).restore(ABSTRACT, "best")
    assert int(restored.step) == 4
    assert "checkpoint 2 is damaged" in lines[0]


def test_none_intact_is_an_error_naming_each(tmp_path):
    write(tmp_path, {1: None, 2: None})
    for step in (1, 2):
        path = largest_data_file(tmp_path / "checkpoints" / str(step))
        path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(checkpointing.CheckpointCorruptError, match=r"step 2: .*\n.*step 1: "):
        manager(tmp_path).restore(ABSTRACT)


def test_another_config_is_a_mismatch_and_a_schedule_change_is_allowed_when_asked(tmp_path):
    write(tmp_path, {1: None})
    other = checkpointing.Checkpoints(tmp_path, 2, {**FINGERPRINT, "model": "big"})
    with pytest.raises(checkpointing.CheckpointMismatchError, match="model: checkpoint has 'tiny'"):
        other.restore(ABSTRACT)
    changed = {**FINGERPRINT, "learning_rate": 0.2}
    strict = checkpointing.Checkpoints(tmp_path, 2, changed, ("learning_rate",))
    with pytest.raises(checkpointing.CheckpointMismatchError, match="--allow_schedule_change"):
        strict.restore(ABSTRACT)
    allowed = checkpointing.Checkpoints(tmp_path, 2, changed, ("learning_rate",), allow_change=True)
    assert allowed.restore(ABSTRACT) is not None
    assert allowed.changes == {"learning_rate": [0.1, 0.2]}


def test_other_arrays_are_a_mismatch(tmp_path):
    write(tmp_path, {1: None})
    wider = jax.tree.map(lambda a: jax.ShapeDtypeStruct((8192,), a.dtype), ABSTRACT.weights)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="other arrays"):
        manager(tmp_path).restore(dataclasses.replace(ABSTRACT, weights=wider))


def test_the_earlier_layout_is_refused_with_how_to_move_it(tmp_path):
    # A step folder of the earlier latest/ is a checkpoint of the layout of today, moved.
    write(tmp_path / "old", {7: None})
    latest = tmp_path / "checkpoints" / "latest"
    latest.mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "7").rename(latest / "7")
    (tmp_path / "checkpoints" / "best").mkdir()
    with pytest.raises(checkpointing.CheckpointMismatchError, match="earlier layout") as error:
        manager(tmp_path)
    command = str(error.value).split("To resume them: ")[1].split(" ;")[0]
    subprocess.run(command, shell=True, check=True)
    assert int(manager(tmp_path).restore(ABSTRACT)[0].step) == 7


def test_the_record_lists_every_file_with_its_size(tmp_path):
    write(tmp_path, {1: None})
    step_dir = tmp_path / "checkpoints" / "1"
    recorded = json.loads((step_dir / checkpointing.INTEGRITY_FILE).read_text())["files"]
    on_disk = {
        str(p.relative_to(step_dir)): p.stat().st_size
        for p in step_dir.rglob("*")
        if p.is_file() and p.name != checkpointing.INTEGRITY_FILE
    }
    assert {name: size for name, (size, _) in recorded.items()} == on_disk
