"""Reference checkpoint import and export (glif_jax.interop)."""

from __future__ import annotations

import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glif_jax import interop, models
from tests.support import reference_networks as reference
from tests.support.state_dicts import (
    manifest,
    manifest_layout,
    random_reference_state,
    to_torch,
)

torch = pytest.importorskip("torch")

MANIFEST = manifest()
BLOCK_STRIDES = {
    "resnet19": (1, 1, 1, 2, 1, 1, 2, 1),
    "resnet18": (1, 1, 1, 1, 2, 1, 2, 1),
    "ms_resnet18": (2, 1, 2, 1, 2, 1, 2, 1),
}
TINY = {
    "resnet19": dict(stem_channels=16, stage_channels=(16, 32, 32), head_width=32),
    "resnet18": dict(stem_channels=8, stage_channels=(8, 16, 16, 32), head_width=16),
    "ms_resnet18": dict(stem_channels=8, stage_channels=(8, 16, 16, 32), plain_bn=True),
    "sew_7b_widenet": dict(layer_list=((8, False), (8, True), (16, True)), input_size=16),
}
DVS_TINY_LAYERS = TINY["sew_7b_widenet"]["layer_list"]


def _abstract(name, **config):
    return nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0), **config))


def _tiny(name, time_steps=2, num_classes=10, **options):
    """A small network, abstract (``nnx.eval_shape``): a load fills it."""
    options = {**TINY[name], **options}
    return _abstract(name, num_classes=num_classes, time_steps=time_steps, **options)


def _state(model, seed=0):
    return random_reference_state(interop.reference_layout(model), seed=seed)


def _loaded(name, seed, **options):
    model = _tiny(name, **options)
    state = _state(model, seed)
    return interop.load_reference_state_dict(model, state), state


def _save(path, state, container):
    tensors = to_torch(state)
    if container == "net":  # the CIFAR10-DVS training script's checkpoint
        content = {
            "net": tensors,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9}]},
            "lr_scheduler": {"T_max": 64, "last_epoch": 169},
            "epoch": 168,
            "max_test_acc": 0.781,
        }
    else:
        content = {container: tensors}
    torch.save(content, path)


# ------------------------------------------------------------------------------------------------
# Layouts and the round trip


@pytest.mark.parametrize("file_name", list(MANIFEST))
def test_every_released_layout_is_the_one_of_the_matching_network(file_name):
    entry = MANIFEST[file_name]
    name, config = interop.reference_model_config(file_name)
    assert (config["num_classes"], config["time_steps"]) == (
        entry["num_classes"],
        entry["time_steps"],
    )
    expected = {key.removeprefix("module."): value for key, value in manifest_layout(entry).items()}
    layout = interop.reference_layout(_abstract(name, **config))
    assert list(layout) == list(expected)  # same names, in the same order
    assert layout == expected  # same shapes and dtypes


