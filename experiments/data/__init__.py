"""Input pipelines of the training scripts: datasets by name, their sources, transforms and
batches.

- :mod:`~experiments.data.registry`: the datasets by name (:data:`DATASETS`), one row each;
- :mod:`~experiments.data.sources`: where examples come from (tfds ArrayRecord files, the bundled
  digits, the CIFAR10-DVS cache) and the checks that stop a run before compiling when files are
  missing or damaged;
- :mod:`~experiments.data.transforms`: the reference's augmentations and normalisations;
- :mod:`~experiments.data.cifar10_dvs`: CIFAR10-DVS event files to the reference's frames;
- :mod:`~experiments.data.pipeline`: deterministic, resumable, host-sharded batches.
"""

from experiments.data.pipeline import (
    Batch,
    epoch_order,
    eval_batches,
    steps_per_epoch,
    train_batches,
)
from experiments.data.registry import (
    DATASETS,
    DatasetInfo,
    DatasetSpec,
    check_prepared,
    dataset_info,
)
from experiments.data.sources import DatasetNotPreparedError

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "check_prepared",
    "dataset_info",
    "epoch_order",
    "eval_batches",
    "steps_per_epoch",
    "train_batches",
]
