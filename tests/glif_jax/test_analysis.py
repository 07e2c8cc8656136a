"""The spike-activity and energy accounting against hand computations on networks whose spikes
are known, and the MACs of every network of the zoo against independent counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glif_jax import analysis, models
from glif_jax import nn as gnn

T = 3
E_MAC, E_AC = analysis.ENERGY_PER_MAC_J, analysis.ENERGY_PER_AC_J


class Probe(nnx.Module):
    """Images (B, 4, 4, 2) → direct encoding → conv1×1 (identity) → GLIF → conv3×3 → BN, and a
    linear layer on the spatial mean of the spikes. A current of ±10.3 (analog: no spike counts)
    makes every neuron fire at
    every step where the input is positive and never where it is negative."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.conv1 = nnx.Conv(2, 2, (1, 1), use_bias=False, rngs=rngs)
        self.conv1.kernel.set_value(jnp.eye(2).reshape(1, 1, 2, 2))
        self.lif = gnn.GLIF(2, T, gates=(0.9, 0.9, 0.9))
        self.conv2 = nnx.Conv(2, 4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn = gnn.TDBatchNorm(4, use_running_average=True)
        self.head = nnx.Linear(2, 3, use_bias=False, rngs=rngs)

    def __call__(self, images):
        x = gnn.direct_encode(images, T)
        spikes = self.lif(gnn.per_frame(self.conv1, x))
        gnn.per_frame(lambda f: self.bn(self.conv2(f)), spikes)
        return self.head(jnp.mean(spikes, axis=(2, 3)))


def _pattern(positive_fraction_of_8: int, batch: int = 2) -> jnp.ndarray:
    """Inputs ±10.3 whose first ``k`` of every 8 values are positive."""
    signs = np.where(np.arange(batch * 4 * 4 * 2) % 8 < positive_fraction_of_8, 10.3, -10.3)
    return jnp.asarray(signs.reshape(batch, 4, 4, 2), jnp.float32)


@pytest.mark.parametrize("on_of_8", [8, 0, 3], ids=["all-on", "all-off", "fixed-pattern"])
def test_every_count_equals_the_hand_computation(on_of_8):
    rate = on_of_8 / 8
    report = analysis.analyze(Probe(), [_pattern(on_of_8)])
    layers = {entry["name"]: entry for entry in report["layers"]}
    assert [entry["name"] for entry in report["layers"]] == ["conv1", "lif", "conv2", "bn", "head"]

    # conv1 on the analog current, the same at every step: its MACs once per image.
    conv1 = layers["conv1"]
    assert conv1["macs"] == 1 * 1 * 2 * 2 * 4 * 4
    assert not conv1["spiking_input"] and conv1["input_rate"] is None
    assert conv1["dense_macs"] == 64 and conv1["sops"] == 0
    assert conv1["energy_j"] == pytest.approx(E_MAC * 64)

    # The GLIF layer fires as its input says, at every step.
    assert layers["lif"]["rate_per_step"] == pytest.approx([rate] * T)
    assert layers["lif"]["rate"] == pytest.approx(rate)

    # conv2 on spikes: T · r · MACs accumulates.
    conv2 = layers["conv2"]
    assert conv2["macs"] == 3 * 3 * 2 * 4 * 4 * 4
    assert conv2["spiking_input"] and conv2["input_rate"] == pytest.approx(rate)
    assert conv2["sops"] == pytest.approx(T * rate * 1152)
    assert conv2["energy_j"] == pytest.approx(E_AC * T * rate * 1152)

    # The head on the spatial mean of the spikes (multiples of 1/16): spikes at the same rate.
    head = layers["head"]
    assert head["macs"] == 2 * 3 and head["spiking_input"]
    assert head["sops"] == pytest.approx(T * rate * 6)

    # BN is listed at zero operations.
    assert layers["bn"]["macs"] == layers["bn"]["energy_j"] == 0
    t = report["totals"]
    assert t["time_steps"] == T and t["examples"] == 2
    assert t["macs"] == t["ann_macs"] == 64 + 1152 + 6
    assert t["sops"] == pytest.approx(T * rate * (1152 + 6))
    assert t["dense_macs"] == 64
    assert t["energy_j"] == pytest.approx(E_MAC * 64 + E_AC * T * rate * 1158)
    assert t["ann_energy_j"] == pytest.approx(E_MAC * 1222)
    assert t["mean_rate"] == pytest.approx(rate)


def test_an_analog_input_that_changes_over_time_costs_its_macs_at_every_step():
    class Frames(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(5, 2, rngs=nnx.Rngs(0))
            self.lif = gnn.GLIF(2, T)

        def __call__(self, x):  # x: (B, T, 5), analog and different at each step
            return self.lif(self.linear(gnn.batch_major_to_time_major(x)))

    x = jnp.arange(4 * T * 5, dtype=jnp.float32).reshape(4, T, 5) / 7 - 3
    report = analysis.analyze(Frames(), [x])
    linear = report["layers"][0]
    assert linear["macs"] == 10 and linear["dense_macs"] == T * 10
    assert report["totals"]["energy_j"] == pytest.approx(E_MAC * T * 10)


def test_energy_constants_are_arguments():
    report = analysis.analyze(Probe(), [_pattern(4)], energy_per_mac_j=1.0, energy_per_ac_j=0.5)
    t = report["totals"]
    assert t["energy_j"] == pytest.approx(64 + 0.5 * T * 0.5 * 1158)
    assert t["energy_per_mac_j"] == 1.0 and t["energy_per_ac_j"] == 0.5


def _tiny_cnn():
    model = models.create(
        "spiking_cnn",
        num_classes=10,
        time_steps=4,
        rngs=nnx.Rngs(0),
        channels=(4, 8),
        implementation="scan",
    )
    model.eval()
    return model


def test_a_dataset_gives_the_counts_of_its_concatenated_batches():
    model = _tiny_cnn()
    images = 2.0 * jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
    whole = analysis.analyze(model, [images])
    parts = analysis.analyze(model, [images[:4], images[4:]])
    assert parts["totals"]["examples"] == 8
    for a, b in zip(whole["layers"], parts["layers"], strict=True):
        for key in ("macs", "sops", "dense_macs", "energy_j"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["name"], key)
        if "rate_per_step" in a:
            np.testing.assert_allclose(b["rate_per_step"], a["rate_per_step"], rtol=1e-5)
    assert 0 < whole["totals"]["mean_rate"] < 1


def test_the_analysis_leaves_the_layers_as_they_were():
    model = _tiny_cnn()
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    before = model(images)
    analysis.analyze(model, [images])
    np.testing.assert_array_equal(model(images), before)
    assert nnx.Conv.__call__.__qualname__ == "Conv.__call__"


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no batches"):
        analysis.analyze(Probe(), [])
    with pytest.raises(ValueError, match=r"no glif_jax\.nn\.GLIF layer"):
        analysis.analyze(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), [jnp.ones((1, 2))])


# ------------------------------------------------------------------------------------------------
# The zoo's MACs


ZOO = [
    ("resnet19", (1, 32, 32, 3), {}),
    ("resnet18", (1, 32, 32, 3), {}),
    ("cifarnet", (1, 32, 32, 3), {}),
    ("resnet34", (1, 224, 224, 3), {}),
    ("ms_resnet18", (1, 224, 224, 3), {}),
    ("ms_resnet34", (1, 224, 224, 3), {}),
    ("sew_7b_widenet", (1, 16, 48, 48, 2), {}),
    ("spiking_cnn", (1, 8, 8, 1), {}),
]
assert {name for name, _, _ in ZOO} == set(models.names())


def _abstract_model(name):
    steps = 16 if name == "sew_7b_widenet" else 4
    classes = 1000 if name in ("resnet34", "ms_resnet18", "ms_resnet34") else 10
    return nnx.eval_shape(
        lambda: models.create(name, num_classes=classes, time_steps=steps, rngs=nnx.Rngs(0))
    )


def _modules(model):
    return {".".join(map(str, path)): m for path, m in nnx.iter_modules(model)}


def test_every_convolution_of_the_zoo_counts_the_macs_xla_counts():
    # XLA's cost analysis of each convolution on its zero-padded input with VALID padding counts
    # 2 flops per multiply-accumulate of the convention (padding taps included); shapes only.
    checked = {}
    for name, input_shape, _ in ZOO:
        model = _abstract_model(name)
        modules = _modules(model)
        convs = [t for t in analysis.layer_table(model, input_shape) if t["kind"] == "conv"]
        assert convs, name
        for layer in convs:
            conv = modules[layer["name"]]
            key = (tuple(layer["input_shape"]), conv.kernel.get_value().shape, conv.strides)
            key += (conv.padding,)
            if key not in checked:
                checked[key] = _xla_conv_macs(conv, layer["input_shape"])
            assert layer["macs_per_frame"] == checked[key], (name, layer["name"])


def _xla_conv_macs(conv: nnx.Conv, input_shape) -> int:
    (top, bottom), (left, right) = conv.padding
    h, w, c = input_shape
    x = jax.ShapeDtypeStruct((1, h + top + bottom, w + left + right, c), jnp.float32)
    kernel = jax.ShapeDtypeStruct(conv.kernel.get_value().shape, jnp.float32)
    strides = conv.strides if isinstance(conv.strides, tuple) else (conv.strides,) * 2

    def run(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, strides, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    flops = jax.jit(run).lower(x, kernel).cost_analysis()["flops"]
    return round(flops / 2)


def test_resnet19_macs_equal_a_count_by_hand():
    # docs/reference.md §3.2: stem conv3×3 3→128 at 32×32; stages of 3, 3 and 2 blocks at 128,
    # 256, 512 channels and 32, 16, 8 pixels, each block two 3×3 convs, the first block of stages
    # 2 and 3 with stride 2 and a 1×1 shortcut conv; head 512→256→10.
    def conv(k, c_in, c_out, size):
        return k * k * c_in * c_out * size * size

    stem = conv(3, 3, 128, 32)
    stage1 = 3 * 2 * conv(3, 128, 128, 32)
    stage2 = conv(3, 128, 256, 16) + conv(3, 256, 256, 16) + conv(1, 128, 256, 16)
    stage2 += 2 * 2 * conv(3, 256, 256, 16)
    stage3 = conv(3, 256, 512, 8) + conv(3, 512, 512, 8) + conv(1, 256, 512, 8)
    stage3 += 2 * conv(3, 512, 512, 8)
    head = 512 * 256 + 256 * 10
    counted = analysis.count_macs(_abstract_model("resnet19"), (1, 32, 32, 3))
    convs = sum(macs for _, kind, macs in counted if kind == "conv")
    assert convs == stem + stage1 + stage2 + stage3 == 2_285_240_320
    assert sum(macs for _, _, macs in counted) == convs + head == 2_285_373_952
    assert len(counted) == 19 + 2


@pytest.mark.parametrize("name", models.names())
def test_every_network_of_the_zoo_is_analysed(name):
    # Tiny versions run; the full sizes are traced above. The DVS network sees event counts.
    tiny = {
        "resnet19": dict(stem_channels=4, stage_channels=(4, 8, 8), stage_repeats=(1, 1, 1)),
        "resnet18": dict(stem_channels=4, stage_channels=(4, 4, 8, 8), stage_repeats=(1,) * 4),
        "resnet34": dict(stage_channels=(4, 4, 8, 8), stage_repeats=(1,) * 4),
        "ms_resnet18": dict(stage_channels=(4, 4, 8, 8), stage_repeats=(1,) * 4),
        "ms_resnet34": dict(stage_channels=(4, 4, 8, 8), stage_repeats=(1,) * 4),
        "cifarnet": dict(features=(4, "A", 8), classifier_widths=(8,), input_size=8),
        "sew_7b_widenet": dict(layer_list=((4, True), (8, True)), input_size=8),
        "spiking_cnn": dict(channels=(4, 8)),
    }[name]
    steps = 2
    model = models.create(
        name, num_classes=3, time_steps=steps, rngs=nnx.Rngs(0), implementation="scan", **tiny
    )
    model.eval()
    if name == "sew_7b_widenet":
        shape = (2, steps, 8, 8, 2)
        inputs = jax.random.poisson(jax.random.key(0), 1.0, shape).astype(jnp.float32)
    else:
        size = {"spiking_cnn": 8, "cifarnet": 8, "resnet19": 16, "resnet18": 16}.get(name, 32)
        channels = 1 if name == "spiking_cnn" else 3
        inputs = jax.random.normal(jax.random.key(0), (2, size, size, channels))
    report = analysis.analyze(model, [inputs])
    kinds = [entry["kind"] for entry in report["layers"]]
    assert kinds.count("glif") == len(gnn.glif_layers(model))
    first = next(entry for entry in report["layers"] if entry["kind"] == "conv")
    assert first["spiking_input"] == (name == "sew_7b_widenet")  # event counts are spikes
    t = report["totals"]
    assert 0 <= t["mean_rate"] <= 1 and t["energy_j"] > 0
    assert t["ann_macs"] == pytest.approx(sum(e["ann_macs"] for e in report["layers"]))
    if name == "sew_7b_widenet":  # its head runs once per image, on the time average of the spikes
        head = report["layers"][-1]
        assert head["kind"] == "linear" and head["ann_macs"] == steps * head["macs"]
    assert math.isfinite(t["energy_ratio"])
