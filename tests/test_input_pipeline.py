"""Tests of experiments/input_pipeline.py against NumPy transcriptions of the reference's pipelines.

The tfds datasets are faked two ways: `tfds.testing.mock_data` (random examples behind
`tfds.data_source`) for the batching behaviour, and tiny datasets written by tfds's own writer in
ArrayRecord format for the on-disk path (preparation check, PNG/JPEG decoding without TensorFlow).
"""

import io
import math
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments import input_pipeline as ip

# Normalize(mean, std) of the reference's data_builder.py (spec §4.2).
SPEC_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": (
        tuple(np.array([129.3, 124.1, 112.4]) / 255),
        tuple(np.array([68.2, 65.4, 70.4]) / 255),
    ),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CIFAR10_MEAN, CIFAR10_STD = SPEC_NORMALIZATION["cifar10"]
IMAGENET_MEAN, IMAGENET_STD = SPEC_NORMALIZATION["imagenet2012"]
# Examples per split of the mocked tfds datasets (digits is never mocked).
MOCK_SIZES = {"cifar10": 21, "cifar100": 40, "imagenet2012": 6}


def collect(batches):
    batches = list(batches)
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def train(name, global_batch_size, **kwargs):
    kwargs = {"data_dir": None, "seed": 9, "epoch": 0} | kwargs
    return list(ip.train_batches(name, global_batch_size=global_batch_size, **kwargs))


def eval_all(name, global_batch_size, **kwargs):
    return list(ip.eval_batches(name, data_dir=None, global_batch_size=global_batch_size, **kwargs))


def assert_batches_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], e[key])


# --------------------------------------------------------------------------------------------
# Independent NumPy transcriptions of the spec (§4.2), float64.


def reference_normalize(pixels, mean, std, pixel_max=255.0):
    return (pixels.astype(np.float64) / pixel_max - np.array(mean)) / np.array(std)


def triangle_weights(in_size, out_size):
    """Bilinear resampling weights, widened by the shrink factor (antialiasing), rows sum to 1."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    taps = np.arange(in_size) + 0.5
    weights = np.clip(1 - np.abs(taps[None, :] - centres[:, None]) / support, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def reference_resize(image, height, width):
    rows = np.einsum("oh,hwc->owc", triangle_weights(image.shape[0], height), image.astype(float))
    return np.einsum("pw,owc->opc", triangle_weights(image.shape[1], width), rows)


def windows_of_padded(image, padding):
    """Every H×W window of the zero-padded image, keyed by its (top, left) offset."""
    height, width = image.shape[-3:-1]
    pad = [(0, 0)] * (image.ndim - 3) + [(padding, padding)] * 2 + [(0, 0)]
    padded = np.pad(image, pad)
    return {
        (top, left): padded[..., top : top + height, left : left + width, :]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    }


def ks_statistic(a, b):
    """Two-sample Kolmogorov–Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return np.abs(cdf_a - cdf_b).max()


