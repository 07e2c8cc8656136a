"""Training end to end: data parallelism, exact resume, checkpoints, configs, multi-process."""

import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import checkpointing, data, main, recipe, train
from experiments.configs import ablations, cifar, cifar10_dvs, digits, imagenet
from experiments.settings import Settings
from tests.support import tiny_digits

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = "tests/support/tiny_digits.py"


@pytest.mark.slow
def test_run_writes_metrics_summary_records_and_plots(uninterrupted):
    workdir, summary, _, step = uninterrupted
    assert step == summary["steps"] == 2 * (1437 // 32)
    for name in (
        "metrics.jsonl",
        "summary.json",
        "learning_curve.png",
        "glif_params.npz",
        "glif_params.png",
    ):
        assert (workdir / name).exists(), name
    assert list((workdir / "tensorboard").iterdir())
    written = json.loads((workdir / "summary.json").read_text())
    for key in ("best_test_top1", "final_test_top1", "epochs", "steps", "wall_time_s", "devices"):
        assert key in written
    assert written["epochs"] == 2 and written["devices"] == jax.device_count()
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in records if r["split"] == "test"]
    assert [r["epoch"] for r in test] == [1, 2]
    assert written["best_test_top1"] == max(r["top1"] for r in test)
    train_lines = [r for r in records if r["split"] == "train"]
    for key in ("step", "epoch", "loss", "top1", "top5", "learning_rate", "images_per_s"):
        assert key in train_lines[0]
    # Both splits count epochs from 1: a step's train and test records name the same epoch.
    steps_per_epoch = step // 2
    assert all(r["epoch"] == (r["step"] - 1) // steps_per_epoch + 1 for r in train_lines)
    assert {r["epoch"] for r in train_lines} == {1, 2}
    with np.load(workdir / "glif_params.npz") as glif:
        np.testing.assert_array_equal(glif["epochs"], [0, 1, 2])
        layers = {k.rsplit("/", 1)[0] for k in glif.files if k != "epochs"}
        assert len(layers) == 2  # every GLIF layer, the first one included
        for layer in layers:
            for name in ("alpha", "beta", "gamma", "tau", "v_th", "leak", "v_reset", "conduct"):
                assert glif[f"{layer}/{name}"].shape[0] == 3
        assert not np.array_equal(glif[f"{layer}/v_th"][0], glif[f"{layer}/v_th"][2])


@pytest.mark.slow
def test_eval_mode_reads_latest_and_best(uninterrupted):
    workdir, summary, _, _ = uninterrupted
    config = tiny_digits.get_config()
    latest = train.evaluate(config, workdir)
    assert latest["top1"] == pytest.approx(summary["final_test_top1"])
    best = train.evaluate(config, workdir, checkpoint="best")
    assert best["top1"] == pytest.approx(summary["best_test_top1"])
    assert json.loads((workdir / "eval.json").read_text())["count"] == 360


@pytest.mark.slow
def test_checkpoint_from_another_config_is_an_error(uninterrupted):
    workdir = uninterrupted[0]
    config = tiny_digits.get_config()
    config.time_steps = 2
    with pytest.raises(
        checkpointing.CheckpointMismatchError, match=r"time_steps: checkpoint has 4, config has 2"
    ):
        train.train_and_evaluate(config, workdir)
    config = tiny_digits.get_config()
    config.model_options.channels = (4, 16)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="model_options"):
        train.evaluate(config, workdir)


def test_missing_dataset_stops_before_compiling(tmp_path, monkeypatch):
    config = cifar.get_config("model=resnet19,dataset=cifar10,t=4")
    config.data_dir = str(tmp_path / "tfds")

    def no_compiling(*args, **kwargs):
        raise AssertionError("a model was built before the dataset check")

    monkeypatch.setattr(train, "Trainer", no_compiling)
    with pytest.raises(data.DatasetNotPreparedError) as error:
        train.train_and_evaluate(config, tmp_path / "run")
    message = str(error.value)
    assert "cifar10" in message and str(tmp_path / "tfds") in message and "tfds build" in message


