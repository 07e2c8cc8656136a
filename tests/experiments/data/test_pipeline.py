"""Batches: shapes, determinism, resumption and host sharding, with the tfds datasets faked by
``tfds.testing.mock_data`` (random examples behind ``tfds.data_source``)."""

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import data
from tests.support.image_oracles import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFERENCE_NORMALIZATION,
    reference_normalize,
    windows_of_padded,
)

# Examples per split of the mocked tfds datasets (digits is never mocked).
MOCK_SIZES = {"cifar10": 21, "cifar100": 40, "imagenet2012": 6}


def collect(batches):
    batches = list(batches)
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def train(name, global_batch_size, **kwargs):
    kwargs = {"data_dir": None, "seed": 9, "epoch": 0} | kwargs
    return list(data.train_batches(name, global_batch_size=global_batch_size, **kwargs))


def eval_all(name, global_batch_size, **kwargs):
    return list(
        data.eval_batches(name, data_dir=None, global_batch_size=global_batch_size, **kwargs)
    )


def assert_batches_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], e[key])


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012", "digits"])
def test_train_batches_have_the_declared_shapes_and_dtypes(name):
    info = data.dataset_info(name)
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
    mean, std = REFERENCE_NORMALIZATION["cifar100"]
    augmentations = []
    with tfds.testing.mock_data(num_examples=40):
        source = tfds.data_source("cifar100", split="train")
        images = collect(train("cifar100", 8, seed=5, epoch=2))["image"]
        for image, index in zip(images, data.epoch_order(5, 2, 40), strict=True):
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
    assert data.steps_per_epoch("cifar10", 64) == 781
    assert data.steps_per_epoch("imagenet2012", 400) == 3202
    assert data.steps_per_epoch("digits", 64) == 22


def test_global_batch_not_divisible_by_process_count_is_rejected():
    with pytest.raises(ValueError, match=r"global_batch_size \(10\).*process_count \(4\)"):
        data.train_batches(
            "digits", data_dir=None, global_batch_size=10, seed=0, epoch=0, process_count=4
        )
    with pytest.raises(ValueError, match=r"global_batch_size \(6\).*process_count \(4\)"):
        data.eval_batches("digits", data_dir=None, global_batch_size=6, process_count=4)


def test_bad_arguments_raise_eagerly_with_what_was_given():
    with pytest.raises(ValueError, match=r"'mnist'.*cifar10"):
        data.dataset_info("mnist")
    with pytest.raises(ValueError, match=r"start_step \(23\).*22 steps"):
        data.train_batches(
            "digits", data_dir=None, global_batch_size=64, seed=0, epoch=0, start_step=23
        )
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        data.train_batches("digits", data_dir=None, global_batch_size=64, seed=0.5, epoch=0)
    with pytest.raises(ValueError, match=r"process_index \(2\) must be < process_count \(2\)"):
        data.eval_batches(
            "digits", data_dir=None, global_batch_size=64, process_index=2, process_count=2
        )


def digits_split():
    """The reference's split, computed here: (digits, train indices, eval indices)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_idx, eval_idx = train_test_split(
        np.arange(1797), test_size=360, stratify=digits.target, random_state=0
    )
    return digits, train_idx, eval_idx


def test_digits_is_a_fixed_stratified_split_of_the_1797_bundled_images():
    digits, train_idx, eval_idx = digits_split()
    info = data.dataset_info("digits")
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
    batches = data.train_batches("digits", data_dir=None, global_batch_size=64, seed=0, epoch=0)
    order = data.epoch_order(0, 0, 1437)[:64]
    for image, index in zip(next(batches)["image"], order, strict=True):
        raw = np.rint((image * std + mean) * 16)
        windows = windows_of_padded(digits.images[train_idx[index], :, :, None], 1)
        assert any(np.array_equal(raw, w) for w in windows.values())