def reference_resized_crop_boxes(height, width, rng, count, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop boxes, vectorised: the first of 10 draws that fits.

    Returns:
      (box_h, box_w, top, left), each of length `count`.
    """
    area = rng.uniform(*scale, size=(count, 10)) * height * width
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), size=(count, 10)))
    box_w = np.round(np.sqrt(area * aspect))
    box_h = np.round(np.sqrt(area / aspect))
    fits = (box_w <= width) & (box_h <= height)
    assert fits.any(axis=1).all()  # the fallback has negligible probability at these sizes
    first = fits.argmax(axis=1)
    box_h, box_w = box_h[np.arange(count), first], box_w[np.arange(count), first]
    top = rng.integers(0, height - box_h + 1)
    left = rng.integers(0, width - box_w + 1)
    return box_h, box_w, top, left


# --------------------------------------------------------------------------------------------
# Transforms.


def test_normalize_is_to_tensor_then_normalize(rng):
    pixels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    mean, std = SPEC_NORMALIZATION["cifar100"]
    out = ip.normalize(pixels, mean, std)
    assert out.dtype == np.float32
    expected = reference_normalize(pixels, mean, std)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_pad_and_random_crop_takes_a_uniform_window_of_the_zero_padded_image(rng):
    image = rng.integers(1, 256, (5, 4, 2), dtype=np.uint8)  # no zeros: every window is unique
    windows = windows_of_padded(image, padding=2)
    counts = dict.fromkeys(windows, 0)
    for seed in range(2500):
        out = ip.pad_and_random_crop(image, np.random.default_rng(seed), padding=2)
        (offset,) = [k for k, window in windows.items() if np.array_equal(out, window)]
        counts[offset] += 1
    # 25 offsets, 100 expected each (binomial std ≈ 9.8).
    assert min(counts.values()) > 60 and max(counts.values()) < 140


def test_pad_and_random_crop_moves_all_frames_of_a_clip_together(rng):
    clip = rng.integers(1, 256, (3, 6, 6, 2), dtype=np.uint8)
    windows = windows_of_padded(clip, padding=4)
    for seed in range(20):
        out = ip.pad_and_random_crop(clip, np.random.default_rng(seed), padding=4)
        assert sum(np.array_equal(out, w) for w in windows.values()) == 1


def test_random_horizontal_flip_reverses_the_width_half_of_the_time(rng):
    image = rng.integers(0, 256, (3, 4, 2), dtype=np.uint8)
    flipped = 0
    for seed in range(2000):
        out = ip.random_horizontal_flip(image, np.random.default_rng(seed))
        is_flipped = np.array_equal(out, image[:, ::-1])
        assert is_flipped or np.array_equal(out, image)
        flipped += is_flipped
    assert 900 < flipped < 1100


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_train_transform_is_pad_crop_then_flip_then_normalize(name, rng):
    mean, std = SPEC_NORMALIZATION[name]
    image = rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)
    candidates = [
        reference_normalize(w, mean, std)
        for window in windows_of_padded(image, padding=4).values()
        for w in (window, window[:, ::-1])
    ]
    transform = ip.DATASETS[name].train_transform
    for seed in range(10):
        out = transform(image, np.random.default_rng(seed))
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert sum(np.allclose(out, c, atol=1e-5) for c in candidates) == 1


@pytest.mark.parametrize(
    ("shape", "size"),
    [((37, 53, 3), (16, 20)), ((7, 9, 3), (20, 15)), ((37, 53, 1), (16, 20))],
    ids=["shrink", "enlarge", "one-channel"],
)
def test_resize_bilinear_matches_antialiased_triangle_filter(shape, size, rng):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    out = ip.resize_bilinear(image, *size)
    assert out.shape == (*size, shape[-1]) and out.dtype == np.uint8
    # PIL rounds to uint8 after each of its two passes: at most one level off the exact value.
    assert np.abs(out - reference_resize(image, *size)).max() <= 1.0


@pytest.mark.parametrize(
    ("shape", "expected"), [((300, 451, 3), (256, 384)), ((451, 300, 3), (384, 256))]
)
def test_resize_shorter_side_truncates_the_longer_side(shape, expected, rng):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    out = ip.resize_shorter_side(image, 256)
    assert out.shape[:2] == expected
    assert np.abs(out - reference_resize(image, *expected)).max() <= 1.0


def test_center_crop_rounds_half_offsets_to_even():
    image = np.arange(7 * 9).reshape(7, 9, 1)
    out = ip.center_crop(image, 4)
    top, left = np.round((7 - 4) / 2), np.round((9 - 4) / 2)  # 1.5 → 2, 2.5 → 2
    np.testing.assert_array_equal(out, image[int(top) : int(top) + 4, int(left) : int(left) + 4])


def test_imagenet_eval_transform_is_resize_256_center_crop_224_normalize(rng):
    image = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    resized = reference_resize(image, 256, 384)
    expected = (resized[16:240, 80:304] / 255 - IMAGENET_MEAN) / IMAGENET_STD
    out = ip.imagenet_eval_transform(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    one_level = 1 / 255 / min(IMAGENET_STD)
    assert np.abs(out - expected).max() <= one_level + 1e-5


def test_random_resized_crop_box_follows_torchvision_distribution():
    height, width, count = 300, 400, 3000
    boxes = np.array(
        [
            ip.random_resized_crop_box(
                height, width, np.random.default_rng(s), (0.2, 1.0), (3 / 4, 4 / 3)
            )
            for s in range(count)
        ]
    )
    top, left, box_h, box_w = boxes.T
    ref_h, ref_w, ref_top, ref_left = reference_resized_crop_boxes(
        height, width, np.random.default_rng(12345), count
    )
    # KS critical value at α = 0.001 for two samples of 3000: 1.95·sqrt(2/3000) ≈ 0.050.
    features = {
        "area": (box_h * box_w, ref_h * ref_w),
        "log aspect": (np.log(box_w / box_h), np.log(ref_w / ref_h)),
        "top": (top / np.maximum(height - box_h, 1), ref_top / np.maximum(height - ref_h, 1)),
        "left": (left / np.maximum(width - box_w, 1), ref_left / np.maximum(width - ref_w, 1)),
    }
    for feature, (ours, reference) in features.items():
        assert ks_statistic(ours, reference) < 0.05, feature
    assert (box_h * box_w >= 0.2 * height * width * 0.98).all()
    assert ((box_h <= height) & (box_w <= width) & (top + box_h <= height)).all()


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(100, 1000, (0, 433, 100, 133)), (1000, 100, (433, 0, 133, 100))],
    ids=["wide", "tall"],
)
def test_random_resized_crop_box_falls_back_to_the_clipped_centre_box(height, width, expected):
    # Every draw is taller (or wider) than the image, so all ten attempts fail.
    for seed in range(5):
        box = ip.random_resized_crop_box(
            height, width, np.random.default_rng(seed), (0.2, 1.0), (3 / 4, 4 / 3)
        )
        assert box == expected


def test_random_resized_crop_resizes_the_sampled_box(rng):
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    top, left, h, w = ip.random_resized_crop_box(
        120, 90, np.random.default_rng(3), (0.2, 1.0), (3 / 4, 4 / 3)
    )
    out = ip.random_resized_crop(image, np.random.default_rng(3), 64, scale=(0.2, 1.0))
    expected = reference_resize(image[top : top + h, left : left + w], 64, 64)
    assert np.abs(out - expected).max() <= 1.0


def test_imagenet_train_transform_is_resized_crop_then_flip_then_normalize(rng):
    image = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    one_level = 1 / 255 / min(IMAGENET_STD)
    flips = []
    for seed in range(6):
        top, left, h, w = ip.random_resized_crop_box(
            150, 200, np.random.default_rng(seed), (0.2, 1.0), (3 / 4, 4 / 3)
        )
        crop = reference_resize(image[top : top + h, left : left + w], 224, 224)
        out = ip.imagenet_train_transform(image, np.random.default_rng(seed))
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        matches = [
            np.abs(out - (c / 255 - IMAGENET_MEAN) / IMAGENET_STD).max() <= one_level + 1e-5
            for c in (crop, crop[:, ::-1])
        ]
        assert sum(matches) == 1
        flips.append(matches[1])
    assert 0 < sum(flips) < len(flips)


# --------------------------------------------------------------------------------------------
# Batches.


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012", "digits"])
def test_train_batches_have_the_declared_shapes_and_dtypes(name):
    info = ip.dataset_info(name)
    num_train = MOCK_SIZES.get(name, info.num_train)
    with tfds.testing.mock_data(num_examples=num_train):
        batches = train(name, 4)
    assert len(batches) == num_train // 4
    for batch in batches:
        assert batch.keys() == {"image", "label"}
        assert batch["image"].shape == (4, *info.image_shape)
        assert batch["image"].dtype == np.float32
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert ((batch["label"] >= 0) & (batch["label"] < info.num_classes)).all()


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("cifar10", CIFAR10_MEAN, CIFAR10_STD),
        ("imagenet2012", IMAGENET_MEAN, IMAGENET_STD),
    ],
)
def test_normalized_images_lie_in_the_normalized_pixel_range(name, mean, std):
    low, high = -np.array(mean) / std, (1 - np.array(mean)) / std
    with tfds.testing.mock_data(num_examples=MOCK_SIZES[name]):
        images = np.concatenate(
            [collect(train(name, 2))["image"], collect(eval_all(name, 2))["image"]]
        )
    assert (images >= low - 1e-5).all() and (images <= high + 1e-5).all()
    assert images.std() > 0.1  # not a constant or a pile of padding


def test_cifar_padding_is_black_before_normalization():
    black = -np.array(CIFAR10_MEAN) / CIFAR10_STD
    with tfds.testing.mock_data(num_examples=20):
        images = collect(train("cifar10", 20))["image"]
    is_black = np.isclose(images, black, atol=1e-5).all(axis=-1)
    border_rows = is_black.all(axis=2)[:, [0, -1]].any(axis=1)
    border_cols = is_black.all(axis=1)[:, [0, -1]].any(axis=1)
    # Each image is offset from the centre with probability 80/81.
    assert (border_rows | border_cols).sum() >= 15


def test_each_epoch_is_a_new_permutation_and_the_same_epoch_repeats():
    with tfds.testing.mock_data(num_examples=40):
        labels = np.array([ex["label"] for ex in tfds.data_source("cifar100", split="train")])
        epoch0 = train("cifar100", 8, epoch=0)
        epoch0_again = train("cifar100", 8, epoch=0)
        epoch1 = train("cifar100", 8, epoch=1)
    assert_batches_equal(epoch0_again, epoch0)
    order0, order1 = collect(epoch0)["label"], collect(epoch1)["label"]
    assert not np.array_equal(order0, order1)
    np.testing.assert_array_equal(np.sort(order0), np.sort(labels))
    np.testing.assert_array_equal(np.sort(order1), np.sort(labels))


def test_train_examples_follow_the_epoch_order_with_independent_augmentations():
    mean, std = SPEC_NORMALIZATION["cifar100"]
    augmentations = []
    with tfds.testing.mock_data(num_examples=40):
        source = tfds.data_source("cifar100", split="train")
        images = collect(train("cifar100", 8, seed=5, epoch=2))["image"]
        for image, index in zip(images, ip.epoch_order(5, 2, 40), strict=True):
            windows = windows_of_padded(source[int(index)]["image"], padding=4)
            (augmentation,) = [
                (offset, flip)
                for offset, window in windows.items()
                for flip in (False, True)
                if np.allclose(
                    image,
                    reference_normalize(window[:, ::-1] if flip else window, mean, std),
                    atol=1e-5,
                )
            ]
            augmentations.append(augmentation)
    # 162 equally likely (offset, flip) pairs: 40 independent draws give about 36 distinct ones.
    assert len(set(augmentations)) >= 25


def test_seed_changes_the_order():
    with tfds.testing.mock_data(num_examples=40):
        a = collect(train("cifar100", 8, seed=0))["label"]
        b = collect(train("cifar100", 8, seed=1))["label"]
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012", "digits"])
def test_resuming_at_start_step_yields_the_remaining_batches_of_the_epoch(name):
    with tfds.testing.mock_data(num_examples=MOCK_SIZES.get(name, 1)):
        full = train(name, 2, epoch=3)[:4]
        resumed = train(name, 2, epoch=3, start_step=2)[:2]
    assert_batches_equal(resumed, full[2:4])


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_together_see_the_single_host_train_batches(process_count):
    with tfds.testing.mock_data(num_examples=21):
        single = train("cifar10", 8, epoch=1)
        shards = [
            train("cifar10", 8, epoch=1, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
    for step, batch in enumerate(single):
        for key in batch:
            joined = np.concatenate([shard[step][key] for shard in shards])
            np.testing.assert_array_equal(joined, batch[key])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_in_order(process_count):
    with tfds.testing.mock_data(num_examples=21):
        source = tfds.data_source("cifar10", split="test")
        expected_images = reference_normalize(
            np.stack([ex["image"] for ex in source]), CIFAR10_MEAN, CIFAR10_STD
        )
        expected_labels = np.array([ex["label"] for ex in source])
        shards = [
            eval_all("cifar10", 8, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
    batches = [
        {key: np.concatenate([shard[step][key] for shard in shards]) for key in shards[0][step]}
        for step in range(len(shards[0]))
    ]
    assert len(batches) == math.ceil(21 / 8)
    for shard in shards:
        assert all(b["image"].shape == (8 // process_count, 32, 32, 3) for b in shard)
    joined = collect(batches)
    assert joined["mask"].dtype == np.bool_
    np.testing.assert_array_equal(joined["mask"], np.arange(24) < 21)
    np.testing.assert_allclose(joined["image"][:21], expected_images, atol=1e-5)
    np.testing.assert_array_equal(joined["label"][:21], expected_labels)
    assert not joined["image"][21:].any()


def test_steps_per_epoch_drops_the_last_partial_batch():
    assert ip.steps_per_epoch("cifar10", 64) == 781
    assert ip.steps_per_epoch("imagenet2012", 400) == 3202
    assert ip.steps_per_epoch("digits", 64) == 22


def test_global_batch_not_divisible_by_process_count_is_rejected():
    with pytest.raises(ValueError, match=r"global_batch_size \(10\).*process_count \(4\)"):
        ip.train_batches(
            "digits", data_dir=None, global_batch_size=10, seed=0, epoch=0, process_count=4
        )
    with pytest.raises(ValueError, match=r"global_batch_size \(6\).*process_count \(4\)"):
        ip.eval_batches("digits", data_dir=None, global_batch_size=6, process_count=4)


def test_bad_arguments_raise_eagerly_with_what_was_given():
    with pytest.raises(ValueError, match=r"'mnist'.*cifar10"):
        ip.dataset_info("mnist")
    with pytest.raises(ValueError, match=r"start_step \(23\).*22 steps"):
        ip.train_batches(
            "digits", data_dir=None, global_batch_size=64, seed=0, epoch=0, start_step=23
        )
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        ip.train_batches("digits", data_dir=None, global_batch_size=64, seed=0.5, epoch=0)
    with pytest.raises(ValueError, match=r"process_index \(2\) must be < process_count \(2\)"):
        ip.eval_batches(
            "digits", data_dir=None, global_batch_size=64, process_index=2, process_count=2
        )


# --------------------------------------------------------------------------------------------
# digits.


def digits_split():
    """The spec's split, computed here: (digits, train indices, eval indices)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_idx, eval_idx = train_test_split(
        np.arange(1797), test_size=360, stratify=digits.target, random_state=0
    )
    return digits, train_idx, eval_idx


