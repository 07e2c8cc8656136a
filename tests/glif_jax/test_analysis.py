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


class Frames(nnx.Module):
    """A linear layer (5 → 2, with bias) on frames that change at every step, then GLIF."""

    def __init__(self):
        self.linear = nnx.Linear(5, 2, rngs=nnx.Rngs(0))
        self.lif = gnn.GLIF(2, T)

    def __call__(self, x):  # x: (B, T, 5), analog and different at each step
        return self.lif(self.linear(gnn.batch_major_to_time_major(x)))


def _frames_input():
    return jnp.arange(4 * T * 5, dtype=jnp.float32).reshape(4, T, 5) / 7 - 3


def test_an_analog_input_that_changes_over_time_costs_its_macs_at_every_step():
    x = _frames_input()
    report = analysis.analyze(Frames(), [x])
    linear = report["layers"][0]
    assert linear["macs"] == 10 and linear["dense_macs"] == T * 10
    assert report["totals"]["energy_j"] == pytest.approx(E_MAC * T * 10)


# ------------------------------------------------------------------------------------------------
# Memory traffic, counted by hand. Defaults: float32 (4 bytes) weights, activations and membranes,
# spike maps at 1 bit per neuron and step, 1.25 pJ per byte.

E_BYTE = analysis.ENERGY_PER_SRAM_BYTE_J

# The Probe, per image (T = 3; a frame is one image at one step):
# conv1: 1·1·2·2 = 4 weights (16 B); its analog input is the same at every step, so it runs once:
#   weights 16, input 4·4·2 = 32 values · 4 B = 128, output 32 · 4 B = 128.
#   ANN: the same, 16 + 128 + 128.
# lif: 2 neurons per pixel, 32 per frame; per step it reads 7 parameters per channel (alpha, beta,
#   gamma, tau, v_th, leak, v_reset) and its step's row of conduct: 8 · 2 = 16 values, 64 B:
#   weights 3 · 64 = 192, input 3 · 32 · 4 B = 384 (currents), membranes read and written
#   2 · 3 · 32 · 4 B = 768, output 3 · 32 spikes / 8 = 12.
#   ANN (a stateless activation without parameters): 0, input 128, output 128.
# conv2: 3·3·2·4 = 72 weights (288 B) at every step: weights 3 · 288 = 864, input 3 · 32 / 8 = 12
#   (spikes, whether they fired or not), output 3 · 4·4·4 = 64 values · 4 B = 768.
#   ANN: 288, 32 · 4 = 128, 64 · 4 = 256.
# bn: folded into conv2, nothing of its own.
# head: 2·3 = 6 weights (24 B) on the pooled spikes (2 values, read as spikes):
#   weights 3 · 24 = 72, input 3 · 2 / 8 = 0.75, output 3 · 3 · 4 B = 36. ANN: 24, 8, 12.
PROBE_BYTES = {  # (weights, input, membranes, output) of the SNN; (weights, input, output) ANN
    "conv1": ((16, 128, 0, 128), (16, 128, 128)),
    "lif": ((192, 384, 768, 12), (0, 128, 128)),
    "conv2": ((864, 12, 0, 768), (288, 128, 256)),
    "bn": ((0, 0, 0, 0), (0, 0, 0)),
    "head": ((72, 0.75, 0, 36), (24, 8, 12)),
}
PROBE_SNN_BYTES = 16 + 128 + 128 + 192 + 384 + 768 + 12 + 864 + 12 + 768 + 72 + 0.75 + 36
PROBE_ANN_BYTES = 16 + 128 + 128 + 0 + 128 + 128 + 288 + 128 + 256 + 24 + 8 + 12
SNN_PARTS = ("weight_bytes", "input_bytes", "state_bytes", "output_bytes")
ANN_PARTS = ("ann_weight_bytes", "ann_input_bytes", "ann_output_bytes")


