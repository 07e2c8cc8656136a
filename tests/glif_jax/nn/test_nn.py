"""NNX layers: the GLIF module, tdBN against a NumPy transcription of docs/reference.md §2.1,
time helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glif_jax import neuron, nn, surrogates


class NumpyTDBatchNorm:
    """docs/reference.md §2.1 in float64 NumPy: biased variance to normalise, unbiased running
    update."""

    def __init__(self, channels, alpha=1.0, v_th=0.5, plain=False, momentum=0.1, eps=1e-5):
        self.weight = np.ones(channels)
        self.bias = np.zeros(channels)
        self.running_mean = np.zeros(channels)
        self.running_var = np.ones(channels)
        self.factor = 1.0 if plain else alpha * v_th
        self.momentum, self.eps = momentum, eps

    def __call__(self, x, training):
        flat = x.reshape(-1, x.shape[-1])
        if training:
            n = flat.shape[0]
            mean = flat.mean(0)
            var = ((flat - mean) ** 2).mean(0)
            m = self.momentum
            self.running_mean = m * mean + (1 - m) * self.running_mean
            self.running_var = m * var * n / (n - 1) + (1 - m) * self.running_var
        else:
            mean, var = self.running_mean, self.running_var
        return self.factor * (x - mean) / np.sqrt(var + self.eps) * self.weight + self.bias


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 1 / np.sqrt(2)])
def test_tdbn_matches_numpy_transcription(alpha, plain):
    rng = np.random.default_rng(0)
    bn = nn.TDBatchNorm(6, alpha=alpha, plain=plain)
    bn.scale[...] = jnp.asarray(rng.normal(size=6) + 1, jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=6), jnp.float32)
    ref = NumpyTDBatchNorm(6, alpha=alpha, plain=plain)
    ref.weight, ref.bias = (
        np.asarray(bn.scale[...], np.float64),
        np.asarray(bn.bias[...], np.float64),
    )
    for _ in range(3):
        x = rng.normal(loc=2.0, scale=3.0, size=(4, 5, 3, 3, 6))  # (T, B, H, W, C)
        y = bn(jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(y, ref(x, training=True), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], ref.running_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], ref.running_var, rtol=1e-5)
    assert int(bn.num_batches_tracked[...]) == 3
    bn.eval()
    x = rng.normal(size=(2, 3, 4, 4, 6))
    np.testing.assert_allclose(
        bn(jnp.asarray(x, jnp.float32)), ref(x, training=False), rtol=1e-4, atol=1e-5
    )
    assert int(bn.num_batches_tracked[...]) == 3


def test_tdbn_folded_and_time_major_inputs_agree():
    x = jax.random.normal(jax.random.key(0), (3, 4, 5, 5, 8))
    a, b = nn.TDBatchNorm(8), nn.TDBatchNorm(8)
    np.testing.assert_allclose(nn.fold_time(a(x)), b(nn.fold_time(x)), rtol=1e-6)
    np.testing.assert_allclose(a.var[...], b.var[...], rtol=1e-6)


def test_tdbn_gradient_flows_through_batch_statistics():
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 4))
    bn = nn.TDBatchNorm(4)

    def loss(x):
        return jnp.sum(nn.TDBatchNorm(4)(x) ** 3)

    grad = jax.grad(loss)(x)
    # Normalisation removes the mean, so the gradient w.r.t. a constant shift is zero.
    np.testing.assert_allclose(grad.sum(axis=(0, 1, 2)), 0, atol=1e-4)
    with pytest.raises(ValueError, match=r"expected a channel-last input \(\.\.\., 4\)"):
        bn(jnp.ones((2, 3, 5)))


def test_tdbn_keeps_bfloat16_and_computes_statistics_in_float32():
    bn = nn.TDBatchNorm(3)
    x = jax.random.normal(jax.random.key(2), (4, 6, 3)).astype(jnp.bfloat16)
    assert bn(x).dtype == jnp.bfloat16
    assert bn.mean[...].dtype == jnp.float32


def test_glif_module_holds_named_parameters_and_calls_the_core():
    layer = nn.GLIF(5, 3, random_gates=True, rngs=nnx.Rngs(0))
    names = {str(path[0]) for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param))}
    assert names == {"alpha", "beta", "gamma", "tau", "v_th", "leak", "v_reset", "conduct"}
    assert layer.conduct[...].shape == (3, 5)
    x = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 5))
    np.testing.assert_array_equal(layer(x), neuron.glif(layer.params, x))
    assert float(jnp.abs(layer.alpha[...]).max()) < 0.1


def test_glif_module_layer_wise_fused_and_options():
    layer = nn.GLIF(5, 4, channel_wise=False, mode="hard", surrogate="atan", rngs=nnx.Rngs(0))
    assert layer.v_th[...].shape == () and layer.conduct[...].shape == (4,)
    assert layer.surrogate == surrogates.atan()
    fused = nn.GLIF(5, 4, mode="fused")
    assert fused.alpha is None and fused.gamma is None
    count = sum(p.size for p in jax.tree.leaves(nnx.state(fused, nnx.Param)))
    assert count == 5 * (4 + 4)  # tau, v_th, leak, v_reset and T conductances per channel
    with pytest.raises(ValueError, match="random_gates=True needs rngs"):
        nn.GLIF(5, 4, random_gates=True)
    with pytest.raises(ValueError, match="unknown GLIF mode"):
        nn.GLIF(5, 4, mode="gated")


def test_glif_module_gradients_reach_every_parameter():
    layer = nn.GLIF(4, 3, random_gates=True, rngs=nnx.Rngs(0))
    x = 0.8 * jax.random.normal(jax.random.key(3), (3, 8, 4)) + 0.4

    def loss(layer):
        return jnp.sum(layer(x) * jnp.arange(4.0))

    grads = nnx.grad(loss)(layer)
    for path, value in nnx.to_flat_state(grads):
        assert float(jnp.abs(value[...]).sum()) > 0, path


def test_firing_rates_leave_the_output_unchanged():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.first = nn.GLIF(3, 2, rngs=rngs)
            self.second = nn.GLIF(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.second(self.first(x) + x)

    net = Net(nnx.Rngs(0))
    x = jnp.linspace(0, 1.5, 24).reshape(2, 4, 3)
    out, rates = nn.firing_rates(net, x)
    np.testing.assert_array_equal(out, net(x))
    assert list(rates) == ["first", "second"]
    np.testing.assert_allclose(rates["first"], jnp.mean(net.first(x)))
    assert not nnx.state(net, nn.FiringRate)  # nothing left behind


def test_time_helpers():
    images = jnp.arange(2 * 3 * 3 * 1.0).reshape(2, 3, 3, 1)
    encoded = nn.direct_encode(images, 4)
    assert encoded.shape == (4, 2, 3, 3, 1)
    np.testing.assert_array_equal(encoded[3], images)
    folded = nn.fold_time(encoded)
    assert folded.shape == (8, 3, 3, 1)
    np.testing.assert_array_equal(folded[1 * 2 + 1], images[1])  # row t·B + b
    np.testing.assert_array_equal(nn.unfold_time(folded, 4), encoded)
    pooled = nn.per_frame(lambda y: nnx.avg_pool(y, (3, 3), (3, 3)), encoded)
    assert pooled.shape == (4, 2, 1, 1, 1)
    frames = jnp.zeros((5, 16, 8, 8, 2))
    assert nn.batch_major_to_time_major(frames).shape == (16, 5, 8, 8, 2)
    block = nn.PerFrame(nnx.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0)), nn.TDBatchNorm(2))
    assert block(encoded).shape == (4, 2, 3, 3, 2)
    with pytest.raises(ValueError, match="not a multiple of T=3"):
        nn.unfold_time(folded, 3)
    with pytest.raises(ValueError, match="positive int"):
        nn.direct_encode(images, 0)


class _Block(nnx.Module):
    """conv → tdBN → GLIF, the unit the networks recompute."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(4, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nn.TDBatchNorm(4)
        self.lif = nn.GLIF(4, 3, random_gates=True, rngs=rngs)

    def __call__(self, x):
        return self.lif(nn.per_frame(lambda y: self.bn(self.conv(y)), x)) + x


