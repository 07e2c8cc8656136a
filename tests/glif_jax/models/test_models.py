"""The paper's networks (glif_jax.models): sizes, structure, options, initialisation, behaviour."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glif_jax import models, surrogates
from glif_jax import nn as gnn

# Small versions for the behaviour tests (full sizes are checked through eval_shape). The ResNets
# keep one block per stage here (MS-ResNet-18 two in its first, for a membrane-shortcut block with
# the identity shortcut); their full depth is in the parameter-count tests.
TINY = {
    "resnet19": dict(
        stem_channels=8, stage_channels=(8, 16, 16), stage_repeats=(1, 1, 1), head_width=16
    ),
    "resnet18": dict(
        stem_channels=8, stage_channels=(8, 8, 16, 16), stage_repeats=(1, 1, 1, 1), head_width=16
    ),
    "cifarnet": dict(
        features=(8, 8, "A", 16, "A", 16, 8), classifier_widths=(16, 8), input_size=16
    ),
    "resnet34": dict(stem_channels=8, stage_channels=(8, 8, 16, 16), stage_repeats=(1, 1, 1, 1)),
    "ms_resnet18": dict(stem_channels=8, stage_channels=(8, 8, 16, 16), stage_repeats=(2, 1, 1, 1)),
    "ms_resnet34": dict(stem_channels=8, stage_channels=(8, 8, 16, 16), stage_repeats=(1, 1, 1, 1)),
    "sew_7b_widenet": dict(layer_list=((8, False), (8, True), (16, True)), input_size=16),
    "spiking_cnn": dict(channels=(8, 16, 16)),
}
FIRST_CONV = {  # path of the first convolution's kernel, where it is not conv1.conv_bn.conv
    "cifarnet": ("features", 0, "conv", "kernel"),
    "spiking_cnn": ("features", 0, "conv", "kernel"),
    "sew_7b_widenet": ("conv", 0, "conv_bn", "conv", "kernel"),
}
INPUT_SHAPES = {  # batch 2, T = 2
    "resnet19": (2, 16, 16, 3),
    "resnet18": (2, 16, 16, 3),
    "cifarnet": (2, 16, 16, 3),
    "resnet34": (2, 32, 32, 3),
    "ms_resnet18": (2, 32, 32, 3),
    "ms_resnet34": (2, 32, 32, 3),
    "sew_7b_widenet": (2, 2, 16, 16, 2),
    "spiking_cnn": (2, 8, 8, 1),
}


def _create(name, num_classes=10, time_steps=2, seed=0, **options):
    return models.create(
        name, num_classes=num_classes, time_steps=time_steps, rngs=nnx.Rngs(seed), **options
    )


def _abstract(name, num_classes, time_steps, **options):
    return nnx.eval_shape(lambda: _create(name, num_classes, time_steps, **options))


def _inputs(name, seed=0):
    return jax.random.normal(jax.random.key(seed), INPUT_SHAPES[name])


def _size(module) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def parameter_split(model) -> dict[str, int]:
    """Parameter counts by kind of layer, as docs/reference.md §3.8 (BN: weight and bias)."""
    kinds = {nnx.Conv: "conv", nnx.Linear: "linear", gnn.TDBatchNorm: "bn", gnn.GLIF: "glif"}
    split = dict.fromkeys(kinds.values(), 0)
    for _, module in nnx.iter_modules(model):
        for cls, kind in kinds.items():
            if isinstance(module, cls):
                split[kind] += _size(module)
    split["total"] = _size(model)
    return split


# ------------------------------------------------------------------------------------------------
# Sizes: docs/reference.md §3.8, every setting of the table


def _row(total, conv, linear, bn, glif):
    return dict(total=total, conv=conv, linear=linear, bn=bn, glif=glif)


PARAMETER_COUNTS = [
    # (name, classes, T, options, counts)
    ("resnet19", 10, 2, {}, _row(12_740_864, 12_553_600, 133_632, 13_312, 40_320)),
    ("resnet19", 10, 4, {}, _row(12_749_824, 12_553_600, 133_632, 13_312, 49_280)),
    ("resnet19", 10, 6, {}, _row(12_758_784, 12_553_600, 133_632, 13_312, 58_240)),
    ("resnet19", 100, 2, {}, _row(12_658_432, 12_553_600, 51_200, 13_312, 40_320)),
    ("resnet19", 100, 4, {}, _row(12_667_392, 12_553_600, 51_200, 13_312, 49_280)),
    ("resnet19", 100, 6, {}, _row(12_676_352, 12_553_600, 51_200, 13_312, 58_240)),
    ("resnet18", 10, 2, {}, _row(11_339_648, 11_159_232, 133_632, 11_648, 35_136)),
    ("resnet18", 10, 4, {}, _row(11_347_456, 11_159_232, 133_632, 11_648, 42_944)),
    ("resnet18", 10, 6, {}, _row(11_355_264, 11_159_232, 133_632, 11_648, 50_752)),
    ("resnet18", 100, 2, {}, _row(11_257_216, 11_159_232, 51_200, 11_648, 35_136)),
    ("resnet18", 100, 4, {}, _row(11_265_024, 11_159_232, 51_200, 11_648, 42_944)),
    ("resnet18", 100, 6, {}, _row(11_272_832, 11_159_232, 51_200, 11_648, 50_752)),
    ("ms_resnet18", 1000, 4, {}, _row(11_732_672, 11_171_008, 512_000, 11_648, 38_016)),
    ("ms_resnet18", 1000, 6, {}, _row(11_739_584, 11_171_008, 512_000, 11_648, 44_928)),
    ("ms_resnet34", 1000, 4, {}, _row(21_885_376, 21_271_744, 512_000, 22_784, 78_848)),
    ("ms_resnet34", 1000, 6, {}, _row(21_899_712, 21_271_744, 512_000, 22_784, 93_184)),
    ("resnet34", 1000, 4, {}, _row(21_890_304, 21_271_744, 512_000, 22_784, 83_776)),
    ("resnet34", 1000, 6, {}, _row(21_905_536, 21_271_744, 512_000, 22_784, 99_008)),
    ("cifarnet", 10, 2, {}, _row(45_025_792, 10_915_200, 34_083_840, 4_864, 21_888)),
    ("cifarnet", 10, 4, {}, _row(45_030_656, 10_915_200, 34_083_840, 4_864, 26_752)),
    ("cifarnet", 10, 6, {}, _row(45_035_520, 10_915_200, 34_083_840, 4_864, 31_616)),
    ("cifarnet", 100, 4, {}, _row(45_076_736, 10_915_200, 34_129_920, 4_864, 26_752)),
    ("sew_7b_widenet", 10, 16, {}, _row(1_236_298, 1_187_968, 11_530, 2_944, 33_856)),
    # Layer-wise GLIF (Table 6): 7 + T parameters per GLIF layer, 17 layers.
    (
        "resnet19",
        10,
        4,
        {"channel_wise": False},
        _row(12_700_731, 12_553_600, 133_632, 13_312, 187),
    ),
    # GLIF_f (Table 5): 4 + T per channel in glif_jax (no dead gamma), a single 512→n linear.
    ("resnet19", 10, 4, {"mode": "fused"}, _row(12_607_872, 12_553_600, 5_120, 13_312, 35_840)),
    ("resnet18", 10, 4, {"mode": "fused"}, _row(11_207_232, 11_159_232, 5_120, 11_648, 31_232)),
]


@pytest.mark.parametrize("name, num_classes, time_steps, options, expected", PARAMETER_COUNTS)
def test_parameter_counts_equal_the_reference(name, num_classes, time_steps, options, expected):
    model = _abstract(name, num_classes, time_steps, **options)
    assert parameter_split(model) == expected


@pytest.mark.parametrize(
    "name, glif_layers, glif_channels",
    [
        ("resnet19", 17, 4480),
        ("resnet18", 17, 3904),
        ("ms_resnet18", 17, 3456),
        ("ms_resnet34", 33, 7168),
        ("resnet34", 33, 7616),
        ("cifarnet", 5, 2432),
        ("sew_7b_widenet", 16, 1472),
    ],
)
def test_glif_layers_and_channels_equal_the_reference(name, glif_layers, glif_channels):
    model = _abstract(name, 10, 4)
    layers = gnn.glif_layers(model)
    assert len(layers) == glif_layers
    assert sum(layer.channels for layer in layers.values()) == glif_channels


def test_glif_f_has_four_plus_t_parameters_per_channel():
    for time_steps in (2, 6):
        model = _abstract("resnet19", 10, time_steps, mode="fused")
        for layer in gnn.glif_layers(model).values():
            assert _size(layer) == (4 + time_steps) * layer.channels
            assert layer.alpha is None and layer.beta is None and layer.gamma is None


# ------------------------------------------------------------------------------------------------
# Shapes at full size (no compilation)


@pytest.mark.parametrize(
    "name, num_classes, time_steps, input_shape",
    [
        ("resnet19", 10, 4, (2, 32, 32, 3)),
        ("resnet18", 100, 6, (2, 32, 32, 3)),
        ("cifarnet", 10, 2, (2, 32, 32, 3)),
        ("resnet34", 1000, 4, (2, 224, 224, 3)),
        ("ms_resnet18", 1000, 6, (2, 224, 224, 3)),
        ("ms_resnet34", 1000, 4, (2, 224, 224, 3)),
        ("sew_7b_widenet", 10, 16, (2, 16, 48, 48, 2)),
    ],
)
def test_full_size_networks_map_inputs_to_logits(name, num_classes, time_steps, input_shape):
    model = _abstract(name, num_classes, time_steps)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    logits = nnx.eval_shape(lambda m, x: m(x), model, x)
    per_step = nnx.eval_shape(lambda m, x: m(x, per_step=True), model, x)
    assert (logits.shape, logits.dtype) == ((2, num_classes), jnp.float32)
    assert per_step.shape == (time_steps, 2, num_classes)


def test_imagenet_stem_gives_110_by_110_maps_and_the_stages_halve_them():
    # 7×7 / stride 2 / padding 1 without max-pool (docs/reference.md §3.5, §5.9):
    # 224 → 110 → 55 → 28 → 14 → 7.
    model = _abstract("ms_resnet18", 1000, 4)
    x = jax.ShapeDtypeStruct((4, 1, 224, 224, 3), jnp.float32)
    stem = nnx.eval_shape(lambda m, x: m.conv1(x), model, x)
    assert stem.shape == (4, 1, 110, 110, 64)
    sizes, y = [], stem
    for block in model.features:
        y = nnx.eval_shape(lambda b, y: b(y), block, y)
        sizes.append(y.shape[2])
    assert sizes == [55, 55, 28, 28, 14, 14, 7, 7]


def test_resnet18_uses_the_reference_strides():
    # Strides [1, 1, 2, 2] (docs/reference.md §5.8): 32 → 32 → 32 → 16 → 8.
    model = _abstract("resnet18", 10, 2)
    y = jax.ShapeDtypeStruct((2, 1, 32, 32, 64), jnp.float32)
    sizes = []
    for block in model.features:
        y = nnx.eval_shape(lambda b, y: b(y), block, y)
        sizes.append((y.shape[2], y.shape[-1]))
    assert sizes == [
        (32, 64),
        (32, 64),
        (32, 128),
        (32, 128),
        (16, 256),
        (16, 256),
        (8, 512),
        (8, 512),
    ]


# ------------------------------------------------------------------------------------------------
# Structure


def test_residual_blocks_have_the_reference_structure():
    net = _abstract("resnet19", 10, 2)
    first, downsampling = net.features[0], net.features[3]
    # Same shape: the shortcut is tdBN(1/√2) on the input spikes, not a pure identity.
    assert isinstance(first.downsample, gnn.TDBatchNorm)
    assert first.downsample.alpha == pytest.approx(1 / math.sqrt(2))
    assert first.conv_bn1.bn.alpha == 1 and first.conv_bn2.bn.alpha == pytest.approx(2**-0.5)
    assert isinstance(downsampling.downsample, models.ConvBN)
    assert downsampling.downsample.conv.kernel.shape == (1, 1, 128, 256)
    assert downsampling.downsample.conv.strides == 2
    assert downsampling.conv_bn1.conv.strides == 2 and downsampling.conv_bn2.conv.strides == 1
    ms = _abstract("ms_resnet18", 1000, 2).features[0]
    assert isinstance(ms, models.MSBlock) and not hasattr(ms, "lif")
    assert ms.lif1.channels == 64 and isinstance(ms.downsample, models.ConvBN)


@pytest.mark.parametrize(
    "name, num_classes, options, head",
    [
        ("resnet19", 10, {}, [(512, 256), (256, 10)]),
        ("resnet19", 50, {}, [(512, 256), (256, 50)]),
        ("resnet19", 100, {}, [(512, 100)]),
        ("resnet19", 10, {"channel_wise": False}, [(512, 256), (256, 10)]),
        ("resnet19", 10, {"mode": "fused"}, [(512, 10)]),
        ("resnet18", 10, {}, [(512, 256), (256, 10)]),
        ("resnet18", 10, {"channel_wise": False}, [(512, 10)]),
        ("resnet18", 10, {"mode": "fused"}, [(512, 10)]),
        ("ms_resnet18", 10, {}, [(512, 256), (256, 10)]),
        ("resnet34", 10, {}, [(512, 10)]),
        ("resnet19", 100, {"two_layer_head": True}, [(512, 256), (256, 100)]),
    ],
)
def test_head_follows_the_reference_rule(name, num_classes, options, head):
    model = _abstract(name, num_classes, 2, **options)
    assert [layer.kernel.shape for layer in model.head] == head
    assert all(layer.bias is None for layer in model.head)


def test_dvs_network_has_the_cifar10dvs_layers_neuron_and_plain_bn():
    model = _abstract("sew_7b_widenet", 10, 16)
    kinds = [type(layer).__name__ for layer in model.conv]
    assert (
        kinds
        == ["ConvBNGLIF"]
        + ["SEWBlock"] * 4
        + ["AvgPool", "ConvBNGLIF"]
        + [
            "SEWBlock",
            "AvgPool",
        ]
        * 3
    )
    assert all(bn.plain for _, bn in nnx.iter_modules(model) if isinstance(bn, gnn.TDBatchNorm))
    assert model.out.kernel.shape == (1152, 10) and model.out.bias.shape == (10,)


# ------------------------------------------------------------------------------------------------
# Initialisation (docs/reference.md §3 conventions)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_initialisation_follows_the_reference():
    model = _create("resnet18", num_classes=10, time_steps=4)
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    for conv in convs:
        kernel = np.asarray(conv.kernel[...])
        height, width, _, c_out = kernel.shape
        std = math.sqrt(2 / (c_out * height * width))  # kaiming-normal, fan-out
        tolerance = 5 / math.sqrt(kernel.size)  # ≈ 3.5 standard errors of a std estimate
        assert abs(kernel.std() / std - 1) < tolerance
        assert abs(kernel.mean()) < 5 * std / math.sqrt(kernel.size)
    big = np.concatenate(
        [np.ravel(c.kernel[...]) for c in convs if c.kernel.shape[0::3] == (3, 512)]
    )
    # Untruncated: 4.55 % of a normal sample lies beyond 2σ (a truncated normal has none there).
    beyond = np.mean(np.abs(big) > 2 * math.sqrt(2 / (512 * 9)))
    assert 0.044 < beyond < 0.047
    for linear in model.head:
        kernel = np.asarray(linear.kernel[...])
        assert abs(kernel.std() / 0.01 - 1) < 5 / math.sqrt(kernel.size)
    for _, bn in nnx.iter_modules(model):
        if isinstance(bn, gnn.TDBatchNorm):
            assert np.all(bn.scale[...] == 1) and np.all(bn.bias[...] == 0)
            assert np.all(bn.mean[...] == 0) and np.all(bn.var[...] == 1)
            assert bn.num_batches_tracked[...] == 0
    gates, layers = [], gnn.glif_layers(model).values()
    for layer in layers:
        gates += [np.asarray(getattr(layer, g)[...]) for g in ("alpha", "beta", "gamma")]
        np.testing.assert_allclose(_sigmoid(layer.tau[...]), 0.25, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.v_th[...]), 0.5, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.leak[...]), 0.0625, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.v_reset[...]), 0.5, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.conduct[...]), 0.5, rtol=1e-6)
        assert layer.conduct.shape == (4, layer.channels)
    gates = np.concatenate(gates)
    # Random raw gates U(−0.1, 0.1), the reference's --randomgate, in float32.
    assert gates.dtype == np.float32 and gates.min() >= -0.1 and gates.max() < 0.1
    assert gates.min() < -0.099 and gates.max() > 0.099 and abs(gates.mean()) < 0.002
    assert len({float(g[0]) for g in gates.reshape(-1, 64)}) > 100  # every layer draws its own


def test_dvs_network_uses_pytorch_default_initialisation_and_its_neuron_constants():
    model = _create("sew_7b_widenet", num_classes=10, time_steps=16)
    for _, conv in nnx.iter_modules(model):
        if isinstance(conv, nnx.Conv):
            kernel = np.asarray(conv.kernel[...])
            bound = 1 / math.sqrt(math.prod(kernel.shape[:3]))  # kaiming_uniform(a=√5)
            assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
            assert abs(kernel.std() / (bound / math.sqrt(3)) - 1) < 5 / math.sqrt(kernel.size)
    bound = 1 / math.sqrt(1152)
    for array in (model.out.kernel[...], model.out.bias[...]):
        assert np.abs(array).max() <= bound and np.abs(array).max() > 0.5 * bound
    for layer in gnn.glif_layers(model).values():
        np.testing.assert_allclose(_sigmoid(layer.tau[...]), 0.5, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.v_th[...]), 0.99999, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.v_reset[...]), 0.99999, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.leak[...]), 0.99999 / 32, rtol=1e-5)
        np.testing.assert_allclose(_sigmoid(layer.conduct[...]), 0.9, rtol=1e-6)
        assert np.abs(layer.alpha[...]).max() < 0.1 and layer.alpha.dtype == jnp.float32


# ------------------------------------------------------------------------------------------------
# Forward and backward passes


def _loss_and_grads(model, x):
    """Per-step logits and the gradients of a loss whose gradient never vanishes: a fixed random
    projection of the logits."""
    direction = jax.random.normal(jax.random.key(1), (2, 10))

    @nnx.jit
    def step(model, x):
        def loss_fn(model):
            per_step = model(x, per_step=True)
            return jnp.sum(jnp.mean(per_step, axis=0) * direction), per_step

        return nnx.value_and_grad(loss_fn, has_aux=True)(model)

    return step(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_every_network_runs_forward_and_backward_on_a_tiny_input(name):
    # The scan time loop compiles fastest; the implementations agree (tests/glif_jax/kernels).
    model = _create(name, **TINY[name], implementation="scan")
    x = _inputs(name)
    (loss, per_step), grads = _loss_and_grads(model, x)
    chex.assert_shape(per_step, (2, 2, 10))  # (T, B, n) at the model's boundary
    chex.assert_type(per_step, jnp.float32)
    chex.assert_tree_all_finite((loss, per_step, grads))
    params = nnx.state(model, nnx.Param)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.tree.map(lambda v: v.get_value(), grads, is_leaf=lambda v: isinstance(v, nnx.Variable)),
        jax.tree.map(
            lambda v: v.get_value(), params, is_leaf=lambda v: isinstance(v, nnx.Variable)
        ),
    )
    # The surrogate gradient flows back through every layer to the first convolution.
    first_conv = grads
    for key in FIRST_CONV.get(name, ("conv1", "conv_bn", "conv", "kernel")):
        first_conv = first_conv[key]
    assert float(jnp.abs(first_conv.get_value()).max()) > 0
    # The training step updated the batch statistics of every BN layer once.
    counts = [
        int(bn.num_batches_tracked[...])
        for _, bn in nnx.iter_modules(model)
        if isinstance(bn, gnn.TDBatchNorm)
    ]
    assert counts and set(counts) == {1}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spiking_cnn", "sew_7b_widenet"])
def test_logits_are_the_readout_of_the_per_step_logits(name):
    model = _create(name, **TINY[name])
    model.eval()
    x = _inputs(name)
    logits, per_step = model(x), model(x, per_step=True)
    assert logits.shape == (2, 10) and per_step.shape == (2, 2, 10)
    # Static nets average their logits over T; the DVS net its features (the same up to rounding).
    np.testing.assert_allclose(logits, per_step.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_remat_gives_the_same_logits_and_gradients():
    x = _inputs("resnet19")
    results = []
    options = {**TINY["resnet19"], "implementation": "scan"}
    for remat in (False, True):
        model = _create("resnet19", **options, remat=remat)
        (_, per_step), grads = _loss_and_grads(model, x)
        results.append((per_step, grads, nnx.state(model, nnx.BatchStat)))
    (logits, grads, stats), (logits_remat, grads_remat, stats_remat) = results
    # The forward pass is the same computation: bit for bit. The backward pass recomputes it and
    # XLA fuses it differently: the gradients agree to float32 rounding.
    np.testing.assert_array_equal(logits_remat, logits)
    jax.tree.map(np.testing.assert_array_equal, stats_remat, stats)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_train_and_eval_switch_the_batch_statistics():
    model = _create("spiking_cnn", **TINY["spiking_cnn"])
    x = _inputs("spiking_cnn")
    norms = [bn for _, bn in nnx.iter_modules(model) if isinstance(bn, gnn.TDBatchNorm)]
    model.eval()
    assert all(bn.use_running_average for bn in norms)
    model(x)
    assert all(int(bn.num_batches_tracked[...]) == 0 for bn in norms)
    assert all(np.all(bn.mean[...] == 0) for bn in norms)
    model.train()
    assert not any(bn.use_running_average for bn in norms)
    model(x)
    assert all(int(bn.num_batches_tracked[...]) == 1 for bn in norms)
    assert all(np.any(bn.mean[...] != 0) for bn in norms)


@pytest.mark.parametrize("name", models.names())
def test_firing_rates_are_recorded_for_every_glif_layer(name):
    model = _create(name, **TINY[name])
    model.eval()
    x = _inputs(name)
    logits, rates = gnn.firing_rates(model, x)
    assert list(rates) == list(gnn.glif_layers(model))
    assert all(0 <= float(rate) <= 1 for rate in rates.values())
    assert any(float(rate) > 0 for rate in rates.values())
    np.testing.assert_array_equal(logits, model(x))


def test_bfloat16_computes_convolutions_in_bfloat16_with_float32_parameters():
    model = _create("spiking_cnn", **TINY["spiking_cnn"], dtype=jnp.bfloat16)
    x = _inputs("spiking_cnn")
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))
    convolutions = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
    assert convolutions and all("bf16" in line.split("=")[0] for line in convolutions)
    logits = model(x)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


# ------------------------------------------------------------------------------------------------
# Neuron options


def test_layer_wise_option_gives_one_parameter_set_per_layer():
    model = _abstract("resnet19", 10, 4, channel_wise=False)
    for layer in gnn.glif_layers(model).values():
        assert layer.tau.shape == () and layer.alpha.shape == () and layer.conduct.shape == (4,)


def test_simplex_option_sets_binary_gates_and_the_static_hard_mode():
    model = _create("spiking_cnn", **TINY["spiking_cnn"], simplex="101")
    for layer in gnn.glif_layers(model).values():
        assert layer.mode == "static_hard"
        assert np.all(layer.alpha[...] > 0) and np.all(layer.beta[...] < 0)
        assert np.all(layer.gamma[...] > 0)


def test_explicit_gates_go_through_the_reference_mapping():
    model = _create("spiking_cnn", **TINY["spiking_cnn"], gates=(0.6, 0.8, 0.6))
    for layer in gnn.glif_layers(model).values():
        np.testing.assert_allclose(_sigmoid(layer.alpha[...]), 0.55, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.beta[...]), 0.65, rtol=1e-6)
        np.testing.assert_allclose(_sigmoid(layer.gamma[...]), 0.55, rtol=1e-6)


def test_glif_options_reach_every_glif_layer():
    model = _abstract(
        "cifarnet",
        10,
        4,
        mode="hard",
        surrogate="atan",
        detach_reset=True,
        implementation="scan",
        leak="scaled",
        tau=0.5,
    )
    for layer in gnn.glif_layers(model).values():
        assert layer.mode == "hard" and layer.detach_reset and layer.implementation == "scan"
        assert layer.surrogate == surrogates.atan()
    # leak V_th/(2T) = 0.0625 at T = 4 and τ = 0.5 are only seen in values: build one concretely.
    layer = _create("spiking_cnn", **TINY["spiking_cnn"], time_steps=8, leak="scaled").features[1]
    np.testing.assert_allclose(_sigmoid(layer.leak[...]), 0.5 / 16, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Registry and errors


def test_registry_names_every_network():
    assert models.names() == (
        "resnet19",
        "resnet18",
        "cifarnet",
        "resnet34",
        "ms_resnet18",
        "ms_resnet34",
        "sew_7b_widenet",
        "spiking_cnn",
    )
    assert {"channel_wise", "mode", "simplex", "plain_bn", "remat", "dtype"} <= set(
        models.options("resnet19")
    )
    assert "plain_bn" not in models.options("sew_7b_widenet")  # always plain BN


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*resnet19.*spiking_cnn"):
        _create("resnet50")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht'\].*channel_wise"):
        _create("resnet19", widht=2)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mode": "gated"}, "unknown GLIF mode"),
        ({"gates": "uniform"}, "gates must be 'random'"),
        ({"gates": (0.5, 0.5)}, "three values"),
        ({"simplex": "12"}, "code must be three characters"),
        ({"simplex": "101", "mode": "fused"}, "simplex='101' fixes the gates"),
        ({"surrogate": "relu"}, "relu"),
        ({"tau": 1.5}, "tau"),
        ({"implementation": "cuda"}, "unknown implementation"),
    ],
)
def test_invalid_glif_options_are_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        _abstract("spiking_cnn", 10, 2, **options)


def test_invalid_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="time_steps must be a positive int"):
        _abstract("resnet19", 10, 0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        _abstract("resnet19", 0, 4)
    with pytest.raises(ValueError, match="cannot pool 12×12"):
        _abstract("spiking_cnn", 10, 4, input_size=12)


@pytest.mark.parametrize(
    "name, shape, dtype, match",
    [
        ("resnet19", (2, 16, 16), jnp.float32, r"expected inputs \(B, H, W, C\) with C=3"),
        ("resnet19", (2, 16, 16, 1), jnp.float32, "C=3"),
        ("resnet19", (2, 3, 16, 16), jnp.float32, "C=3"),  # channel-first
        ("resnet19", (2, 16, 16, 3), jnp.int32, "floating-point"),
        ("cifarnet", (2, 32, 32, 3), jnp.float32, "expected 16×16 inputs"),
        ("sew_7b_widenet", (2, 3, 16, 16, 2), jnp.float32, "expected T=2 frames"),
        ("sew_7b_widenet", (2, 16, 16, 2), jnp.float32, r"\(B, T, H, W, C\)"),
        ("sew_7b_widenet", (2, 2, 16, 16, 2), jnp.uint8, "floating-point"),
        ("spiking_cnn", (2, 16, 16, 1), jnp.float32, "expected 8×8 inputs"),
    ],
)
def test_bad_inputs_are_clear_errors(name, shape, dtype, match):
    model = _abstract(name, 10, 2, **TINY[name])
    error = TypeError if jnp.issubdtype(dtype, jnp.integer) else ValueError
    with pytest.raises(error, match=match):
        nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct(shape, dtype))
