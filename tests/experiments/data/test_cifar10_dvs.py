"""CIFAR10-DVS reading, frames, split, resize, crop and cache, against independent NumPy code."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments import data
from experiments.data import cifar10_dvs as dvs

# A jAER-style AEDAT 2.0 text header with CRLF line ends; readers skip every line opening with "#".
AEDAT_HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
)


# ---- test data writers and independent references -------------------------------------------


def random_sensor_events(rng, num_events):
    """Raw sensor fields as the camera records them: column X, row Y, polarity bit, time."""
    return {
        "sensor_x": rng.integers(0, 128, num_events),
        "sensor_y": rng.integers(0, 128, num_events),
        "polarity": rng.integers(0, 2, num_events),
        "t": np.sort(rng.integers(0, 1_000_000, num_events)),
    }


def write_aedat(path, sensor_x, sensor_y, polarity, t, extra_address_bits=0):
    """Writes a recording as the release stores it: header, then big-endian (address, time)."""
    address = (np.asarray(sensor_y) << 8) | (np.asarray(sensor_x) << 1) | np.asarray(polarity)
    address = address | extra_address_bits
    records = np.empty(2 * len(address), dtype=">u4")
    records[0::2] = address
    records[1::2] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(AEDAT_HEADER + records.tobytes())


def spikingjelly_coordinates(sensor_x, sensor_y, polarity, t):
    """SpikingJelly's ``load_origin_data``: x = 127 - Y, y = 127 - X, p = 1 - polarity."""
    return {"t": t, "x": 127 - sensor_y, "y": 127 - sensor_x, "p": 1 - polarity}


def write_spikingjelly_npz(path, t, x, y, p):
    """Writes an ``events_np`` archive with the dtypes SpikingJelly's converter leaves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        t=np.asarray(t).astype(">u4"),
        x=np.asarray(x).astype(np.uint32),
        y=np.asarray(y).astype(np.uint32),
        p=np.asarray(p).astype(np.int64),
    )


def reference_frames(x, y, p, num_frames=16, size=128):
    """Counts events per frame with ``np.add.at``, frames cut as SpikingJelly's j_l/j_r loop."""
    n = len(x)
    step = n // num_frames
    frames = np.zeros((num_frames, size, size, 2))
    for i in range(num_frames):
        left, right = i * step, (n if i == num_frames - 1 else (i + 1) * step)
        np.add.at(frames, (i, y[left:right], x[left:right], p[left:right]), 1)
    return frames


def reference_resize(image, out_h, out_w):
    """PyTorch's bilinear interpolation (align_corners=False, no antialias) by gathering.

    ATen's upsample_bilinear2d: source = max((dst + 0.5) · in/out − 0.5, 0), index = ⌊source⌋,
    neighbour = index + 1 unless at the last pixel, weight = source − index.
    """
    image = np.asarray(image, dtype=np.float64)
    in_h, in_w = image.shape[1:3]

    def taps(out_size, in_size):
        source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
        index = source.astype(int)
        neighbour = np.where(index < in_size - 1, index + 1, index)
        return index, neighbour, source - index

    y0, y1, wy = taps(out_h, in_h)
    x0, x1, wx = taps(out_w, in_w)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    top = (1 - wx) * image[:, y0][:, :, x0] + wx * image[:, y0][:, :, x1]
    bottom = (1 - wx) * image[:, y1][:, :, x0] + wx * image[:, y1][:, :, x1]
    return (1 - wy) * top + wy * bottom


def make_tree(root, counts, fmt="aedat", seed=0, num_events=40):
    """A fake dataset: ``counts[name]`` recordings named ``cifar10_<name>_<i>`` per class.

    Returns the mapped events of every file, keyed by path.
    """
    rng = np.random.default_rng(seed)
    events = {}
    for name in dvs.CLASS_NAMES:
        for i in range(counts.get(name, 1)):
            raw = random_sensor_events(rng, num_events + i)
            mapped = spikingjelly_coordinates(**raw)
            if fmt == "aedat":
                path = root / name / f"cifar10_{name}_{i}.aedat"
                write_aedat(path, **raw)
            else:
                path = root / "events_np" / name / f"cifar10_{name}_{i}.npz"
                write_spikingjelly_npz(path, **mapped)
            events[path] = mapped
    return events