@pytest.mark.slow
def test_sharded_step_matches_single_device():
    config = tiny_digits.get_config()
    info = data.dataset_info("digits")
    batches = list(
        data.train_batches("digits", data_dir=None, global_batch_size=32, seed=0, epoch=0)
    )[:3]
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        trainer = train.Trainer(
            Settings.from_config(config), info.num_classes, 44, train.make_mesh(32, devices)
        )
        state = trainer.initial_state
        losses = []
        for batch in batches:
            state, metrics = trainer.train_step(state, trainer.to_device(batch))
            losses.append(float(metrics["loss"]))
        results.append((losses, jax.device_get(state)))
    assert len(jax.devices()) == 4
    (losses_1, state_1), (losses_4, state_4) = results
    np.testing.assert_allclose(losses_4, losses_1, rtol=1e-5)
    chex.assert_trees_all_close(state_4, state_1, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_an_epoch_traces_each_step_once_and_ends_with_the_analysis(tmp_path, monkeypatch, capsys):
    # Every batch of an epoch, the last evaluation batch (padded) included, has the shapes of the
    # first: the steps are traced once, not once per batch.
    monkeypatch.setattr(train, "train_step", chex.assert_max_traces(train.train_step, n=1))
    monkeypatch.setattr(train, "eval_step", chex.assert_max_traces(train.eval_step, n=1))
    config = tiny_digits.get_config()
    config.num_epochs = 1
    config.analyze_after_training = True
    summary = main.train_and_analyze(config, tmp_path)
    assert summary["steps"] == 1437 // 32
    # The run ends with its spike analysis (what `make demo` prints last).
    assert "spike activity over 360 test images" in capsys.readouterr().out
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["totals"]["examples"] == 360
    for name in ("analysis.md", "analysis_rates.png", "analysis_energy.png"):
        assert (tmp_path / name).exists()


CONFIG_ROWS = (
    [("digits", digits.get_config())]
    + [(f"cifar:{row}", cifar.get_config(row)) for row in cifar.ROWS]
    + [(f"imagenet:{row}", imagenet.get_config(row)) for row in imagenet.ROWS]
    + [(f"ablations:{row}", ablations.get_config(row)) for row in ablations.ROWS]
    + [("cifar10_dvs", cifar10_dvs.get_config())]
)


@pytest.mark.parametrize("name, config", CONFIG_ROWS, ids=[name for name, _ in CONFIG_ROWS])
def test_every_config_builds_its_model_and_optimizer_abstractly(name, config):
    info = data.dataset_info(config.dataset)
    model = nnx.eval_shape(
        lambda: Settings.from_config(config).network.build(info.num_classes, nnx.Rngs(0))
    )
    _, params, _ = nnx.split(model, nnx.Param, ...)
    tx = recipe.create_optimizer(Settings.from_config(config).recipe, params, steps_per_epoch=10)
    opt_state = jax.eval_shape(tx.init, params)
    assert jax.tree.leaves(opt_state)
    for key in (
        "dataset",
        "model",
        "time_steps",
        "batch_size",
        "num_epochs",
        "num_train_steps",
        "seed",
    ):
        assert key in config
    assert config.batch_size % 4 == 0 or name == "digits"


def test_config_docstrings_start_with_their_command():
    for module in (digits, cifar, imagenet, ablations, cifar10_dvs):
        command = module.__doc__.split("\n\n")[1].strip()
        assert command.startswith("python -m experiments.main --config=experiments/configs/")
        assert "Expected wall time" in module.__doc__


def test_unknown_config_key_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            f"--config={TINY_CONFIG}",
            f"--workdir={tmp_path}",
            "--config.lerning_rate=0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "lerning_rate" in result.stderr


@pytest.mark.slow
def test_run_on_mesh_of_4_devices_trains():
    """The default mesh spans the four fake devices; a short run on it learns."""
    config = tiny_digits.get_config()
    info = data.dataset_info("digits")
    trainer = train.Trainer(Settings.from_config(config), info.num_classes, 44, train.make_mesh(32))
    assert trainer.mesh.devices.size == 4
    state = trainer.initial_state
    batch = next(
        iter(data.train_batches("digits", data_dir=None, global_batch_size=32, seed=0, epoch=0))
    )
    first = None
    for _ in range(20):
        state, metrics = trainer.train_step(state, trainer.to_device(batch))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first
    assert jnp.isfinite(metrics["loss"])


@pytest.mark.slow
def test_eval_mode_evaluates_a_released_reference_checkpoint(tmp_path, monkeypatch):
    """``--mode=eval --reference_checkpoint=FILE``: a file in the released container format."""
    torch = pytest.importorskip("torch")
    import tensorflow_datasets as tfds

    from glif_jax import interop

    config = cifar.get_config("model=resnet19,dataset=cifar10,t=2")
    config.batch_size = 8
    released = Settings.from_config(config).network.build(10, nnx.Rngs(3))
    state_dict = interop.export_reference_state_dict(released)
    path = tmp_path / "resCifar19-CIFAR10-step2-CW.pth.tar"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, path)
    # mock_data stands in for a prepared dataset, which it does not write to disk.
    monkeypatch.setattr(data, "check_prepared", lambda name, data_dir: None)
    with tfds.testing.mock_data(num_examples=12):
        result = train.evaluate(config, tmp_path / "eval", reference_checkpoint=str(path))
        released.eval()
        correct = 0
        for batch in data.eval_batches("cifar10", data_dir=None, global_batch_size=8):
            predictions = np.argmax(released(batch["image"]), axis=-1)
            correct += int(np.sum((predictions == batch["label"]) & batch["mask"]))
    assert result["count"] == 12
    assert result["top1"] == pytest.approx(100 * correct / 12)
    assert result["source"] == str(path)
    # Saved as plain BN (no tdBN Vth), as the released ImageNet file: the error names the flag.
    plain = {k: torch.from_numpy(v) for k, v in state_dict.items() if not k.endswith(".Vth")}
    torch.save({"state_dict": plain}, path)
    with pytest.raises(
        checkpointing.CheckpointMismatchError,
        match=r"plain_bn=True, which the config sets with --config.model_options.plain_bn\.$",
    ):
        train.evaluate(config, tmp_path / "eval", reference_checkpoint=str(path))