def test_digits_is_a_fixed_stratified_split_of_the_1797_bundled_images():
    digits, train_idx, eval_idx = digits_split()
    info = ip.dataset_info("digits")
    assert (info.num_train, info.num_eval, info.image_shape) == (1437, 360, (8, 8, 1))
    scaled_train = digits.images[train_idx] / 16
    mean, std = scaled_train.mean(), scaled_train.std()

    batch = collect(eval_all("digits", 128))
    assert batch["mask"].sum() == 360
    np.testing.assert_array_equal(batch["label"][:360], digits.target[eval_idx])
    expected = (digits.images[eval_idx, :, :, None] / 16 - mean) / std
    np.testing.assert_allclose(batch["image"][:360], expected, atol=1e-5)
    class_share = np.bincount(digits.target, minlength=10) * 360 / 1797
    assert np.abs(np.bincount(batch["label"][:360], minlength=10) - class_share).max() <= 1


def test_digits_train_augmentation_shifts_by_at_most_one_pixel():
    digits, train_idx, _ = digits_split()
    scaled_train = digits.images[train_idx] / 16
    mean, std = scaled_train.mean(), scaled_train.std()
    batches = ip.train_batches("digits", data_dir=None, global_batch_size=64, seed=0, epoch=0)
    order = ip.epoch_order(0, 0, 1437)[:64]
    for image, index in zip(next(batches)["image"], order, strict=True):
        raw = np.rint((image * std + mean) * 16)
        windows = windows_of_padded(digits.images[train_idx[index], :, :, None], 1)
        assert any(np.array_equal(raw, w) for w in windows.values())


