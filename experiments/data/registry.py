"""The datasets by name: each one row of :data:`DATASETS`, a source, its transforms and shapes.

A new dataset is one row: a :class:`~experiments.data.sources.Source`, how one training and one
evaluation example are transformed, and its shapes and sizes.

- digits (scikit-learn's bundled 8×8 digits, the offline default): a random shift of up to one
  pixel (RandomCrop(8, padding=1)), then pixel values 0..16 scaled to [0, 1] and normalised with
  the training split's mean and standard deviation.
- cifar10, cifar100, imagenet2012: the reference's pipelines (:mod:`experiments.data.transforms`).
- cifar10_dvs: the reference's frames (:mod:`experiments.data.cifar10_dvs`) and its crop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from experiments.data import cifar10_dvs
from experiments.data.sources import (
    DIGITS_NUM_EVAL,
    Cifar10DvsSource,
    DigitsSource,
    Source,
    TfdsSource,
    digits_moments,
)
from experiments.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
    normalize,
    pad_and_random_crop,
)

__all__ = ["DATASETS", "DatasetInfo", "DatasetSpec", "check_prepared", "dataset_info", "spec"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset before reading it.

    Attributes:
      name: the registry name, e.g. "cifar10".
      num_classes: number of labels.
      image_shape: shape of one transformed example, channel-last, e.g. (32, 32, 3).
      num_train: number of training examples.
      num_eval: number of eval examples (the test split; ImageNet's validation split).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, ...]
    num_train: int
    num_eval: int


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One row of the dataset registry.

    Attributes:
      info: names, shapes and sizes.
      source: where the examples come from.
      train_transform: ``(image, rng) -> float32 array of shape info.image_shape``.
      eval_transform: ``image -> float32 array of shape info.image_shape``.
      num_threads: Grain worker threads decoding and transforming examples ahead of the
        training step; 0 builds each example in the consuming thread, with no overlap.
    """

    info: DatasetInfo
    source: Source
    train_transform: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    eval_transform: Callable[[np.ndarray], np.ndarray]
    num_threads: int


def _digits_eval_transform(image: np.ndarray) -> np.ndarray:
    mean, std = digits_moments()
    return normalize(image, mean, std, pixel_max=16.0)


def _digits_train_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _digits_eval_transform(pad_and_random_crop(image, rng, padding=1))


def _cifar(
    name: str, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> DatasetSpec:
    """CIFAR-10 and CIFAR-100 differ only in their labels and channel moments."""
    return DatasetSpec(
        info=DatasetInfo(name, num_classes, (32, 32, 3), 50_000, 10_000),
        source=TfdsSource(name, image_shape=(32, 32, 3)),
        train_transform=functools.partial(cifar_train_transform, mean=mean, std=std),
        eval_transform=functools.partial(normalize, mean=mean, std=std),
        num_threads=4,
    )


DATASETS: dict[str, DatasetSpec] = {
    # num_threads is a starting point, not a measurement: CIFAR's per-example work is mostly
    # Python and contends for the GIL, ImageNet's JPEG decoding and resizing release it.
    "digits": DatasetSpec(
        info=DatasetInfo("digits", 10, (8, 8, 1), 1797 - DIGITS_NUM_EVAL, DIGITS_NUM_EVAL),
        source=DigitsSource(),
        train_transform=_digits_train_transform,
        eval_transform=_digits_eval_transform,
        num_threads=0,
    ),
    "cifar10": _cifar("cifar10", 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _cifar("cifar100", 100, CIFAR100_MEAN, CIFAR100_STD),
    "cifar10_dvs": DatasetSpec(
        info=DatasetInfo("cifar10_dvs", 10, (16, 48, 48, 2), 9000, 1000),
        source=Cifar10DvsSource(),
        # The same zero-padded 48×48 window for all 16 frames and both polarities; no flip.
        train_transform=functools.partial(pad_and_random_crop, padding=cifar10_dvs.CROP_PADDING),
        eval_transform=np.asarray,
        num_threads=4,
    ),
    "imagenet2012": DatasetSpec(
        info=DatasetInfo("imagenet2012", 1000, (224, 224, 3), 1_281_167, 50_000),
        source=TfdsSource(
            "imagenet2012",
            image_shape=(None, None, 3),
            eval_split="validation",
            manual_download=(
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                "(registration at https://image-net.org/download-images)"
            ),
        ),
        train_transform=imagenet_train_transform,
        eval_transform=imagenet_eval_transform,
        num_threads=16,
    ),
}


def spec(name: str) -> DatasetSpec:
    """The registry row of the dataset ``name``.

    Raises:
      ValueError: an unknown name, listing the known ones.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    return DATASETS[name]


def dataset_info(name: str) -> DatasetInfo:
    """Names, shapes and sizes of the dataset `name` (see `DATASETS`)."""
    return spec(name).info


def check_prepared(name: str, data_dir: str | None) -> None:
    """Raises `DatasetNotPreparedError` if the files of dataset `name` are missing.

    Args:
      name: a registry name, e.g. "cifar10".
      data_dir: the tfds data directory; None means `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

    Raises:
      DatasetNotPreparedError: naming the dataset, where it looked and the command to run.
    """
    spec(name).source.check_prepared(data_dir)