def test_a_reference_checkpoint_the_network_cannot_take_is_a_mismatch(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "other.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(
        checkpointing.CheckpointCorruptError, match="cannot be read as a PyTorch checkpoint"
    ):
        train.evaluate(tiny_digits.get_config(), tmp_path / "eval", reference_checkpoint=str(path))
    with pytest.raises(train.NoCheckpointError, match=r"nowhere\.pth: no such file"):
        train.evaluate(
            tiny_digits.get_config(), tmp_path / "eval", reference_checkpoint="nowhere.pth"
        )
    torch.save({"state_dict": {"conv1.weight": torch.zeros(4, 1, 3, 3)}}, path)
    with pytest.raises(
        checkpointing.CheckpointMismatchError,
        match=r"other.pth does not fit the config's network: no reference layout for SpikingCNN",
    ):
        train.evaluate(tiny_digits.get_config(), tmp_path / "eval", reference_checkpoint=str(path))


def test_batch_not_divisible_by_devices_is_an_error():
    devices = jax.device_count()
    assert devices == 4  # tests/conftest.py fakes four CPU devices
    with pytest.raises(ValueError, match=r"batch_size=6 .* does not divide by the 4 devices"):
        train.make_mesh(6)
    assert train.make_mesh(8).devices.size == 4
