"""The transforms against NumPy transcriptions of the reference's torchvision pipelines."""

import numpy as np
import pytest

from experiments import data
from experiments.data import transforms
from tests.support.image_oracles import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFERENCE_NORMALIZATION,
    ks_statistic,
    reference_normalize,
    reference_resize,
    reference_resized_crop_boxes,
    windows_of_padded,
)


def test_normalize_is_to_tensor_then_normalize(rng):
    pixels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    mean, std = REFERENCE_NORMALIZATION["cifar100"]
    out = transforms.normalize(pixels, mean, std)
    assert out.dtype == np.float32
    expected = reference_normalize(pixels, mean, std)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_pad_and_random_crop_takes_a_uniform_window_of_the_zero_padded_image(rng):
    image = rng.integers(1, 256, (5, 4, 2), dtype=np.uint8)  # no zeros: every window is unique
    windows = windows_of_padded(image, padding=2)
    counts = dict.fromkeys(windows, 0)
    for seed in range(2500):
        out = transforms.pad_and_random_crop(image, np.random.default_rng(seed), padding=2)
        (offset,) = [k for k, window in windows.items() if np.array_equal(out, window)]
        counts[offset] += 1
    # 25 offsets, 100 expected each (binomial std ≈ 9.8).
    assert min(counts.values()) > 60 and max(counts.values()) < 140


def test_pad_and_random_crop_moves_all_frames_of_a_clip_together(rng):
    clip = rng.integers(1, 256, (3, 6, 6, 2), dtype=np.uint8)
    windows = windows_of_padded(clip, padding=4)
    for seed in range(20):
        out = transforms.pad_and_random_crop(clip, np.random.default_rng(seed), padding=4)
        assert sum(np.array_equal(out, w) for w in windows.values()) == 1


def test_random_horizontal_flip_reverses_the_width_half_of_the_time(rng):
    image = rng.integers(0, 256, (3, 4, 2), dtype=np.uint8)
    flipped = 0
    for seed in range(2000):
        out = transforms.random_horizontal_flip(image, np.random.default_rng(seed))
        is_flipped = np.array_equal(out, image[:, ::-1])
        assert is_flipped or np.array_equal(out, image)
        flipped += is_flipped
    assert 900 < flipped < 1100


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_train_transform_is_pad_crop_then_flip_then_normalize(name, rng):
    mean, std = REFERENCE_NORMALIZATION[name]
    image = rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)
    candidates = [
        reference_normalize(w, mean, std)
        for window in windows_of_padded(image, padding=4).values()
        for w in (window, window[:, ::-1])
    ]
    transform = data.DATASETS[name].train_transform
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
    out = transforms.resize_bilinear(image, *size)
    assert out.shape == (*size, shape[-1]) and out.dtype == np.uint8
    # PIL rounds to uint8 after each of its two passes: at most one level off the exact value.
    assert np.abs(out - reference_resize(image, *size)).max() <= 1.0


@pytest.mark.parametrize(
    ("shape", "expected"), [((300, 451, 3), (256, 384)), ((451, 300, 3), (384, 256))]
)
def test_resize_shorter_side_truncates_the_longer_side(shape, expected, rng):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    out = transforms.resize_shorter_side(image, 256)
    assert out.shape[:2] == expected
    assert np.abs(out - reference_resize(image, *expected)).max() <= 1.0


def test_center_crop_rounds_half_offsets_to_even():
    image = np.arange(7 * 9).reshape(7, 9, 1)
    out = transforms.center_crop(image, 4)
    top, left = np.round((7 - 4) / 2), np.round((9 - 4) / 2)  # 1.5 → 2, 2.5 → 2
    np.testing.assert_array_equal(out, image[int(top) : int(top) + 4, int(left) : int(left) + 4])


def test_imagenet_eval_transform_is_resize_256_center_crop_224_normalize(rng):
    image = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    resized = reference_resize(image, 256, 384)
    expected = (resized[16:240, 80:304] / 255 - IMAGENET_MEAN) / IMAGENET_STD
    out = transforms.imagenet_eval_transform(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    one_level = 1 / 255 / min(IMAGENET_STD)
    assert np.abs(out - expected).max() <= one_level + 1e-5


def test_random_resized_crop_box_follows_torchvision_distribution():
    height, width, count = 300, 400, 3000
    boxes = np.array(
        [
            transforms.random_resized_crop_box(
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
        box = transforms.random_resized_crop_box(
            height, width, np.random.default_rng(seed), (0.2, 1.0), (3 / 4, 4 / 3)
        )
        assert box == expected


def test_random_resized_crop_resizes_the_sampled_box(rng):
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    top, left, h, w = transforms.random_resized_crop_box(
        120, 90, np.random.default_rng(3), (0.2, 1.0), (3 / 4, 4 / 3)
    )
    out = transforms.random_resized_crop(image, np.random.default_rng(3), 64, scale=(0.2, 1.0))
    expected = reference_resize(image[top : top + h, left : left + w], 64, 64)
    assert np.abs(out - expected).max() <= 1.0


def test_imagenet_train_transform_is_resized_crop_then_flip_then_normalize(rng):
    image = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    one_level = 1 / 255 / min(IMAGENET_STD)
    flips = []
    for seed in range(6):
        top, left, h, w = transforms.random_resized_crop_box(
            150, 200, np.random.default_rng(seed), (0.2, 1.0), (3 / 4, 4 / 3)
        )
        crop = reference_resize(image[top : top + h, left : left + w], 224, 224)
        out = transforms.imagenet_train_transform(image, np.random.default_rng(seed))
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        matches = [
            np.abs(out - (c / 255 - IMAGENET_MEAN) / IMAGENET_STD).max() <= one_level + 1e-5
            for c in (crop, crop[:, ::-1])
        ]
        assert sum(matches) == 1
        flips.append(matches[1])
    assert 0 < sum(flips) < len(flips)
