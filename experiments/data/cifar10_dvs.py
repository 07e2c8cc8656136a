"""CIFAR10-DVS: event files to the reference's 16-frame, 48×48 count tensors.

CIFAR10-DVS (Li et al., Front. Neurosci. 2017) holds 1000 recordings per CIFAR-10 class from a
128×128 DVS sensor. The GLIF reference trains on it through SpikingJelly
(``CIFAR10DVS(data_type='frame', frames_number=16, split_by='number')``); this module reproduces
that data path in NumPy:

1. **Read** the events ``(t, x, y, p)`` of one recording, from the original AEDAT release or from
   SpikingJelly's ``events_np`` files, in SpikingJelly's coordinates (:func:`read_aedat`).
2. **Integrate** them into ``T = 16`` frames of per-pixel event counts per polarity, every frame
   holding ``⌊N/16⌋`` consecutive events and the last one also the remainder
   (:func:`events_to_frames`).
3. **Resize** 128×128 → 48×48, bilinear, ``align_corners=False``, no antialiasing: torchvision's
   tensor ``Resize([48, 48])`` (:func:`resize_frames`).
4. **Split** each class in file order, the first 90 % for training (:func:`split_samples`).
5. **Cache** the resized frames of a split in one ``.npy`` (:func:`build_frames`), read back by
   :class:`FrameSource`. The training pipeline (:mod:`experiments.data.registry`) adds the
   reference's crop: zero padding ``CROP_PADDING``, one random 48×48 window for all frames.

Frames are time-major and channel-last, ``(T, H, W, 2)``: channel 0 counts the events of
polarity ``p = 0``, channel 1 those of ``p = 1``; row ``y``, column ``x``.

With the dataset prepared as docs/datasets.md says, ``FrameSource("~/data/CIFAR10-DVS",
"train")`` builds the cache on first use, and its ``[0]`` is ``{'image': (16, 48, 48, 2)
float32, 'label': 0}``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import tqdm

__all__ = [
    "CLASS_NAMES",
    "CROP_PADDING",
    "FRAME_SIZE",
    "NUM_FRAMES",
    "SENSOR_SIZE",
    "TRAIN_FRACTION",
    "Events",
    "FrameSource",
    "Sample",
    "build_frames",
    "default_cache_dir",
    "events_to_frames",
    "find_event_dir",
    "list_samples",
    "read_aedat",
    "read_events",
    "read_events_npz",
    "recording_frames",
    "resize_frames",
    "split_by_number",
    "split_samples",
]

CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""The class folders; a class's label is its index here (alphabetical, as SpikingJelly's)."""

SENSOR_SIZE = 128
"""Height and width of the DVS128 sensor, in pixels."""

NUM_FRAMES = 16
"""Frames per recording in the reference, T."""

FRAME_SIZE = 48
"""Height and width of the frames fed to the network, in pixels."""

CROP_PADDING = 4
"""Zero padding of the reference's training crop, in pixels on every side."""

TRAIN_FRACTION = 0.9
"""Fraction of each class, in file order, that goes to the training split."""

EVENT_SUFFIXES: tuple[str, ...] = (".aedat", ".npz")
"""Event files read: the original release's AEDAT, SpikingJelly's ``events_np`` archives."""

# Where SpikingJelly keeps the class folders under its dataset root: converted arrays first, then
# the extracted original release; a root holding the class folders itself comes last.
_EVENT_SUBDIRS: tuple[str, ...] = ("events_np", "extract", "")

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

_LAYOUT_HELP = """\
Expected the CIFAR10-DVS class folders {classes}, each holding that class's recordings, either
  - as released (figshare, DOI 10.6084/m9.figshare.4724671): unzip airplane.zip … truck.zip into
    the dataset root, giving <root>/airplane/cifar10_airplane_0.aedat, …; or
  - as SpikingJelly converts them: <root>/events_np/airplane/cifar10_airplane_0.npz, … with the
    arrays t, x, y, p (SpikingJelly's <root>/extract/<class>/*.aedat is read too)."""


class Events(NamedTuple):
    """The events of one recording, in recording order, each array of shape ``(N,)``.

    Coordinates are SpikingJelly's (what the reference trains on): ``x`` is the column and ``y``
    the row of the frame, both in ``[0, 128)``; ``p`` is the polarity, 0 or 1.

    Attributes:
      t: timestamps in microseconds, int64.
      x: columns, int64.
      y: rows, int64.
      p: polarities, int64.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray


class Sample(NamedTuple):
    """One recording of the dataset: its event file and its class index in :data:`CLASS_NAMES`."""

    path: Path
    label: int


def _aedat_header_length(data: bytes) -> int:
    """Returns the byte length of the ``#``-prefixed text lines that open an AEDAT file."""
    end = 0
    while data.startswith(b"#", end):
        newline = data.find(b"\n", end)
        end = len(data) if newline < 0 else newline + 1
    return end


