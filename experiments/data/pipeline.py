"""Batches for training and evaluation: deterministic, resumable and sharded over hosts.

The batches are built with Grain over a dataset's random-access source
(:mod:`experiments.data.registry`), so decoding and augmentation run in worker threads.

Determinism: the global batch at (seed, epoch, step) is a pure function of those three numbers.
The training order of an epoch is a permutation seeded by (seed, epoch), the augmentation of the
example at epoch position ``i`` is seeded by (seed, epoch, i), and host ``p`` of ``P`` takes rows
``[p·B/P, (p+1)·B/P)`` of every global batch of size ``B``. Resuming at ``start_step`` therefore
yields exactly the batches an uninterrupted epoch would have, and a run on ``P`` hosts sees exactly
the data of a run on one. Train epochs drop the last incomplete batch; the eval split is read once,
in order, with its last batch padded and a ``mask`` marking the real examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from experiments.data.registry import dataset_info, spec

__all__ = ["Batch", "epoch_order", "eval_batches", "steps_per_epoch", "train_batches"]

Batch = dict[str, np.ndarray]

# Stream tags keep the shuffling and the augmentation random streams apart for one (seed, epoch).
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1


def _check_index(name: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}.")


def _rows_per_host(global_batch_size: int, process_index: int, process_count: int) -> int:
    _check_index("global_batch_size", global_batch_size, minimum=1)
    _check_index("process_count", process_count, minimum=1)
    _check_index("process_index", process_index)
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) must be divisible by process_count "
            f"({process_count})."
        )
    if process_index >= process_count:
        raise ValueError(
            f"process_index ({process_index}) must be < process_count ({process_count})."
        )
    return global_batch_size // process_count


def _train_steps(name: str, num_examples: int, global_batch_size: int) -> int:
    if global_batch_size > num_examples:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) exceeds the {num_examples} training "
            f"examples of {name!r}: an epoch would have no full batch."
        )
    return num_examples // global_batch_size


def steps_per_epoch(name: str, global_batch_size: int) -> int:
    """Training steps per epoch: full global batches only (the last partial batch is dropped).

    Args:
      name: a registry name.
      global_batch_size: examples per step over all hosts.

    Returns:
      `num_train // global_batch_size`.
    """
    _check_index("global_batch_size", global_batch_size, minimum=1)
    return _train_steps(name, dataset_info(name).num_train, global_batch_size)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The training order of one epoch: a permutation of `range(num_examples)` seeded by both."""
    return np.random.default_rng((seed, epoch, _SHUFFLE_STREAM)).permutation(num_examples)


def _host_batches(
    example_at: Callable[[int], Batch],
    *,
    first_step: int,
    num_steps: int,
    global_batch_size: int,
    process_index: int,
    rows: int,
    num_threads: int,
) -> Iterator[Batch]:
    """This host's rows of global batches `first_step..num_steps − 1`, built in worker threads.

    `example_at(position)` builds the example at a position of the global stream, where global
    batch `s` holds positions `[s·B, (s+1)·B)` and this host its rows `[p·rows, (p+1)·rows)`.
    """

    def host_example(k: int) -> Batch:
        step, row = divmod(k, rows)
        return example_at((first_step + step) * global_batch_size + process_index * rows + row)

    dataset = grain.MapDataset.range((num_steps - first_step) * rows).map(host_example)
    read_options = grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=max(2 * rows, num_threads)
    )
    return iter(dataset.to_iter_dataset(read_options).batch(rows, drop_remainder=True))


def train_batches(
    name: str,
    *,
    data_dir: str | None,
    global_batch_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The training batches of one epoch, from `start_step` to its end, for one host.

    The epoch's order is `epoch_order(seed, epoch, n)`; the example at epoch position `i` is
    augmented with a generator seeded by (seed, epoch, i). Batches are therefore independent of
    `start_step`, of `process_count` and of the number of worker threads.

    Args:
      name: a registry name.
      data_dir: the tfds data directory (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      global_batch_size: examples per step over all hosts, `B`.
      seed: the run's seed, ≥ 0.
      epoch: the epoch index, ≥ 0.
      start_step: the first step to yield, in `0..steps`; earlier ones are skipped unread.
      process_index: this host, `p`.
      process_count: the number of hosts, `P`; must divide `B`.

    Returns:
      An iterator over `{'image': float32 (B/P, *image_shape), 'label': int32 (B/P,)}`, rows
      `[p·B/P, (p+1)·B/P)` of each global batch; `n // B − start_step` batches for `n` examples.
    """
    dataset = spec(name)
    rows = _rows_per_host(global_batch_size, process_index, process_count)
    _check_index("seed", seed)
    _check_index("epoch", epoch)
    _check_index("start_step", start_step)
    source = dataset.source.open("train", data_dir)
    num_steps = _train_steps(name, len(source), global_batch_size)
    if start_step > num_steps:
        raise ValueError(f"start_step ({start_step}) is past the {num_steps} steps of an epoch.")
    order = epoch_order(seed, epoch, len(source))

    def example_at(position: int) -> Batch:
        example = source[int(order[position])]
        rng = np.random.default_rng((seed, epoch, _AUGMENT_STREAM, position))
        return {
            "image": dataset.train_transform(example["image"], rng),
            "label": np.int32(example["label"]),
        }

    return _host_batches(
        example_at,
        first_step=start_step,
        num_steps=num_steps,
        global_batch_size=global_batch_size,
        process_index=process_index,
        rows=rows,
        num_threads=dataset.num_threads,
    )


def eval_batches(
    name: str,
    *,
    data_dir: str | None,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The whole eval split once, in order, without augmentation, for one host.

    The split is padded to a whole number of global batches; padding rows are zero images with
    label 0 and `mask` False, so summing metrics over `mask` across all hosts counts every eval
    example exactly once.

    Args:
      name: a registry name.
      data_dir: the tfds data directory (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      global_batch_size: examples per step over all hosts, `B`.
      process_index: this host, `p`.
      process_count: the number of hosts, `P`; must divide `B`.

    Returns:
      An iterator over `{'image': float32 (B/P, *image_shape), 'label': int32 (B/P,),
      'mask': bool (B/P,)}`, rows `[p·B/P, (p+1)·B/P)` of each global batch; `ceil(n / B)`
      batches for `n` eval examples.
    """
    dataset = spec(name)
    rows = _rows_per_host(global_batch_size, process_index, process_count)
    source = dataset.source.open("eval", data_dir)
    num_examples = len(source)
    padding = {
        "image": np.zeros(dataset.info.image_shape, np.float32),
        "label": np.int32(0),
        "mask": np.bool_(False),
    }

    def example_at(position: int) -> Batch:
        if position >= num_examples:
            return padding
        example = source[position]
        return {
            "image": dataset.eval_transform(example["image"]),
            "label": np.int32(example["label"]),
            "mask": np.bool_(True),
        }

    return _host_batches(
        example_at,
        first_step=0,
        num_steps=-(-num_examples // global_batch_size),
        global_batch_size=global_batch_size,
        process_index=process_index,
        rows=rows,
        num_threads=dataset.num_threads,
    )