@pytest.mark.parametrize("on_of_8", [8, 0, 3], ids=["all-on", "all-off", "fixed-pattern"])
def test_memory_traffic_equals_the_hand_count(on_of_8):
    # A spike map moves every neuron's bit, fired or not: the bytes do not depend on the rate,
    # the operations do.
    rate = on_of_8 / 8
    report = analysis.analyze(Probe(), [_pattern(on_of_8)])
    for entry in report["layers"]:
        snn, ann = PROBE_BYTES[entry["name"]]
        memory = entry["memory"]
        assert [memory[key] for key in SNN_PARTS] == pytest.approx(snn), entry["name"]
        assert [memory[key] for key in ANN_PARTS] == pytest.approx(ann), entry["name"]
        assert memory["bytes"] == pytest.approx(sum(snn))
        assert memory["ann_bytes"] == pytest.approx(sum(ann))
        assert memory["energy_j"] == pytest.approx(E_BYTE * sum(snn))
        assert memory["total_energy_j"] == pytest.approx(entry["energy_j"] + E_BYTE * sum(snn))
        ann_ops = E_MAC * entry["ann_macs"]
        assert memory["ann_total_energy_j"] == pytest.approx(ann_ops + E_BYTE * sum(ann))

    m = report["totals"]["memory"]
    assert m["weight_bytes"] == 16 + 192 + 864 + 72
    assert m["input_bytes"] == 128 + 384 + 12 + 0.75
    assert m["state_bytes"] == 768
    assert m["output_bytes"] == 128 + 12 + 768 + 36
    assert m["bytes"] == PROBE_SNN_BYTES == 3380.75
    assert (m["ann_weight_bytes"], m["ann_input_bytes"], m["ann_output_bytes"]) == (328, 392, 524)
    assert m["ann_bytes"] == PROBE_ANN_BYTES == 1244
    ops = E_MAC * 64 + E_AC * T * rate * 1158  # as test_every_count_equals_the_hand_computation
    assert m["total_energy_j"] == pytest.approx(ops + E_BYTE * 3380.75)
    assert m["ann_total_energy_j"] == pytest.approx(E_MAC * 1222 + E_BYTE * 1244)
    assert m["energy_ratio"] == pytest.approx(m["ann_total_energy_j"] / m["total_energy_j"])
    assert (m["energy_per_byte_j"], m["spike_bits"], m["value_bytes"]) == (E_BYTE, 1, None)


def test_the_byte_sizes_and_their_cost_are_arguments():
    # The Probe with a byte per spike and 2-byte values, at 1 J per byte:
    # conv1: 4 · 2 = 8, 32 · 2 = 64, 64 (ANN the same);
    # lif: 3 · 16 · 2 = 96, 3 · 32 · 2 = 192, membranes 2 · 3 · 32 · 2 = 384, 3 · 32 · 1 = 96
    #   (ANN 0, 64, 64);
    # conv2: 3 · 72 · 2 = 432, 3 · 32 · 1 = 96, 3 · 64 · 2 = 384 (ANN 144, 64, 128);
    # head: 3 · 6 · 2 = 36, 3 · 2 · 1 = 6, 3 · 3 · 2 = 18 (ANN 12, 4, 6).
    report = analysis.analyze(
        Probe(), [_pattern(4)], spike_bits=8, value_bytes=2, energy_per_byte_j=1.0
    )
    m = report["totals"]["memory"]
    assert [m[key] for key in SNN_PARTS] == [
        8 + 96 + 432 + 36,
        64 + 192 + 96 + 6,
        384,
        64 + 96 + 384 + 18,
    ]
    assert [m[key] for key in ANN_PARTS] == [8 + 144 + 12, 64 + 64 + 64 + 4, 64 + 64 + 128 + 6]
    assert m["energy_j"] == m["bytes"] == 572 + 358 + 384 + 562
    assert m["ann_energy_j"] == m["ann_bytes"] == 164 + 196 + 262
    assert (m["spike_bits"], m["value_bytes"], m["energy_per_byte_j"]) == (8, 2, 1.0)


def test_a_layer_on_analog_frames_reads_its_weights_at_every_step():
    # Frames, per image, T = 3: linear 5·2 + 2 = 12 weights (48 B) at every step: weights
    # 3 · 48 = 144, input 3 · 5 · 4 B = 60, output 3 · 2 · 4 B = 24 (ANN once: 48, 20, 8);
    # lif (2 neurons, 16 parameter values per step): 3 · 64 = 192, input 3 · 2 · 4 B = 24,
    # membranes 2 · 3 · 2 · 4 B = 48, output 3 · 2 / 8 = 0.75 (ANN: 0, 8, 8).
    report = analysis.analyze(Frames(), [_frames_input()])
    linear, lif = (entry["memory"] for entry in report["layers"])
    assert [linear[key] for key in SNN_PARTS] == [144, 60, 0, 24]
    assert [linear[key] for key in ANN_PARTS] == [48, 20, 8]
    assert [lif[key] for key in SNN_PARTS] == [192, 24, 48, 0.75]
    assert [lif[key] for key in ANN_PARTS] == [0, 8, 8]


