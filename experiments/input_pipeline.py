"""Input pipelines of the training scripts: deterministic, resumable and host-sharded batches.

Every dataset is a row of a registry (`DatasetSpec`): where its examples come from (a random-access
`Source`), how one training and one eval example are transformed, and its shapes. The batches are
built with Grain over that source, so image decoding and augmentation run in worker threads.

Determinism: the global batch at (seed, epoch, step) is a pure function of those three numbers.
The training order of an epoch is a permutation seeded by (seed, epoch), the augmentation of the
example at epoch position `i` is seeded by (seed, epoch, i), and host `p` of `P` takes rows
`[p·B/P, (p+1)·B/P)` of every global batch of size `B`. Resuming at `start_step` therefore yields
exactly the batches an uninterrupted epoch would have, and a run on `P` hosts sees exactly the data
of a run on one.

Augmentation and normalisation follow the reference's torchvision pipelines (spec §4.2), with
images channel-last `(H, W, C)`:

- CIFAR train: RandomCrop(32, padding=4) with black padding, RandomHorizontalFlip, ToTensor,
  Normalize. CIFAR eval: ToTensor, Normalize.
- ImageNet train: RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(3/4, 4/3), bilinear),
  RandomHorizontalFlip, ToTensor, Normalize. ImageNet eval: Resize(256), CenterCrop(224),
  ToTensor, Normalize.
- digits (scikit-learn's bundled 8×8 digits, the offline default): a random shift of up to one
  pixel (RandomCrop(8, padding=1)), then pixel values 0..16 scaled to [0, 1] and normalised with
  the training split's mean and standard deviation.

The tfds datasets are read with `tfds.data_source` from ArrayRecord files and decoded by tfds's
NumPy path (PIL, or OpenCV when it is installed), so nothing here imports TensorFlow. Train epochs
drop the last incomplete batch; the eval split is read once, in order, with its last batch padded
and a `mask` marking the real examples.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from experiments import cifar10_dvs

Split = Literal["train", "eval"]
Batch = dict[str, np.ndarray]

# Stream tags keep the shuffling and the augmentation random streams apart for one (seed, epoch).
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DIGITS_NUM_EVAL = 360


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset's files are missing; the message says where they were looked for and the fix."""


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