def expected_input(mapped):
    """The reference's test-time input for one recording, from independent code only."""
    counts = reference_frames(mapped["x"], mapped["y"], mapped["p"])
    return reference_resize(counts, 48, 48)


# ---- reading --------------------------------------------------------------------------------


def test_read_aedat_decodes_release_bits_with_spikingjelly_mapping(tmp_path, rng):
    raw = random_sensor_events(rng, 300)
    # Bits above 14 (here bit 15) are not part of a DVS128 address and are masked off.
    write_aedat(tmp_path / "a.aedat", **raw, extra_address_bits=1 << 15)
    events = dvs.read_aedat(tmp_path / "a.aedat")
    np.testing.assert_array_equal(events.t, raw["t"])
    np.testing.assert_array_equal(events.x, 127 - raw["sensor_y"])
    np.testing.assert_array_equal(events.y, 127 - raw["sensor_x"])
    np.testing.assert_array_equal(events.p, 1 - raw["polarity"])


def test_aedat_frames_match_independent_counts(tmp_path, rng):
    raw = random_sensor_events(rng, 16 * 70 + 11)  # N not divisible by 16
    write_aedat(tmp_path / "a.aedat", **raw)
    frames = dvs.events_to_frames(dvs.read_aedat(tmp_path / "a.aedat"))
    mapped = spikingjelly_coordinates(**raw)
    assert frames.shape == (16, 128, 128, 2) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, reference_frames(mapped["x"], mapped["y"], mapped["p"]))


def test_spikingjelly_npz_reads_as_the_same_events_as_aedat(tmp_path, rng):
    raw = random_sensor_events(rng, 500)
    write_aedat(tmp_path / "a.aedat", **raw)
    write_spikingjelly_npz(tmp_path / "a.npz", **spikingjelly_coordinates(**raw))
    from_aedat, from_npz = (
        dvs.read_events(tmp_path / "a.aedat"),
        dvs.read_events(tmp_path / "a.npz"),
    )
    for field in dvs.Events._fields:
        np.testing.assert_array_equal(getattr(from_aedat, field), getattr(from_npz, field))


def test_split_by_number_gives_equal_frames_and_the_remainder_to_the_last():
    np.testing.assert_array_equal(
        dvs.split_by_number(100, 16), [*range(0, 96, 6), 100]
    )  # 15 frames of 6, the last of 6 + 4
    np.testing.assert_array_equal(dvs.split_by_number(5, 16), [0] * 16 + [5])
    np.testing.assert_array_equal(dvs.split_by_number(0, 16), [0] * 17)


def test_frame_event_counts_follow_the_number_split(rng):
    n = 16 * 9 + 15
    events = dvs.Events(
        t=np.arange(n),
        x=rng.integers(0, 128, n),
        y=rng.integers(0, 128, n),
        p=rng.integers(0, 2, n),
    )
    per_frame = dvs.events_to_frames(events).sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(per_frame, [9] * 15 + [9 + 15])


def test_events_to_frames_puts_polarity_in_the_last_axis_and_rows_first():
    events = dvs.Events(
        t=np.zeros(3), x=np.array([5, 5, 7]), y=np.array([2, 2, 3]), p=np.array([0, 0, 1])
    )
    frames = dvs.events_to_frames(events, num_frames=1, sensor_size=8)
    assert frames[0, 2, 5, 0] == 2 and frames[0, 3, 7, 1] == 1 and frames.sum() == 3


@pytest.mark.parametrize(
    ("field", "value", "message"), [("x", 128, "x in"), ("y", -1, "y in"), ("p", 2, "p in")]
)
def test_events_to_frames_rejects_events_outside_the_sensor(field, value, message):
    columns = {key: np.zeros(4, dtype=np.int64) for key in dvs.Events._fields}
    columns[field][2] = value
    with pytest.raises(ValueError, match=message):
        dvs.events_to_frames(dvs.Events(**columns))


# ---- resize and crop ------------------------------------------------------------------------