def read_aedat(path: str | os.PathLike) -> Events:
    """Reads a recording of the original CIFAR10-DVS release (AEDAT 2.0, DVS128 addresses).

    The file is a few text lines starting with ``#``, then one 8-byte record per event: a
    big-endian uint32 address, then a big-endian uint32 timestamp in µs. The address holds the
    polarity in bit 0, the sensor column ``X`` in bits 1-7 and the sensor row ``Y`` in bits 8-14.
    SpikingJelly, whose frames the reference trains on, maps these to ``x = 127 − Y``,
    ``y = 127 − X`` and ``p = 1 − polarity`` (``cifar10_dvs.py``, ``load_origin_data``); so does
    this reader.

    Args:
      path: an ``.aedat`` file of the release.

    Returns:
      The recording's :class:`Events`, in file order.

    Raises:
      ValueError: if the bytes after the header are not whole 8-byte records.
    """
    data = Path(path).read_bytes()
    body = memoryview(data)[_aedat_header_length(data) :]
    if len(body) % 8:
        raise ValueError(
            f"read_aedat: {path} has {len(body)} bytes after its header; expected whole "
            "8-byte events (a big-endian uint32 address, then a uint32 timestamp). "
            "The file is truncated or not an AEDAT 2.0 recording."
        )
    records = np.frombuffer(body, dtype=">u4").reshape(-1, 2).astype(np.int64)
    address, timestamp = records[:, 0], records[:, 1]
    sensor_x = (address & 0xFE) >> 1
    sensor_y = (address & 0x7F00) >> 8
    polarity = address & 0x1
    return Events(t=timestamp, x=127 - sensor_y, y=127 - sensor_x, p=1 - polarity)


def read_events_npz(path: str | os.PathLike) -> Events:
    """Reads an event archive with the arrays ``t``, ``x``, ``y``, ``p``, as SpikingJelly writes.

    SpikingJelly's ``events_np/<class>/<name>.npz`` already hold its coordinates (those of
    :func:`read_aedat`); they are taken as they are.

    Args:
      path: an ``.npz`` file with four 1-D arrays of equal length named ``t``, ``x``, ``y``, ``p``.

    Returns:
      The recording's :class:`Events`, in file order.

    Raises:
      ValueError: if an array is missing or the lengths differ.
    """
    with np.load(path) as archive:
        missing = [key for key in Events._fields if key not in archive.files]
        if missing:
            raise ValueError(
                f"read_events_npz: {path} lacks the arrays {missing}; expected t, x, y, p "
                f"(SpikingJelly's events_np layout), found {sorted(archive.files)}."
            )
        arrays = {
            key: np.asarray(archive[key]).reshape(-1).astype(np.int64) for key in Events._fields
        }
    if len({array.size for array in arrays.values()}) != 1:
        sizes = {key: array.size for key, array in arrays.items()}
        raise ValueError(f"read_events_npz: {path} has arrays of different lengths {sizes}.")
    return Events(**arrays)


_READERS = {".aedat": read_aedat, ".npz": read_events_npz}


def read_events(path: str | os.PathLike) -> Events:
    """Reads the events of one recording, ``.aedat`` (original release) or ``.npz`` (SpikingJelly).

    Args:
      path: the event file.

    Returns:
      The recording's :class:`Events` in SpikingJelly's coordinates.

    Raises:
      ValueError: for any other suffix.
    """
    suffix = Path(path).suffix
    if suffix not in _READERS:
        raise ValueError(
            f"read_events: expected an .aedat or .npz event file, got {suffix!r} ({path})."
        )
    return _READERS[suffix](path)


