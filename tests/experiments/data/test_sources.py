"""Preparation checks and the on-disk path: tiny datasets written by tfds's own writer in
ArrayRecord format (PNG/JPEG decoding without TensorFlow), and what a missing dataset says."""

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments import data
from tests.support.image_oracles import CIFAR10_MEAN, CIFAR10_STD, reference_normalize

ROOT = Path(__file__).resolve().parents[3]


def collect(batches):
    batches = list(batches)
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def test_missing_dataset_error_names_dataset_directory_and_command(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.check_prepared("cifar10", str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert "'cifar10'" in message
    assert str(tmp_path / "cifar10") in message
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in message


def test_missing_imagenet_error_names_the_manual_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.check_prepared("imagenet2012", None)
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path} --file_format=array_record" in message


def test_digits_needs_no_preparation():
    data.check_prepared("digits", "/nonexistent")


def test_the_offline_default_never_imports_tensorflow_datasets():
    # In a fresh interpreter: this module imports tfds itself.
    program = (
        "import sys\n"
        "from experiments import analyze, data, main, train\n"
        "data.check_prepared('digits', None)\n"
        "next(data.train_batches('digits', data_dir=None, global_batch_size=8, seed=0, epoch=0))\n"
        "next(data.eval_batches('digits', data_dir=None, global_batch_size=8))\n"
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def encode(image, image_format):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def _png_examples(count, shape, seed):
    """``count`` examples of random ``shape`` uint8 images, PNG-encoded, labelled 0, 1, ..."""
    rng = np.random.default_rng(seed)
    return [
        {"id": str(i), "image": encode(rng.integers(0, 256, shape, np.uint8), "png"), "label": i}
        for i in range(count)
    ]


def write_tfds_dataset(name, data_dir, splits, image_shape=None):
    """Writes `splits` ({split: [example]}) with tfds's own ArrayRecord writer, as `tfds build`;
    with `image_shape`, as a build whose image feature had another shape."""
    dataset_name = name

    class Tiny(tfds.builder_cls(name), skip_registration=True):
        name = dataset_name
        code_path = None  # no checksums file to look for next to this test module

        def _info(self):
            info = super()._info()
            if image_shape is not None:
                features = dict(info.features)
                features["image"] = tfds.features.Image(shape=image_shape)
                info = tfds.core.DatasetInfo(
                    builder=self, features=tfds.features.FeaturesDict(features)
                )
            return info

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
    data.check_prepared(name, data_dir)
    info = data.dataset_info(name)
    train_batch = next(
        data.train_batches(name, data_dir=data_dir, global_batch_size=4, seed=0, epoch=0)
    )
    assert train_batch["image"].shape == (4, *info.image_shape)
    evaluated = collect(data.eval_batches(name, data_dir=data_dir, global_batch_size=4))
    assert evaluated["image"].shape == (4 * math.ceil(num_eval / 4), *info.image_shape)
    assert evaluated["mask"].sum() == num_eval
    assert np.isfinite(evaluated["image"]).all()


def test_prepared_cifar_eval_images_are_the_written_pixels_normalized(prepared):
    data_dir, pixels = prepared
    source = tfds.data_source("cifar10", split="test", data_dir=data_dir)
    ids = [ex["id"].decode() for ex in source]
    expected = reference_normalize(np.stack([pixels[i] for i in ids]), CIFAR10_MEAN, CIFAR10_STD)
    evaluated = collect(data.eval_batches("cifar10", data_dir=data_dir, global_batch_size=8))
    np.testing.assert_allclose(evaluated["image"][:5], expected, atol=1e-5)
    np.testing.assert_array_equal(evaluated["label"][:5], [int(i) for i in ids])


# --------------------------------------------------------------------------------------------
# Damaged datasets stop the run before anything is compiled, naming the file.


def _cifar_copy(prepared, tmp_path):
    data_dir, _ = prepared
    copy = tmp_path / "tfds"
    shutil.copytree(data_dir, copy)
    return copy


@pytest.mark.parametrize("alternatives", [[], ["array_record"]], ids=["tfrecord", "in_place"])
def test_a_tfrecord_dataset_is_told_to_convert_into_another_directory(
    prepared, tmp_path, alternatives
):
    """Built as TFRecord, or converted in place by ``tfds convert_format`` (TFRecord stays the
    format, ArrayRecord an alternative, which ``tfds.data_source`` does not read): the message
    gives the conversion into another data directory, and the ``data_dir`` to pass."""
    data_dir = _cifar_copy(prepared, tmp_path)
    (info_file,) = (data_dir / "cifar10").glob("*/dataset_info.json")
    info = json.loads(info_file.read_text())
    assert info["fileFormat"] == "array_record"
    info["fileFormat"], info["alternativeFileFormats"] = "tfrecord", alternatives
    info_file.write_text(json.dumps(info))
    with pytest.raises(data.DatasetNotPreparedError, match="it is there as tfrecord") as error:
        data.check_prepared("cifar10", str(data_dir))
    version = info_file.parent.name
    assert (
        f"--dataset_version_dir={data_dir}/cifar10/{version} --out_file_format=array_record "
        f"--out_dir={data_dir}_array_record/cifar10/{version}\n"
        f"  --config.data_dir={data_dir}_array_record"
    ) in str(error.value)


def test_a_truncated_file_is_named_before_anything_is_compiled(prepared, tmp_path, monkeypatch):
    from experiments import train
    from experiments.configs import cifar

    data_dir = _cifar_copy(prepared, tmp_path)
    shard = next((data_dir / "cifar10").glob("*/cifar10-train.array_record-*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    config = cifar.get_config("model=resnet19,dataset=cifar10,t=2")
    config.data_dir = str(data_dir)

    def no_compiling(*args, **kwargs):
        raise AssertionError("a model was built before the dataset check")

    monkeypatch.setattr(train, "Trainer", no_compiling)
    with pytest.raises(data.DatasetNotPreparedError, match="damaged") as error:
        train.train_and_evaluate(config, tmp_path / "run")
    assert str(shard) in str(error.value) and "tfds build cifar10" in str(error.value)


def test_a_missing_or_shorter_file_is_named(prepared, tmp_path):
    data_dir = _cifar_copy(prepared, tmp_path)
    test_shard = next((data_dir / "cifar10").glob("*/cifar10-test.array_record-*"))
    test_shard.unlink()
    with pytest.raises(data.DatasetNotPreparedError, match=r"cifar10-test\.array_record.*cannot"):
        data.check_prepared("cifar10", str(data_dir))
    # A whole file of another build, with fewer examples than this build wrote.
    other = tmp_path / "other"
    examples = _png_examples(2, (32, 32, 3), seed=2)
    write_tfds_dataset("cifar10", other, {"train": examples, "test": examples})
    shutil.copy(next((other / "cifar10").glob("*/cifar10-test.array_record-*")), test_shard)
    with pytest.raises(data.DatasetNotPreparedError, match="test split holds 2 examples, 5 were"):
        data.check_prepared("cifar10", str(data_dir))


def test_images_of_the_wrong_shape_are_named(tmp_path):
    examples = _png_examples(3, (28, 28, 3), seed=1)
    write_tfds_dataset("cifar10", tmp_path, {"train": examples, "test": examples}, (None, None, 3))
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.check_prepared("cifar10", str(tmp_path))
    message = str(error.value)
    assert "cifar10-train.array_record" in message
    assert "shape (28, 28, 3) and dtype uint8, expected (32, 32, 3) uint8" in message