# --------------------------------------------------------------------------------------------
# Preparation and the on-disk path.


def test_missing_dataset_error_names_dataset_directory_and_command(tmp_path):
    with pytest.raises(ip.DatasetNotPreparedError) as error:
        ip.check_prepared("cifar10", str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert "'cifar10'" in message
    assert str(tmp_path / "cifar10") in message
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in message


def test_missing_imagenet_error_names_the_manual_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(ip.DatasetNotPreparedError) as error:
        ip.check_prepared("imagenet2012", None)
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path} --file_format=array_record" in message


def test_digits_needs_no_preparation():
    ip.check_prepared("digits", "/nonexistent")


def encode(image, image_format):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def write_tfds_dataset(name, data_dir, splits):
    """Writes `splits` ({split: [example]}) with tfds's own ArrayRecord writer, as `tfds build`."""
    dataset_name = name

    class Tiny(tfds.builder_cls(name), skip_registration=True):
        name = dataset_name
        code_path = None  # no checksums file to look for next to this test module

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            yield from enumerate(splits[split])

    config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    Tiny(data_dir=data_dir, file_format="array_record").download_and_prepare(download_config=config)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Tiny cifar10 and imagenet2012 in tfds's ArrayRecord layout: (data_dir, cifar10 test pixels).

    tfds shuffles examples when writing, so the test pixels are keyed by their "id".
    """
    data_dir = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    cifar_test_pixels = {
        str(i): rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(5)
    }

    def cifar(pixels):
        return [
            {"id": key, "image": encode(image, "png"), "label": int(key)}
            for key, image in pixels.items()
        ]

    def imagenet(count):
        return [
            {
                "file_name": f"{i}.JPEG",
                "image": encode(rng.integers(0, 256, (40 + i, 70 - i, 3), dtype=np.uint8), "jpeg"),
                "label": i,
            }
            for i in range(count)
        ]

    cifar_train_pixels = {
        str(i): rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(9)
    }
    write_tfds_dataset(
        "cifar10", data_dir, {"train": cifar(cifar_train_pixels), "test": cifar(cifar_test_pixels)}
    )
    write_tfds_dataset("imagenet2012", data_dir, {"train": imagenet(6), "validation": imagenet(3)})
    return str(data_dir), cifar_test_pixels


@pytest.mark.parametrize(("name", "num_eval"), [("cifar10", 5), ("imagenet2012", 3)])
def test_prepared_array_record_datasets_are_read_without_tensorflow(
    name, num_eval, prepared, monkeypatch
):
    data_dir, _ = prepared
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any TensorFlow import now fails
    ip.check_prepared(name, data_dir)
    info = ip.dataset_info(name)
    train_batch = next(
        ip.train_batches(name, data_dir=data_dir, global_batch_size=4, seed=0, epoch=0)
    )
    assert train_batch["image"].shape == (4, *info.image_shape)
    evaluated = collect(ip.eval_batches(name, data_dir=data_dir, global_batch_size=4))
    assert evaluated["image"].shape == (4 * math.ceil(num_eval / 4), *info.image_shape)
    assert evaluated["mask"].sum() == num_eval
    assert np.isfinite(evaluated["image"]).all()


def test_prepared_cifar_eval_images_are_the_written_pixels_normalized(prepared):
    data_dir, pixels = prepared
    source = tfds.data_source("cifar10", split="test", data_dir=data_dir)
    ids = [ex["id"].decode() for ex in source]
    expected = reference_normalize(np.stack([pixels[i] for i in ids]), CIFAR10_MEAN, CIFAR10_STD)
    evaluated = collect(ip.eval_batches("cifar10", data_dir=data_dir, global_batch_size=8))
    np.testing.assert_allclose(evaluated["image"][:5], expected, atol=1e-5)
    np.testing.assert_array_equal(evaluated["label"][:5], [int(i) for i in ids])