class Source(Protocol):
    """Where a dataset's examples come from.

    `open` returns a random-access sequence of examples, each a mapping with at least "image"
    (a NumPy array, uint8 for images) and "label" (an integer).
    """

    def open(self, split: Split, data_dir: str | None) -> Sequence[Mapping[str, Any]]: ...

    def check_prepared(self, data_dir: str | None) -> None: ...


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One row of the dataset registry.

    Attributes:
      info: names, shapes and sizes.
      source: where the examples come from.
      train_transform: `(image, rng) -> float32 array of shape info.image_shape`.
      eval_transform: `image -> float32 array of shape info.image_shape`.
      num_threads: Grain worker threads decoding and transforming examples ahead of the
        training step; 0 builds each example in the consuming thread, with no overlap.
    """

    info: DatasetInfo
    source: Source
    train_transform: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    eval_transform: Callable[[np.ndarray], np.ndarray]
    num_threads: int


# ---------------------------------------------------------------------------------------------
# Transforms: one example, channel-last, NumPy in and out.


def normalize(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], pixel_max: float = 255.0
) -> np.ndarray:
    """ToTensor then Normalize: `(image / pixel_max − mean) / std`, in float32 as torchvision.

    Args:
      image: `(..., C)` integer pixels in `[0, pixel_max]`.
      mean: per-channel mean of the scaled pixels, length C.
      std: per-channel standard deviation of the scaled pixels, length C.
      pixel_max: the value that maps to 1.0 (255 for 8-bit images, 16 for digits).

    Returns:
      `(..., C)` float32.
    """
    scaled = image.astype(np.float32) / np.float32(pixel_max)
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_and_random_crop(image: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """RandomCrop(size=(H, W), padding): zero-pad H and W, take an H×W window at a random offset.

    The offsets along H and W are independent and uniform in `0..2·padding`. Leading axes (e.g.
    the frames of an event clip) all get the same window.

    Args:
      image: `(..., H, W, C)`.
      rng: the example's random generator.
      padding: pixels of zeros added on every side.

    Returns:
      `(..., H, W, C)`, same dtype.
    """
    height, width = image.shape[-3:-1]
    padded_shape = list(image.shape)
    padded_shape[-3] += 2 * padding
    padded_shape[-2] += 2 * padding
    # A zero canvas and one copy: several times faster than np.pad on small images.
    padded = np.zeros(padded_shape, image.dtype)
    padded[..., padding : padding + height, padding : padding + width, :] = image
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[..., top : top + height, left : left + width, :]


def random_horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RandomHorizontalFlip(p=0.5): reverse the W axis of `(..., H, W, C)` with probability 1/2."""
    return image[..., ::-1, :] if rng.random() < 0.5 else image


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """The crop box of torchvision's RandomResizedCrop (`get_params`).

    Up to `attempts` times, draw an area fraction uniform in `scale` and an aspect ratio w/h
    log-uniform in `ratio`; keep the first box that fits, at a uniform position. If none fits,
    fall back to the largest centred box whose aspect ratio is clipped to `ratio`.

    Args:
      height: image height in pixels.
      width: image width in pixels.
      rng: the example's random generator.
      scale: (min, max) fraction of the image area.
      ratio: (min, max) aspect ratio w/h.
      attempts: draws before the fallback.

    Returns:
      (top, left, box_height, box_width) in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_width = round(math.sqrt(target_area * aspect))
        box_height = round(math.sqrt(target_area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(rng.integers(0, height - box_height + 1))
            left = int(rng.integers(0, width - box_width + 1))
            return top, left, box_height, box_width
    in_ratio = width / height
    if in_ratio < min(ratio):
        box_width, box_height = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        box_width, box_height = round(height * max(ratio)), height
    else:
        box_width, box_height = width, height
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL's bilinear resize, as torchvision's Resize on PIL images (antialiased when shrinking).

    Args:
      image: `(H, W, C)` uint8.
      height: output height.
      width: output width.

    Returns:
      `(height, width, C)` uint8.
    """

    def resize(pixels: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        return np.asarray(resized)

    if image.shape[-1] == 3:
        return resize(image)
    return np.stack([resize(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """RandomResizedCrop(size, scale, ratio, bilinear) on a `(H, W, C)` uint8 image.

    Args:
      image: `(H, W, C)` uint8.
      rng: the example's random generator.
      size: side of the square output.
      scale: (min, max) fraction of the image area covered by the crop.
      ratio: (min, max) aspect ratio w/h of the crop.

    Returns:
      `(size, size, C)` uint8.
    """
    top, left, box_height, box_width = random_resized_crop_box(*image.shape[:2], rng, scale, ratio)
    crop = image[top : top + box_height, left : left + box_width]
    return resize_bilinear(crop, size, size)


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize(size) with an int size: the shorter side becomes `size`, the aspect ratio is kept.

    The longer side is `int(size · long / short)`, truncated, as torchvision computes it.

    Args:
      image: `(H, W, C)` uint8.
      size: the new length of the shorter side.

    Returns:
      `(H', W', C)` uint8 with `min(H', W') == size`.
    """
    height, width = image.shape[:2]
    if height <= width:
        return resize_bilinear(image, size, int(size * width / height))
    return resize_bilinear(image, int(size * height / width), size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """CenterCrop(size) on an image at least `size` on each side.

    Offsets are `round((H − size) / 2)` with Python's round-half-to-even, as torchvision.

    Args:
      image: `(H, W, C)`.
      size: side of the square crop.

    Returns:
      `(size, size, C)`, a view of `image`.
    """
    height, width = image.shape[:2]
    top = round((height - size) / 2)
    left = round((width - size) / 2)
    return image[top : top + size, left : left + size]


def cifar_train_transform(
    image: np.ndarray, rng: np.random.Generator, *, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize: (32, 32, 3) float32."""
    image = pad_and_random_crop(image, rng, padding=4)
    image = random_horizontal_flip(image, rng)
    return normalize(image, mean, std)


def imagenet_train_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(224, scale=(0.2, 1)), RandomHorizontalFlip, ToTensor, Normalize.

    Args:
      image: `(H, W, 3)` uint8, any size.
      rng: the example's random generator.

    Returns:
      `(224, 224, 3)` float32.
    """
    image = random_resized_crop(image, rng, 224, scale=(0.2, 1.0))
    image = random_horizontal_flip(image, rng)
    return normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_eval_transform(image: np.ndarray) -> np.ndarray:
    """Resize(256), CenterCrop(224), ToTensor, Normalize: `(H, W, 3)` uint8 → (224, 224, 3)."""
    image = center_crop(resize_shorter_side(image, 256), 224)
    return normalize(image, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------------------------------------
# Sources.


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """The tfds data directory: `data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))
    return os.path.expanduser(os.fspath(data_dir))


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A tfds dataset prepared as ArrayRecord, read with `tfds.data_source` (no TensorFlow).

    Attributes:
      name: the tfds name, e.g. "cifar10".
      eval_split: the tfds split used for evaluation.
      manual_download: what must be downloaded by hand before `tfds build`, if anything.
    """

    name: str
    eval_split: str = "test"
    manual_download: str | None = None

    def open(self, split: Split, data_dir: str | None) -> Sequence[Mapping[str, Any]]:
        tfds_split = "train" if split == "train" else self.eval_split
        return tfds.data_source(
            self.name, split=tfds_split, data_dir=resolve_data_dir(data_dir), download=False
        )

    def check_prepared(self, data_dir: str | None) -> None:
        root = resolve_data_dir(data_dir)
        builder = tfds.builder(self.name, data_dir=root)
        formats = builder.info.available_file_formats() if builder.is_prepared() else set()
        if tfds.core.FileFormat.ARRAY_RECORD in formats:
            return
        message = (
            f"Dataset '{self.name}' is not prepared: no ArrayRecord files in {builder.data_dir}"
        )
        if formats:
            found = ", ".join(sorted(f.value for f in formats))
            raise DatasetNotPreparedError(
                f"{message} (it is there as {found}). Convert it in place with:\n"
                f"  tfds convert_format --dataset_version_dir={builder.data_dir} "
                "--out_file_format=array_record"
            )
        raise DatasetNotPreparedError(f"{message}.\n{self.prepare_instructions(root)}")

    def prepare_instructions(self, root: str) -> str:
        """The commands that prepare this dataset under the data directory `root`."""
        steps = []
        if self.manual_download:
            manual_dir = os.path.join(root, "downloads", "manual")
            steps.append(f"Download {self.manual_download} into {manual_dir}, then run:")
        else:
            steps.append("Prepare it once with (TensorFlow is needed for this step only):")
        steps.append("  pip install tensorflow")
        steps.append(f"  tfds build {self.name} --data_dir={root} --file_format=array_record")
        return "\n".join(steps)


@functools.cache
def _digits_splits() -> dict[Split, tuple[np.ndarray, np.ndarray]]:
    # scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    train, held_out = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_NUM_EVAL, stratify=labels, random_state=0
    )
    return {"train": (images[train], labels[train]), "eval": (images[held_out], labels[held_out])}


@functools.cache
def _digits_moments() -> tuple[tuple[float], tuple[float]]:
    train_images = _digits_splits()["train"][0] / 16.0
    return (float(train_images.mean()),), (float(train_images.std()),)


@dataclasses.dataclass(frozen=True)
class _ArraySource:
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}


class DigitsSource:
    """scikit-learn's bundled 8×8 digits (1,797 images, values 0..16), with a fixed split.

    The eval split is a stratified 360 images (`train_test_split(..., stratify=labels,
    random_state=0)`); the other 1,437 are the training split. Nothing is downloaded.
    """

    def open(self, split: Split, data_dir: str | None) -> Sequence[Mapping[str, Any]]:
        del data_dir
        return _ArraySource(*_digits_splits()[split])

    def check_prepared(self, data_dir: str | None) -> None:
        del data_dir


@dataclasses.dataclass(frozen=True)
class Cifar10DvsSource:
    """CIFAR10-DVS as distributed (``data_dir`` is its root, see :mod:`experiments.cifar10_dvs`).

    The recordings are turned once into 16 frames of 48×48 event counts and cached on disk; the
    training split is the first 90 % of each class in file order, as the reference's.
    """

    def open(self, split: Split, data_dir: str | None) -> Sequence[Mapping[str, Any]]:
        return cifar10_dvs.FrameSource(
            self._root(data_dir), "train" if split == "train" else "test"
        )

    def check_prepared(self, data_dir: str | None) -> None:
        root = self._root(data_dir)
        cache = cifar10_dvs.default_cache_dir(root)
        if all((cache / f"{split}_frames.npy").exists() for split in cifar10_dvs.SPLITS):
            return
        try:
            cifar10_dvs.find_event_dir(root)
        except FileNotFoundError as error:
            raise DatasetNotPreparedError(str(error)) from None

    @staticmethod
    def _root(data_dir: str | None) -> str:
        if data_dir is None:
            raise DatasetNotPreparedError(
                "Dataset 'cifar10_dvs' has no default location: pass the folder holding the ten "
                "class folders of the CIFAR10-DVS release with --config.data_dir=DIR (see the "
                "README, section Datasets)."
            )
        return os.path.expanduser(data_dir)


def _digits_eval_transform(image: np.ndarray) -> np.ndarray:
    mean, std = _digits_moments()
    return normalize(image, mean, std, pixel_max=16.0)


def _digits_train_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _digits_eval_transform(pad_and_random_crop(image, rng, padding=1))


# ---------------------------------------------------------------------------------------------
# The registry. A new dataset is one row: a Source, its transforms and its shapes.

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
    "cifar10": DatasetSpec(
        info=DatasetInfo("cifar10", 10, (32, 32, 3), 50_000, 10_000),
        source=TfdsSource("cifar10"),
        train_transform=functools.partial(
            cifar_train_transform, mean=CIFAR10_MEAN, std=CIFAR10_STD
        ),
        eval_transform=functools.partial(normalize, mean=CIFAR10_MEAN, std=CIFAR10_STD),
        num_threads=4,
    ),
    "cifar100": DatasetSpec(
        info=DatasetInfo("cifar100", 100, (32, 32, 3), 50_000, 10_000),
        source=TfdsSource("cifar100"),
        train_transform=functools.partial(
            cifar_train_transform, mean=CIFAR100_MEAN, std=CIFAR100_STD
        ),
        eval_transform=functools.partial(normalize, mean=CIFAR100_MEAN, std=CIFAR100_STD),
        num_threads=4,
    ),
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


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    return DATASETS[name]


def dataset_info(name: str) -> DatasetInfo:
    """Names, shapes and sizes of the dataset `name` (see `DATASETS`)."""
    return _spec(name).info


def check_prepared(name: str, data_dir: str | None) -> None:
    """Raises `DatasetNotPreparedError` if the files of dataset `name` are missing.

    Args:
      name: a registry name, e.g. "cifar10".
      data_dir: the tfds data directory; None means `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

    Raises:
      DatasetNotPreparedError: naming the dataset, where it looked and the command to run.
    """
    _spec(name).source.check_prepared(data_dir)


# ---------------------------------------------------------------------------------------------
# Batching.


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
    spec = _spec(name)
    rows = _rows_per_host(global_batch_size, process_index, process_count)
    _check_index("seed", seed)
    _check_index("epoch", epoch)
    _check_index("start_step", start_step)
    source = spec.source.open("train", data_dir)
    num_steps = _train_steps(name, len(source), global_batch_size)
    if start_step > num_steps:
        raise ValueError(f"start_step ({start_step}) is past the {num_steps} steps of an epoch.")
    order = epoch_order(seed, epoch, len(source))

    def example_at(position: int) -> Batch:
        example = source[int(order[position])]
        rng = np.random.default_rng((seed, epoch, _AUGMENT_STREAM, position))
        return {
            "image": spec.train_transform(example["image"], rng),
            "label": np.int32(example["label"]),
        }

    return _host_batches(
        example_at,
        first_step=start_step,
        num_steps=num_steps,
        global_batch_size=global_batch_size,
        process_index=process_index,
        rows=rows,
        num_threads=spec.num_threads,
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
    spec = _spec(name)
    rows = _rows_per_host(global_batch_size, process_index, process_count)
    source = spec.source.open("eval", data_dir)
    num_examples = len(source)
    padding = {
        "image": np.zeros(spec.info.image_shape, np.float32),
        "label": np.int32(0),
        "mask": np.bool_(False),
    }

    def example_at(position: int) -> Batch:
        if position >= num_examples:
            return padding
        example = source[position]
        return {
            "image": spec.eval_transform(example["image"]),
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
        num_threads=spec.num_threads,
    )