def split_by_number(num_events: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Frame boundaries of SpikingJelly's ``split_by='number'``.

    Frame ``i`` holds the events ``[bounds[i], bounds[i + 1])``: ``⌊N/T⌋`` consecutive events
    each, the last frame also the ``N mod T`` left over. With ``N < T`` the first ``T − 1`` frames
    are empty and the last holds every event.

    Args:
      num_events: N, the number of events of the recording.
      num_frames: T, the number of frames.

    Returns:
      ``bounds``, int64 of shape ``(T + 1,)``, from 0 to N.
    """
    if num_frames < 1:
        raise ValueError(f"split_by_number: num_frames must be ≥ 1, got {num_frames}.")
    bounds = np.arange(num_frames + 1, dtype=np.int64) * (num_events // num_frames)
    bounds[-1] = num_events
    return bounds


def events_to_frames(
    events: Events, num_frames: int = NUM_FRAMES, sensor_size: int = SENSOR_SIZE
) -> np.ndarray:
    """Integrates events into frames of event counts per pixel, split as SpikingJelly's ``number``.

    ``frames[i, y, x, c]`` counts the events of frame ``i`` (see :func:`split_by_number`) at row
    ``y``, column ``x`` and polarity ``c``. Counts are raw: neither binarised nor normalised.

    Args:
      events: the recording's :class:`Events`, N of them.
      num_frames: T.
      sensor_size: the frame's height and width, in pixels.

    Returns:
      ``(T, sensor_size, sensor_size, 2)`` float32 counts.

    Raises:
      ValueError: if a coordinate falls outside the sensor or a polarity is not 0 or 1.
    """
    x, y, p = (np.asarray(a, dtype=np.int64) for a in (events.x, events.y, events.p))
    for name, values, stop in (("x", x, sensor_size), ("y", y, sensor_size), ("p", p, 2)):
        if values.size and (values.min() < 0 or values.max() >= stop):
            raise ValueError(
                f"events_to_frames: expected {name} in [0, {stop}), got values in "
                f"[{values.min()}, {values.max()}]."
            )
    bounds = split_by_number(x.size, num_frames)
    frame = np.repeat(np.arange(num_frames), np.diff(bounds))
    pixel = ((frame * sensor_size + y) * sensor_size + x) * 2 + p
    shape = (num_frames, sensor_size, sensor_size, 2)
    counts = np.bincount(pixel, minlength=math.prod(shape))
    return counts.reshape(shape).astype(np.float32)


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Returns the ``(out_size, in_size)`` matrix of PyTorch's bilinear, align_corners=False.

    Output pixel ``i`` samples the input at ``max((i + ½)·in/out − ½, 0)`` and blends its two
    neighbours, the upper one clamped to the edge (ATen's ``area_pixel_compute_source_index``).
    """
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    fraction = source - lower
    weights = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1.0 - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights


def resize_frames(frames: np.ndarray, size: int | tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """Resizes frames bilinearly without antialiasing, as torchvision's tensor ``Resize``.

    Matches ``torch.nn.functional.interpolate(x, size, mode='bilinear', align_corners=False)``,
    what the reference's ``Resize([48, 48])`` on a tensor does (torchvision 0.11 does not
    antialias tensors). ``jax.image.resize`` antialiases by default, so it would blur when
    shrinking. Computed in float64, as the reference resizes SpikingJelly's float64 frames, and
    returned as float32.

    Args:
      frames: ``(T, H, W, C)``.
      size: the output height and width in pixels, one number for both or ``(height, width)``.

    Returns:
      ``(T, height, width, C)`` float32.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"resize_frames: expected frames (T, H, W, C), got shape {frames.shape}.")
    height, width = (size, size) if isinstance(size, int) else size
    rows = _bilinear_weights(frames.shape[1], height)
    cols = _bilinear_weights(frames.shape[2], width)
    channel_first = np.moveaxis(frames, -1, 1).astype(np.float64)
    resized = rows @ channel_first @ cols.T
    return np.moveaxis(resized, 1, -1).astype(np.float32)


def recording_frames(
    path: str | os.PathLike, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE
) -> np.ndarray:
    """One recording's network input before augmentation: read, integrate, resize.

    Args:
      path: an ``.aedat`` or ``.npz`` event file.
      num_frames: T.
      size: the output height and width, in pixels.

    Returns:
      ``(T, size, size, 2)`` float32.
    """
    return resize_frames(events_to_frames(read_events(path), num_frames), size)


def _dataset_error(root: Path, problem: str) -> FileNotFoundError:
    layout = _LAYOUT_HELP.format(classes=", ".join(CLASS_NAMES))
    return FileNotFoundError(f"CIFAR10-DVS: {problem} (looked in {root}).\n{layout}")


def find_event_dir(root: str | os.PathLike) -> Path:
    """Finds the folder that holds the ten class folders under a dataset root.

    Looks at ``<root>/events_np`` (SpikingJelly's converted arrays), then ``<root>/extract``
    (SpikingJelly's copy of the release), then ``<root>`` itself (the release unzipped there).

    Args:
      root: the dataset root.

    Returns:
      The first of those holding a folder for every class of :data:`CLASS_NAMES`.

    Raises:
      FileNotFoundError: if none does; the message lists what is missing and the layout expected.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _dataset_error(root, "the dataset directory does not exist")
    for subdir in _EVENT_SUBDIRS:
        candidate = root / subdir
        if all((candidate / name).is_dir() for name in CLASS_NAMES):
            return candidate
    missing = [name for name in CLASS_NAMES if not (root / name).is_dir()]
    raise _dataset_error(root, f"class folders missing: {', '.join(missing)}")


def list_samples(root: str | os.PathLike) -> list[Sample]:
    """Lists the recordings in the reference's order: class by class, files sorted by name.

    This is the order of SpikingJelly's frame dataset (torchvision's ``DatasetFolder``): names
    sort as strings, so ``cifar10_airplane_0, _1, _10, _100, _101, …``.

    Args:
      root: the dataset root (see :func:`find_event_dir`).

    Returns:
      One :class:`Sample` per recording, labels in ``0 … 9``.

    Raises:
      FileNotFoundError: if a class folder is missing or holds no event file.
      ValueError: if a class folder mixes ``.aedat`` and ``.npz`` files.
    """
    event_dir = find_event_dir(root)
    samples = []
    for label, name in enumerate(CLASS_NAMES):
        class_dir = event_dir / name
        files = sorted(
            (path for path in class_dir.iterdir() if path.suffix in EVENT_SUFFIXES),
            key=lambda path: path.name,
        )
        if not files:
            found = sorted({path.suffix for path in class_dir.iterdir()})
            raise _dataset_error(
                class_dir,
                f"no event file (.aedat or .npz) for class {name!r}; suffixes found: {found}",
            )
        if len({path.suffix for path in files}) > 1:
            raise ValueError(
                f"list_samples: {class_dir} mixes .aedat and .npz files; keep one format per "
                "dataset (the release's .aedat or SpikingJelly's events_np .npz)."
            )
        samples.extend(Sample(path, label) for path in files)
    return samples


def check_class_counts(labels: Sequence[int] | np.ndarray, where: str | os.PathLike) -> None:
    """Every class holds as many recordings as every other (1000 each in the release): a class
    folder cut short (an unzip that stopped) would otherwise give a smaller, skewed split.

    Raises:
      ValueError: naming each class's count and ``where``.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(CLASS_NAMES))
    if len(set(counts.tolist())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in zip(CLASS_NAMES, counts, strict=True))
        raise ValueError(
            f"CIFAR10-DVS: the classes hold unequal numbers of recordings in {where} ({listed}); "
            "the release has 1000 of each: unzip the short classes' archives again."
        )


def split_samples(
    samples: Sequence[Sample], train_fraction: float = TRAIN_FRACTION
) -> tuple[list[Sample], list[Sample]]:
    """Splits every class in the given order, as SpikingJelly's ``split_to_train_test_set``.

    The first ``⌈n · train_fraction⌉`` recordings of a class of ``n`` go to training, the rest to
    test (``random_split=False``): 900/100 per class for the full dataset. Both splits list the
    classes in label order.

    Args:
      samples: the recordings in dataset order (:func:`list_samples`).
      train_fraction: the fraction of each class for training.

    Returns:
      ``(train, test)``.
    """
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    train, test = [], []
    for label in sorted(by_label):
        members = by_label[label]
        cut = math.ceil(len(members) * train_fraction)
        train.extend(members[:cut])
        test.extend(members[cut:])
    return train, test


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"expected split 'train' or 'test', got {split!r}.")


def _cache_paths(cache_dir: Path, split: str) -> tuple[Path, Path, Path]:
    """Returns the frames, labels and manifest files of a split's cache."""
    return (
        cache_dir / f"{split}_frames.npy",
        cache_dir / f"{split}_labels.npy",
        cache_dir / f"{split}_files.json",
    )


def default_cache_dir(
    root: str | os.PathLike, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE
) -> Path:
    """Returns ``<root>/frames_number_<T>_size_<size>``, where frames are cached by default."""
    return Path(root).expanduser() / f"frames_number_{num_frames}_size_{size}"


def build_frames(
    root: str | os.PathLike,
    split: Split,
    cache_dir: str | os.PathLike | None = None,
    *,
    num_frames: int = NUM_FRAMES,
    size: int = FRAME_SIZE,
) -> Path:
    """Computes a split's frames once and caches them; later calls find the cache.

    The cache is three files in ``cache_dir``: ``<split>_frames.npy``, ``(N, T, size, size, 2)``
    float32 in :func:`split_samples` order; ``<split>_labels.npy``, ``(N,)`` int32; and
    ``<split>_files.json``, the source files and settings. The frames are written to a temporary
    file and renamed when complete, so an interrupted build leaves no cache and starts over. A
    progress bar shows the recordings per second. Delete the cache directory to rebuild.

    Args:
      root: the dataset root (see :func:`find_event_dir`); not read when the cache exists.
      split: ``'train'`` or ``'test'``.
      cache_dir: where to cache; ``None`` for :func:`default_cache_dir`.
      num_frames: T.
      size: the frames' height and width, in pixels.

    Returns:
      The path of ``<split>_frames.npy``.
    """
    _check_split(split)
    cache_dir = (
        Path(cache_dir).expanduser() if cache_dir else default_cache_dir(root, num_frames, size)
    )
    frames_path, labels_path, manifest_path = _cache_paths(cache_dir, split)
    if frames_path.exists() and labels_path.exists():
        return frames_path

    samples = split_samples(list_samples(root))[SPLITS.index(split)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "num_frames": num_frames,
        "size": size,
        "train_fraction": TRAIN_FRACTION,
        "files": [str(sample.path) for sample in samples],
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    np.save(labels_path, np.array([sample.label for sample in samples], dtype=np.int32))

    partial_path = frames_path.with_name(frames_path.name + ".partial")
    frames = np.lib.format.open_memmap(
        partial_path, mode="w+", dtype=np.float32, shape=(len(samples), num_frames, size, size, 2)
    )
    progress = tqdm.tqdm(samples, desc=f"CIFAR10-DVS {split} frames", unit="recording")
    for index, sample in enumerate(progress):
        frames[index] = recording_frames(sample.path, num_frames, size)
    frames.flush()
    del frames
    os.replace(partial_path, frames_path)
    return frames_path


def check_cache(
    cache_dir: str | os.PathLike,
    split: Split,
    *,
    num_frames: int = NUM_FRAMES,
    size: int = FRAME_SIZE,
) -> np.ndarray:
    """Check a split's cached frames without reading them: the files open, whole, with the
    shape and dtype :func:`build_frames` writes.

    Returns:
      The split's labels.

    Raises:
      ValueError: naming the file, what it holds and what was expected, and how to rebuild it.
    """
    frames_path, labels_path, _ = _cache_paths(Path(cache_dir), split)
    advice = f"delete {Path(cache_dir)} to rebuild it from the recordings."
    try:
        labels = np.load(labels_path)
        frames = np.load(frames_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"CIFAR10-DVS cache: {error} ({frames_path}); {advice}") from None
    expected = (len(labels), num_frames, size, size, 2)
    if frames.shape != expected or frames.dtype != np.float32:
        raise ValueError(
            f"CIFAR10-DVS cache: {frames_path} holds frames of shape {frames.shape} and dtype "
            f"{frames.dtype}, expected {expected} float32; {advice}"
        )
    return labels


class FrameSource:
    """Random access to a split's cached frames, for grain or any loop.

    ``source[i]`` is ``{'image': (T, 48, 48, 2) float32, 'label': int}``: event counts resized
    as the reference, not cropped (training adds
    :func:`experiments.data.transforms.pad_and_random_crop`). The frames are memory-mapped, so a
    source is cheap to open and to pickle into worker processes. The full training split holds
    9000 recordings.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Split,
        cache_dir: str | os.PathLike | None = None,
        *,
        num_frames: int = NUM_FRAMES,
        size: int = FRAME_SIZE,
    ):
        """Opens a split, building its cache first if there is none (see :func:`build_frames`).

        Args:
          root: the dataset root (see :func:`find_event_dir`).
          split: ``'train'`` or ``'test'``.
          cache_dir: where the frames are cached; ``None`` for :func:`default_cache_dir`.
          num_frames: T.
          size: the frames' height and width, in pixels.
        """
        self.split = split
        self.frames_path = build_frames(root, split, cache_dir, num_frames=num_frames, size=size)
        self.labels = check_cache(self.frames_path.parent, split, num_frames=num_frames, size=size)
        self._frames: np.ndarray | None = None

    def _open(self) -> np.ndarray:
        if self._frames is None:
            self._frames = np.load(self.frames_path, mmap_mode="r")
        return self._frames

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray | int]:
        return {"image": np.array(self._open()[index]), "label": int(self.labels[index])}

    def __getstate__(self) -> dict:
        # A memory map pickles as a full copy of its data; workers reopen the file instead.
        return {**self.__dict__, "_frames": None}

    def __repr__(self) -> str:
        return f"FrameSource(split={self.split!r}, len={len(self)}, frames={self.frames_path})"