# The report's fields before it counted memory traffic: the defaults leave them as they were.
LAYER_KEYS = {
    "name", "kind", "input_shape", "output_shape", "macs", "ann_macs", "spiking_input",
    "input_rate", "sops", "dense_macs", "energy_j",
}  # fmt: skip
GLIF_KEYS = {"rate_per_step", "rate"}
TOTAL_KEYS = {
    "time_steps", "examples", "macs", "ann_macs", "sops", "dense_macs", "energy_j",
    "ann_energy_j", "energy_ratio", "mean_rate", "energy_per_mac_j", "energy_per_ac_j",
}  # fmt: skip


def test_the_memory_count_leaves_every_operation_field_as_it_was():
    model = _tiny_cnn()
    images = 2.0 * jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    default = analysis.analyze(model, [images])
    other = analysis.analyze(
        model,
        [images],
        spike_bits=8,
        value_bytes=1,
        energy_per_byte_j=analysis.ENERGY_PER_DRAM_BYTE_J,
    )
    for entry, changed in zip(default["layers"], other["layers"], strict=True):
        old_keys = LAYER_KEYS | (GLIF_KEYS if entry["kind"] == "glif" else set())
        assert set(entry) == old_keys | {"memory"}, entry["name"]
        assert {k: entry[k] for k in old_keys} == {k: changed[k] for k in old_keys}
        assert entry["memory"] != changed["memory"] or entry["kind"] == "batch_norm"
    assert set(default["totals"]) == TOTAL_KEYS | {"memory"}
    assert {k: default["totals"][k] for k in TOTAL_KEYS} == {
        k: other["totals"][k] for k in TOTAL_KEYS
    }
    assert analysis.summary_table(default) == analysis.summary_table(other)


def test_the_tables_give_both_verdicts():
    report = analysis.analyze(Probe(), [_pattern(3)])
    verdicts = analysis.verdict_table(report).splitlines()
    assert verdicts[2].startswith("| operations only (E_MAC = 4.6 pJ, E_AC = 0.9 pJ) |")
    assert verdicts[3].startswith("| operations + memory (E_byte = 1.25 pJ; 1-bit spikes")
    ops = E_MAC * 1222 / (E_MAC * 64 + E_AC * T * 0.375 * 1158)
    assert verdicts[2].endswith(f"| SNN, {ops:.3g}× less |")
    rows = analysis.memory_table(report).splitlines()
    assert [row.split(" | ")[0] for row in rows[2:]] == [
        "| conv1", "| lif", "| conv2", "| head", "| **total**, T = 3",
    ]  # fmt: skip
    assert "| 0.75 B |" in rows[5] and "| 3.38 kB |" in rows[6]
    # Priced as DRAM, the weights read at every step cost the SNN more than the ANN.
    dram = analysis.analyze(
        Probe(), [_pattern(3)], energy_per_byte_j=analysis.ENERGY_PER_DRAM_BYTE_J
    )
    assert dram["totals"]["memory"]["energy_ratio"] < 1
    assert "| ANN, " in analysis.verdict_table(dram).splitlines()[3]


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
    for bad, match in [
        (dict(spike_bits=0), r"spike_bits must be a positive number .* got 0; use 1"),
        (dict(value_bytes=-1), r"value_bytes must be a positive number .* got -1"),
        (dict(energy_per_byte_j=-1.0), r"energy_per_byte_j must be a non-negative .* got -1"),
    ]:
        with pytest.raises(ValueError, match=match):
            analysis.analyze(Probe(), [_pattern(3)], **bad)


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


@pytest.mark.slow
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


@pytest.mark.slow
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
        assert head["memory"]["weight_bytes"] == head["memory"]["ann_weight_bytes"] > 0
    assert math.isfinite(t["energy_ratio"])
    m = t["memory"]
    for key in ("bytes", "ann_bytes", "state_bytes", "total_energy_j", "ann_total_energy_j"):
        assert m[key] == pytest.approx(sum(e["memory"][key] for e in report["layers"])), key
    neurons = sum(math.prod(e["output_shape"]) for e in report["layers"] if e["kind"] == "glif")
    assert m["state_bytes"] == 2 * steps * neurons * 4  # float32 membranes
    assert math.isfinite(m["energy_ratio"]) and m["total_energy_j"] > t["energy_j"]