@pytest.mark.parametrize(("in_hw", "out_hw"), [((128, 128), (48, 48)), ((5, 7), (8, 3))])
def test_resize_matches_pytorch_bilinear_rule(rng, in_hw, out_hw):
    # 128 → 48 is the reference's; 5 → 8 enlarges, where the source index clamps at both edges.
    frames = rng.integers(0, 6, (3, *in_hw, 2)).astype(np.float32)
    resized = dvs.resize_frames(frames, out_hw)
    assert resized.shape == (3, *out_hw, 2) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, reference_resize(frames, *out_hw), rtol=1e-6, atol=1e-6)


def test_resize_matches_torch_interpolate(rng):
    torch = pytest.importorskip("torch")
    frames = rng.integers(0, 9, (16, 128, 128, 2)).astype(np.float32)
    # SpikingJelly's frames are float64, so the reference resizes in float64 (torch's float32
    # kernel rounds the source positions and differs by up to about 1e-4 on counts like these).
    channel_first = torch.from_numpy(frames.astype(np.float64)).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        channel_first, size=(48, 48), mode="bilinear", align_corners=False, antialias=False
    )
    resized = dvs.resize_frames(frames, 48)
    assert resized.shape == (16, 48, 48, 2) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_resize_does_not_antialias():
    # Shrinking 128 → 48 samples rows (16i + 5)/6 and their lower neighbours; row 2 is never one
    # of them, so without antialiasing an event there does not reach the output.
    frames = np.zeros((1, 128, 128, 2), np.float32)
    frames[0, 2, 2, 0] = 1.0
    assert dvs.resize_frames(frames, 48).sum() == 0.0


def reference_crop(frames, dy, dx, padding=4):
    """Pixel (i, j) of the crop is input pixel (i + dy − padding, j + dx − padding), or zero."""
    _, height, width, _ = frames.shape
    out = np.zeros_like(frames)
    for i in range(height):
        for j in range(width):
            si, sj = i + dy - padding, j + dx - padding
            if 0 <= si < height and 0 <= sj < width:
                out[:, i, j] = frames[:, si, sj]
    return out


class FixedOffsets:
    """Stands in for the example's generator: the crop draws these offsets."""

    def __init__(self, dy, dx):
        self.offsets = np.array([dy, dx])

    def integers(self, low, high, size):
        assert (low, high, size) == (0, 2 * dvs.CROP_PADDING + 1, 2)
        return self.offsets


def crop(frames, rng):
    return data.DATASETS["cifar10_dvs"].train_transform(frames, rng)


@pytest.mark.parametrize("offsets", [(0, 0), (8, 8), (1, 7), (4, 4)])
def test_training_crop_cuts_one_zero_padded_window_for_all_frames(rng, offsets):
    frames = rng.random((16, 48, 48, 2)).astype(np.float32)
    cropped = crop(frames, FixedOffsets(*offsets))
    assert cropped.shape == frames.shape and cropped.dtype == frames.dtype
    np.testing.assert_array_equal(cropped, reference_crop(frames, *offsets))