@pytest.mark.parametrize("file_name", list(MANIFEST))
def test_released_files_load_and_export_back_exactly(file_name, tmp_path):
    entry = MANIFEST[file_name]
    state = random_reference_state(manifest_layout(entry), seed=1)
    path = tmp_path / file_name.replace("/", "_")
    _save(path, state, entry["container"])
    name, config = interop.reference_model_config(file_name, state)
    # An abstract network is filled entirely by the load: no initialisation to pay for.
    model = interop.load_reference_checkpoint(path, _abstract(name, **config))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(model)))
    prefix = "module." if file_name.startswith("resnet18MS") else ""
    exported = interop.export_reference_state_dict(model, prefix=prefix)
    assert list(exported) == list(state)
    for key, value in state.items():
        assert exported[key].dtype == value.dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_load_reference_checkpoint_builds_the_network_from_the_file_name(tmp_path):
    file_name = "cifar10dvs/checkpoint_max.pth"
    state = random_reference_state(manifest_layout(MANIFEST[file_name]), seed=2)
    path = tmp_path / "cifar10dvs"
    path.mkdir()
    _save(path / "checkpoint_max.pth", state, "net")
    model = interop.load_reference_checkpoint(path / "checkpoint_max.pth")
    assert isinstance(model, models.SEWResNet) and model.time_steps == 16
    exported = interop.export_reference_state_dict(model)
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_loaded_values_land_in_the_matching_parameters():
    file_name = "resnet18MS-ImageNet-step6.pth.tar"
    state = random_reference_state(manifest_layout(MANIFEST[file_name]), seed=2)
    name, config = interop.reference_model_config(file_name)
    assert (name, config["plain_bn"]) == ("ms_resnet18", True)
    model = interop.load_reference_state_dict(_abstract(name, **config), state)
    # conv OIHW → HWIO, linear (out, in) → (in, out), reVth → v_reset, BN running statistics.
    np.testing.assert_array_equal(
        model.conv1.conv_bn.conv.kernel[...],
        state["module.conv1.0.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(model.head[0].kernel[...], state["module.lastave.0.weight"].T)
    np.testing.assert_array_equal(
        model.features[1].lif2.v_reset[...], state["module.features.1.body.2.reVth"]
    )
    np.testing.assert_array_equal(
        model.features[0].conv_bn1.bn.var[...], state["module.features.0.body.1.1.running_var"]
    )
    np.testing.assert_array_equal(
        model.features[0].conv_bn1.bn.num_batches_tracked[...],
        state["module.features.0.body.1.1.num_batches_tracked"],
    )


def test_dvs_checkpoint_loads_with_its_float64_gates_cast_to_float32(tmp_path):
    file_name = "cifar10dvs/checkpoint_max.pth"
    layout = manifest_layout(MANIFEST[file_name])
    state = random_reference_state(layout, seed=3)
    state["conv.0.1.alpha"] = np.linspace(-0.1, 0.1, 64)  # not representable in float32
    path = tmp_path / "checkpoint_max.pth"
    _save(path, state, "net")
    name, config = interop.reference_model_config(path)
    model = interop.load_reference_checkpoint(path, _abstract(name, **config))
    alpha = model.conv[0].lif.alpha[...]
    assert alpha.dtype == jnp.float32
    np.testing.assert_array_equal(alpha, state["conv.0.1.alpha"].astype(np.float32))
    assert interop.export_reference_state_dict(model)["conv.0.1.alpha"].dtype == np.float64


def test_tdbn_vth_buffer_is_exported_only_for_tdbn_layers():
    model, _ = _loaded("resnet19", seed=0)
    tdbn = interop.export_reference_state_dict(model)
    plain = interop.reference_layout(_tiny("resnet19", plain_bn=True))
    buffers = {key for key, value in tdbn.items() if key.endswith(".Vth") and value.shape == ()}
    assert len(buffers) == 25  # one per tdBN layer of ResNet-19
    assert set(tdbn) - set(plain) == buffers and set(plain) < set(tdbn)
    assert all(tdbn[key] == np.float32(0.5) and tdbn[key].dtype == np.float32 for key in buffers)
    assert tdbn["conv1.0.1.num_batches_tracked"].dtype == np.int64


def test_a_tdbn_vth_buffer_sets_the_scale_of_its_layer():
    model, state = _loaded("resnet19", seed=0)
    state["conv1.0.1.Vth"] = np.float32(0.99999)  # the CIFAR10-DVS code's tdBN constant
    interop.load_reference_state_dict(model, state)
    assert model.conv1.conv_bn.bn.v_th == pytest.approx(0.99999)
    assert interop.export_reference_state_dict(model)["conv1.0.1.Vth"] == np.float32(0.99999)


def test_layer_wise_and_fused_networks_have_the_reference_layouts():
    layer_wise = interop.reference_layout(_tiny("resnet19", channel_wise=False))
    assert layer_wise["conv1.1.alpha"] == ((), "float32")
    assert layer_wise["conv1.1.conduct"] == ((2,), "float32")
    fused, state = _loaded("resnet18", seed=0, mode="fused")
    assert fused.conv1.lif.gamma is None
    # The reference's GLIF_f keeps an unused gamma at its initial value logit(0.55).
    exported = interop.export_reference_state_dict(fused)
    np.testing.assert_allclose(exported["conv1.1.gamma"], np.log(0.55 / 0.45), rtol=1e-6)
    for key, value in state.items():
        if not key.endswith("gamma"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


# ------------------------------------------------------------------------------------------------
# Errors


def test_missing_and_unexpected_keys_are_named():
    model = _tiny("resnet19")
    state = _state(model)
    del state["features.2.lif.tau"]
    state["features.2.lif.tau_extra"] = np.zeros(32, np.float32)
    with pytest.raises(ValueError, match=r"missing keys \[features\.2\.lif\.tau\].*tau_extra"):
        interop.load_reference_state_dict(model, state)


def test_a_shape_mismatch_names_the_key_and_both_shapes():
    model = _tiny("resnet19")
    state = _state(model)
    state["features.3.body.0.0.weight"] = np.zeros((32, 16, 5, 5), np.float32)
    with pytest.raises(
        ValueError, match=r"features\.3\.body\.0\.0\.weight.*\(32, 16, 5, 5\).*\(32, 16, 3, 3\)"
    ):
        interop.load_reference_state_dict(model, state)


def test_a_checkpoint_for_another_time_step_count_is_named():
    state = _state(_tiny("resnet19", time_steps=4))
    with pytest.raises(ValueError, match=r"conv1\.1\.conduct.*\(4, 16\).*\(2, 16\).*time_steps"):
        interop.load_reference_state_dict(_tiny("resnet19", time_steps=2), state)


def test_nothing_is_written_when_a_check_fails():
    model, _ = _loaded("resnet19", seed=0)
    before = interop.export_reference_state_dict(model)
    state = {
        key: value + 1 if value.dtype == np.float32 else value for key, value in before.items()
    }
    state["lastave.1.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError):
        interop.load_reference_state_dict(model, state)
    after = interop.export_reference_state_dict(model)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_a_plain_bn_checkpoint_asks_for_a_plain_bn_network():
    plain_state = _state(_tiny("ms_resnet18"))
    with pytest.raises(ValueError, match="plain_bn=True"):
        interop.load_reference_state_dict(_tiny("ms_resnet18", plain_bn=False), plain_state)
    tdbn_state = _state(_tiny("ms_resnet18", plain_bn=False))
    with pytest.raises(ValueError, match="plain_bn=False"):
        interop.load_reference_state_dict(_tiny("ms_resnet18"), tdbn_state)


def test_plain_bn_is_detected_from_the_state_dict_of_a_cifar_checkpoint():
    layout = manifest_layout(MANIFEST["resCifar19-CIFAR10-step4-CW.pth.tar"])
    state = {k: v for k, v in random_reference_state(layout).items() if not k.endswith("1.Vth")}
    state = {k: v for k, v in state.items() if not (k.endswith(".Vth") and v.shape == ())}
    name, config = interop.reference_model_config("resCifar19-CIFAR10-step4-CW.pth.tar", state)
    assert (name, config["plain_bn"]) == ("resnet19", True)


def test_networks_without_a_reference_counterpart_are_refused():
    model = _abstract("spiking_cnn", num_classes=10, time_steps=2)
    with pytest.raises(TypeError, match="no reference layout for SpikingCNN"):
        interop.reference_layout(model)


def test_unknown_checkpoint_names_are_refused():
    with pytest.raises(ValueError, match="not a released reference checkpoint"):
        interop.reference_model_config("my-model.pth.tar")


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"epoch": 3, "accuracy": 0.5}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        interop.read_reference_checkpoint(path)


def test_reading_checkpoints_without_torch_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"glif_jax\[torch\]"):
        interop.read_reference_checkpoint(tmp_path / "x.pth")


def test_checkpoints_are_read_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"(?i)weights.only"):
        interop.read_reference_checkpoint(path)


# ------------------------------------------------------------------------------------------------
# Numerics against a PyTorch transcription of the reference


def _assert_logits_close(logits, expected):
    # float32 rounding is relative to the largest logit: the sums cancel.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=2e-6 * scale)
    assert np.std(expected) > 1e-3  # the comparison is not between constants


def _resnet_reference(name, state, images, training):
    stem = dict(stem_stride=2, stem_padding=1) if name == "ms_resnet18" else {}
    return reference.resnet_forward(
        to_torch(state),
        torch.from_numpy(images.transpose(0, 3, 1, 2)),
        time_steps=2,
        block_strides=BLOCK_STRIDES[name],
        membrane_shortcut=name == "ms_resnet18",
        training=training,
        **stem,
    )


@pytest.mark.parametrize(
    "name, size, training",
    [
        ("resnet19", 16, False),
        ("resnet19", 16, True),
        ("resnet18", 16, True),
        ("ms_resnet18", 32, False),
        ("ms_resnet18", 32, True),
    ],
)
@pytest.mark.slow
def test_loaded_resnet_gives_the_logits_of_the_pytorch_transcription(name, size, training):
    model, state = _loaded(name, seed=4)
    images = np.random.default_rng(5).normal(size=(2, size, size, 3)).astype(np.float32)
    if training:
        model.train()
    else:
        model.eval()
    logits = model(jnp.asarray(images))
    expected, updated = _resnet_reference(name, state, images, training)
    _assert_logits_close(logits, expected.numpy())
    exported = interop.export_reference_state_dict(model)
    for key, value in updated.items():  # the running statistics the reference stores
        np.testing.assert_allclose(exported[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert bool(updated) == training


@pytest.mark.slow
def test_loaded_resnet19_gives_the_loss_gradients_of_the_pytorch_transcription():
    model, state = _loaded("resnet19", seed=6)
    images = np.random.default_rng(7).normal(size=(2, 16, 16, 3)).astype(np.float32)
    labels = np.array([3, 8])

    def loss_fn(model):
        logits = model(jnp.asarray(images))
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(log_probs[jnp.arange(2), labels])

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    tensors = to_torch(state)
    params = [  # every trainable tensor: all but the running statistics and tdBN's Vth buffer
        key
        for key, value in tensors.items()
        if value.is_floating_point()
        and "running" not in key
        and not (key.endswith(".Vth") and value.ndim == 0)
    ]
    for key in params:
        tensors[key].requires_grad_(True)
    logits, _ = reference.resnet_forward(
        tensors,
        torch.from_numpy(images.transpose(0, 3, 1, 2)),
        time_steps=2,
        block_strides=BLOCK_STRIDES["resnet19"],
        training=True,
    )
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    expected_loss.backward()
    np.testing.assert_allclose(loss, expected_loss.item(), rtol=1e-5)
    # The gradients, in the reference's layout, through the exporter.
    nnx.update(model, grads)
    exported = interop.export_reference_state_dict(model)
    for key in params:
        expected = tensors[key].grad.numpy()
        scale = np.abs(expected).max() + 1e-8
        np.testing.assert_allclose(
            exported[key], expected, rtol=1e-3, atol=1e-4 * scale, err_msg=key
        )
    assert any(np.abs(tensors[k].grad.numpy()).max() > 0 for k in params if k.endswith("alpha"))


@pytest.mark.parametrize("training", [False, True])
def test_loaded_dvs_network_gives_the_logits_of_the_pytorch_transcription(training):
    model, state = _loaded("sew_7b_widenet", seed=8)
    frames = np.random.default_rng(9).poisson(0.5, size=(2, 2, 16, 16, 2)).astype(np.float32)
    if training:
        model.train()
    else:
        model.eval()
    logits = model(jnp.asarray(frames))
    # glif_jax computes the float64 gates of the CIFAR10-DVS code in float32 (docs/reference.md §6).
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in to_torch(state).items()}
    expected, updated = reference.sew_forward(
        tensors,
        torch.from_numpy(frames.transpose(0, 1, 4, 2, 3)),
        layer_list=DVS_TINY_LAYERS,
        training=training,
    )
    _assert_logits_close(logits, expected.numpy())
    exported = interop.export_reference_state_dict(model)
    for key, value in updated.items():
        np.testing.assert_allclose(exported[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