@pytest.mark.slow
def test_recompute_gives_the_outputs_gradients_and_statistics_of_the_plain_call():
    x = 0.5 + jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
    results = []
    for recomputed in (False, True):
        block = _Block(nnx.Rngs(0))

        def loss(block, x, recomputed=recomputed):
            y = nn.recompute(block, x) if recomputed else block(x)
            return jnp.sum(y * jnp.cos(x))

        value, (grad_block, grad_x) = nnx.value_and_grad(loss, argnums=(0, 1))(block, x)
        results.append((value, grad_block, grad_x, nnx.state(block, nnx.BatchStat)))
    for plain, recomputed in zip(*(jax.tree.leaves(r) for r in results), strict=True):
        # Same arithmetic, fused differently by XLA: equal to float32 rounding.
        scale = float(np.max(np.abs(plain))) if np.size(plain) else 1.0
        np.testing.assert_allclose(recomputed, plain, rtol=1e-5, atol=1e-6 * scale)
    assert int(results[1][3]["bn"]["num_batches_tracked"][...]) == 1


def test_recompute_makes_a_non_finite_output_gradient_nan():
    block = _Block(nnx.Rngs(0))
    x = jnp.ones((3, 2, 6, 6, 4))
    grad = nnx.grad(lambda b: jnp.sum(nn.recompute(b, x) * jnp.inf))(block)
    assert np.isnan(grad["conv"]["kernel"][...]).all()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's HLO (GPU: cuDNN calls)")
def test_recompute_puts_no_conditional_around_the_recomputed_layer():
    # XLA:CPU runs a convolution's weight gradient inside a conditional branch ~100x slower.
    conv = nnx.Conv(4, 4, (3, 3), rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 4))
    graph, params = nnx.split(conv, nnx.Param)

    def loss(params, weights):  # weights an argument, so that XLA cannot fold the gradient
        return jnp.sum(nn.recompute(nnx.merge(graph, params), x) * weights)

    hlo = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
    assert "convolution(" in hlo
    assert "conditional(" not in hlo


@pytest.mark.slow
def test_recompute_lowers_the_compiled_peak_memory():
    blocks = [_Block(nnx.Rngs(i)) for i in range(6)]
    x = jnp.ones((3, 16, 16, 16, 4))

    def temp_bytes(recomputed):
        def loss(blocks):
            y = x
            for block in blocks:
                y = nn.recompute(block, y) if recomputed else block(y)
            return jnp.sum(y)

        graph, params, rest = nnx.split(blocks, nnx.Param, ...)
        step = jax.jit(jax.grad(lambda p: loss(nnx.merge(graph, p, rest, copy=True))))
        return step.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(True) < 0.6 * temp_bytes(False)