def test_training_crop_draws_offsets_uniformly_from_0_to_8():
    # Each pixel's value names its position, so the crop's pixel (8, 8) reveals the offsets.
    frames = (np.arange(48 * 48, dtype=np.float32).reshape(1, 48, 48, 1) + 1).repeat(3, axis=0)
    frames = frames * np.arange(1, 4, dtype=np.float32)[:, None, None, None]
    generator = np.random.default_rng(1)
    seen = []
    for _ in range(300):
        cropped = crop(frames, generator)
        np.testing.assert_array_equal(cropped[1], 2 * cropped[0])  # same window in every frame
        position = int(cropped[0, 8, 8, 0]) - 1
        seen.append((position // 48 - 4, position % 48 - 4))
    dy, dx = np.array(seen).T
    assert set(dy) == set(range(9)) and set(dx) == set(range(9))
    assert abs(dy.mean() - 4) < 0.5 and abs(dx.mean() - 4) < 0.5


# ---- dataset tree, split and cache ----------------------------------------------------------


def test_samples_are_ordered_by_class_then_file_name_as_strings(tmp_path):
    make_tree(tmp_path, {"airplane": 11}, num_events=3)
    samples = dvs.list_samples(tmp_path)
    airplane = [s.path.stem.rsplit("_", 1)[1] for s in samples if s.label == 0]
    assert airplane == ["0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert [s.label for s in samples[11:]] == list(range(1, 10))
    assert [s.path.parent.name for s in samples[11:]] == list(dvs.CLASS_NAMES[1:])


def test_split_takes_the_first_ceil_90_percent_of_each_class(tmp_path):
    make_tree(tmp_path, {"airplane": 11, "bird": 10}, num_events=3)
    train, test = dvs.split_samples(dvs.list_samples(tmp_path))
    # airplane: ⌈9.9⌉ = 10 train and recording 9 (last as a string) for test; bird: 9 and 1;
    # the other classes have one recording, ⌈0.9⌉ = 1 for training.
    assert [s.path.name for s in test] == ["cifar10_airplane_9.aedat", "cifar10_bird_9.aedat"]
    assert len(train) == 10 + 1 + 9 + 7
    assert [s.label for s in train] == sorted(s.label for s in train)


def test_split_of_the_full_dataset_is_900_and_100_per_class():
    samples = [
        dvs.Sample(Path(f"cifar10_{name}_{i}.aedat"), label)
        for label, name in enumerate(dvs.CLASS_NAMES)
        for i in sorted(range(1000), key=str)
    ]
    train, test = dvs.split_samples(samples)
    assert len(train) == 9000 and len(test) == 1000
    assert np.bincount([s.label for s in test]).tolist() == [100] * 10
    # The last 100 names in string order, not recordings 0-99 as some later papers use.
    held_out = {int(s.path.stem.rsplit("_", 1)[1]) for s in test if s.label == 0}
    assert held_out == {909} | set(range(91, 100)) | set(range(910, 1000))


def test_frame_source_matches_independent_frames_for_the_release_layout(tmp_path):
    events = make_tree(tmp_path / "data", {"airplane": 11})
    train = dvs.FrameSource(tmp_path / "data", "train", tmp_path / "cache")
    test = dvs.FrameSource(tmp_path / "data", "test", tmp_path / "cache")
    assert (len(train), len(test)) == (19, 1)
    example = test[0]
    assert example["image"].shape == (16, 48, 48, 2) and example["image"].dtype == np.float32
    assert example["label"] == 0 and isinstance(example["label"], int)
    expected = expected_input(events[tmp_path / "data/airplane/cifar10_airplane_9.aedat"])
    np.testing.assert_allclose(example["image"], expected, rtol=1e-6, atol=1e-6)
    last = train[len(train) - 1]
    np.testing.assert_allclose(
        last["image"],
        expected_input(events[tmp_path / "data/truck/cifar10_truck_0.aedat"]),
        rtol=1e-6,
        atol=1e-6,
    )
    assert last["label"] == 9


def test_frame_source_reads_spikingjelly_events_np_layout(tmp_path):
    events = make_tree(tmp_path, {}, fmt="npz")
    source = dvs.FrameSource(tmp_path, "train")
    assert len(source) == 10 and source.frames_path.parent == dvs.default_cache_dir(tmp_path)
    np.testing.assert_allclose(
        source[3]["image"],
        expected_input(events[tmp_path / "events_np/cat/cifar10_cat_0.npz"]),
        rtol=1e-6,
        atol=1e-6,
    )


def test_second_build_reads_the_cache_without_the_dataset(tmp_path):
    make_tree(tmp_path / "data", {})
    first = dvs.FrameSource(tmp_path / "data", "train", tmp_path / "cache")[4]
    shutil.rmtree(tmp_path / "data")
    again = dvs.FrameSource(tmp_path / "data", "train", tmp_path / "cache")
    np.testing.assert_array_equal(again[4]["image"], first["image"])
    assert again[4]["label"] == first["label"] == 4


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    make_tree(tmp_path, {})
    calls = []

    def fail_on_third(path, *args):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros((16, 48, 48, 2), np.float32)

    monkeypatch.setattr(dvs, "recording_frames", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        dvs.build_frames(tmp_path, "train")
    assert not (dvs.default_cache_dir(tmp_path) / "train_frames.npy").exists()
    monkeypatch.undo()
    assert len(dvs.FrameSource(tmp_path, "train")) == 10


def test_frame_source_pickles_without_its_frames(tmp_path):
    make_tree(tmp_path, {"airplane": 30})
    source = dvs.FrameSource(tmp_path, "train")
    source[0]  # opens the memory map
    restored = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 4096
    np.testing.assert_array_equal(restored[20]["image"], source[20]["image"])


# ---- errors ---------------------------------------------------------------------------------


def test_missing_dataset_directory_says_where_and_what_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        dvs.FrameSource(tmp_path / "nowhere", "train")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "airplane" in message and "events_np" in message and "figshare" in message


def test_missing_class_folders_are_named(tmp_path):
    make_tree(tmp_path, {})
    shutil.rmtree(tmp_path / "frog")
    shutil.rmtree(tmp_path / "ship")
    with pytest.raises(FileNotFoundError, match="class folders missing: frog, ship"):
        dvs.list_samples(tmp_path)


def test_class_folder_without_event_files_is_an_error(tmp_path):
    make_tree(tmp_path, {})
    for path in (tmp_path / "dog").iterdir():
        path.unlink()
    (tmp_path / "dog" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no event file .* 'dog'.*\['\.txt'\]"):
        dvs.list_samples(tmp_path)


def test_an_empty_or_short_class_folder_stops_the_run_before_the_cache_is_built(tmp_path):
    make_tree(tmp_path, {name: 2 for name in dvs.CLASS_NAMES})
    (tmp_path / "dog" / "cifar10_dog_1.aedat").unlink()
    with pytest.raises(data.DatasetNotPreparedError, match=r"unequal .* deer 2, dog 1, frog 2"):
        data.check_prepared("cifar10_dvs", str(tmp_path))
    (tmp_path / "dog" / "cifar10_dog_0.aedat").unlink()
    with pytest.raises(data.DatasetNotPreparedError, match=r"no event file .* for class 'dog'"):
        data.check_prepared("cifar10_dvs", str(tmp_path))
    assert not dvs.default_cache_dir(tmp_path).exists()


def test_a_cache_built_from_a_short_class_is_refused(tmp_path):
    make_tree(tmp_path, {"airplane": 2})  # one recording of every other class
    for split in dvs.SPLITS:
        dvs.FrameSource(tmp_path, split)  # builds the default cache
    with pytest.raises(data.DatasetNotPreparedError, match=r"unequal .*airplane 2, .*Then delete"):
        data.check_prepared("cifar10_dvs", str(tmp_path))


def test_truncated_aedat_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.aedat"
    path.write_bytes(AEDAT_HEADER + bytes(8 * 3 + 5))
    with pytest.raises(ValueError, match=r"cut\.aedat has 29 bytes after its header"):
        dvs.read_aedat(path)


def test_npz_without_event_arrays_is_an_error(tmp_path):
    np.savez(tmp_path / "frames.npz", frames=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks the arrays \['t', 'x', 'y', 'p'\]"):
        dvs.read_events(tmp_path / "frames.npz")


def test_unknown_split_and_suffix_are_errors(tmp_path):
    with pytest.raises(ValueError, match="split 'train' or 'test', got 'val'"):
        dvs.build_frames(tmp_path, "val")
    with pytest.raises(ValueError, match=r"\.aedat or \.npz event file, got '\.aedat4'"):
        dvs.read_events(tmp_path / "x.aedat4")


def test_a_truncated_cache_stops_the_run_naming_the_file(tmp_path):
    make_tree(tmp_path, {})
    for split in dvs.SPLITS:
        dvs.FrameSource(tmp_path, split)  # builds the default cache
    frames = dvs.default_cache_dir(tmp_path) / "train_frames.npy"
    frames.write_bytes(frames.read_bytes()[:4096])
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.check_prepared("cifar10_dvs", str(tmp_path))
    assert str(frames) in str(error.value) and "delete" in str(error.value)
