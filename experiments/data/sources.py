"""Where the examples of each dataset come from: random-access sources, and their checks.

A source's ``open(split, data_dir)`` returns a random-access sequence of examples, each a mapping
with at least ``"image"`` (a NumPy array) and ``"label"`` (an integer); ``check_prepared(data_dir)``
raises :class:`DatasetNotPreparedError` naming what is missing and how to prepare it, before
anything is compiled.

The tfds datasets are read with ``tfds.data_source`` from ArrayRecord files and decoded by tfds's
NumPy path, so nothing here imports TensorFlow; ``tensorflow_datasets`` itself is imported only
when a tfds dataset is used.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from experiments.data import cifar10_dvs

Split = Literal["train", "eval"]

DIGITS_NUM_EVAL = 360
"""The digits' held-out split: a stratified 360 of the 1,797 images."""


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset's files are missing; the message says where they were looked for and the fix."""


class Source(Protocol):
    """Where a dataset's examples come from (see the module docstring)."""

    def open(self, split: Split, data_dir: str | None) -> Sequence[Mapping[str, Any]]: ...

    def check_prepared(self, data_dir: str | None) -> None: ...


def _tfds():
    # Imported on first use: only the tfds datasets need it, and it is slow to import.
    import tensorflow_datasets as tfds

    return tfds


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
      image_shape: the shape of a stored image, ``None`` where it varies; images are uint8.
      eval_split: the tfds split used for evaluation.
      manual_download: what must be downloaded by hand before `tfds build`, if anything.
    """

    name: str
    image_shape: tuple[int | None, ...]
    eval_split: str = "test"
    manual_download: str | None = None

    def open(self, split: Split, data_dir: str | None) -> Sequence[Mapping[str, Any]]:
        tfds_split = "train" if split == "train" else self.eval_split
        return _tfds().data_source(
            self.name, split=tfds_split, data_dir=resolve_data_dir(data_dir), download=False
        )

    def check_prepared(self, data_dir: str | None) -> None:
        root = resolve_data_dir(data_dir)
        tfds = _tfds()
        builder = tfds.builder(self.name, data_dir=root)
        formats = builder.info.available_file_formats() if builder.is_prepared() else set()
        if tfds.core.FileFormat.ARRAY_RECORD in formats:
            self._check_files(builder, root)
            return
        message = (
            f"Dataset '{self.name}' is not prepared: no ArrayRecord files in {builder.data_dir}"
        )
        if formats:
            # Into another data directory: converted in place, a dataset keeps TFRecord as its
            # format and lists ArrayRecord as an alternative, which tfds (4.9) does not read back.
            found = ", ".join(sorted(f.value for f in formats))
            converted_root = root.rstrip(os.sep) + "_array_record"
            converted = os.path.join(converted_root, os.path.relpath(builder.data_dir, root))
            raise DatasetNotPreparedError(
                f"{message} (it is there as {found}). Convert it into another data directory "
                f"(with TensorFlow installed) and pass that one:\n"
                f"  tfds convert_format --dataset_version_dir={builder.data_dir} "
                f"--out_file_format=array_record --out_dir={converted}\n"
                f"  --config.data_dir={converted_root}"
            )
        raise DatasetNotPreparedError(f"{message}.\n{self.prepare_instructions(root)}")

    def _check_files(self, builder, root: str) -> None:
        """Every ArrayRecord file of both splits opens, holds the examples tfds wrote, and its
        first and last examples decode to images of :attr:`image_shape`, uint8. (The files are
        named by each split's template with the ArrayRecord suffix, whatever the dataset's main
        format: ArrayRecord may be an alternative one.)"""
        from array_record.python.array_record_module import ArrayRecordReader

        suffix = _tfds().core.FileFormat.ARRAY_RECORD.file_suffix
        for split in ("train", self.eval_split):
            info = builder.info.splits[split]
            template = info.filename_template.replace(filetype_suffix=suffix)
            found = 0
            for path in sorted(template.sharded_filepaths(info.num_shards)):
                try:
                    reader = ArrayRecordReader(str(path))
                    count = reader.num_records()
                    records = reader.read(sorted({0, count - 1})) if count else []
                    reader.close()
                except Exception as error:  # a truncated or foreign file fails in many ways
                    raise self._damaged(path, f"it cannot be read ({error})", root) from None
                for record in records:
                    self._check_image(
                        builder.info.features.deserialize_example_np(record), path, root
                    )
                found += count
            if found != info.num_examples:
                raise self._damaged(
                    builder.data_dir,
                    f"its {split} split holds {found} examples, {info.num_examples} were written",
                    root,
                )

    def _check_image(self, example, path, root: str) -> None:
        image = np.asarray(example["image"])
        expected = self.image_shape
        shape_ok = image.ndim == len(expected) and all(
            want is None or got == want for got, want in zip(image.shape, expected, strict=True)
        )
        if not shape_ok or image.dtype != np.uint8:
            shown = tuple("any" if s is None else s for s in expected)
            raise self._damaged(
                path,
                f"it holds images of shape {image.shape} and dtype {image.dtype}, expected "
                f"{shown} uint8",
                root,
            )

    def _damaged(self, path, problem: str, root: str) -> DatasetNotPreparedError:
        return DatasetNotPreparedError(
            f"Dataset '{self.name}' is damaged: {path}: {problem}. Delete "
            f"{os.path.join(root, self.name)} and prepare it again.\n"
            f"{self.prepare_instructions(root)}"
        )

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
def digits_moments() -> tuple[tuple[float], tuple[float]]:
    """The mean and standard deviation of the digits' training pixels, scaled to [0, 1]."""
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
    """CIFAR10-DVS as distributed (``data_dir`` is its root, see
    :mod:`experiments.data.cifar10_dvs`).

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
            for split in cifar10_dvs.SPLITS:
                try:
                    labels = cifar10_dvs.check_cache(cache, split)
                except ValueError as error:
                    raise DatasetNotPreparedError(str(error)) from None
                try:
                    cifar10_dvs.check_class_counts(labels, cache / f"{split}_labels.npy")
                except ValueError as error:  # a cache built from a release cut short
                    raise DatasetNotPreparedError(
                        f"{error} Then delete {cache}, the frames built from them."
                    ) from None
            return
        try:
            samples = cifar10_dvs.list_samples(root)
            cifar10_dvs.check_class_counts([s.label for s in samples], root)
        except (FileNotFoundError, ValueError) as error:  # missing, empty, mixed or cut short
            raise DatasetNotPreparedError(str(error)) from None

    @staticmethod
    def _root(data_dir: str | None) -> str:
        if data_dir is None:
            raise DatasetNotPreparedError(
                "Dataset 'cifar10_dvs' has no default location: pass the folder holding the ten "
                "class folders of the CIFAR10-DVS release with --config.data_dir=DIR (see "
                "docs/datasets.md)."
            )
        return os.path.expanduser(data_dir)
