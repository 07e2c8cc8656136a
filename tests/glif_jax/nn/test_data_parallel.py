"""A researcher's own data-parallel ``jit`` of a glif_jax network: the batch sharded over a mesh
set in context (``jax.set_mesh``) is computed where it lies (the conftest fakes 4 CPU devices)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from glif_jax import models, nn, placement


@pytest.fixture
def mesh():
    return jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))


def test_per_frame_folds_each_devices_frames_together_and_computes_the_same(mesh):
    x = jax.random.normal(jax.random.key(0), (3, 8, 5, 5, 6))

    def normalise(rows):  # a per-row layer after a reduction over every row, as tdBN's
        return (rows - rows.mean((0, 1, 2))) / rows.std((0, 1, 2)) * jnp.arange(1.0, 7.0)

    want = nn.per_frame(normalise, x)
    seen = []

    def record(rows):
        seen.append(rows.shape)
        return normalise(rows)

    with jax.set_mesh(mesh):
        assert placement.batch_split(8).shards == 4
        got = jax.jit(lambda x: nn.per_frame(record, x))(
            jax.device_put(x, NamedSharding(mesh, P(None, "data")))
        )
    assert seen == [(24, 5, 5, 6)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_batch_the_mesh_cannot_split_is_folded_time_major(mesh):
    with jax.set_mesh(mesh):
        assert placement.batch_split(6) is None
        x = jnp.arange(3 * 6 * 2.0).reshape(3, 6, 2)
        np.testing.assert_array_equal(nn.per_frame(lambda y: y * 2, x), x * 2)


def _loss_and_grad_program(mesh, batch: int):
    # One block per stage: every kind of layer and shortcut of ResNet-19, at half the compile.
    model = models.create(
        "resnet19",
        num_classes=10,
        time_steps=2,
        rngs=nnx.Rngs(0),
        stem_channels=8,
        stage_channels=(8, 16, 16),
        stage_repeats=(1, 1, 1),
        head_width=16,
    )
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, images, labels):
        logits = nnx.merge(graph, params, rest, copy=True)(images)
        return jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 10), -1))

    images = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    # LLVM's optimisation level changes the machine code, not the optimised HLO read here (the
    # same text at every level), and at 0 takes a third off the compile.
    options = {"xla_backend_optimization_level": 0}
    if mesh is None:
        return jax.jit(jax.grad(loss)).trace(params, images, labels).lower().compile(options)
    shard = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        jitted = jax.jit(jax.grad(loss), in_shardings=(NamedSharding(mesh, P()), shard, shard))
        return jitted.trace(params, images, labels).lower().compile(options)


@pytest.mark.slow
def test_a_researchers_sharded_jit_divides_the_work(mesh):
    one = _loss_and_grad_program(None, 2)  # one device's share, alone
    four = _loss_and_grad_program(mesh, 8)  # the global batch of four devices

    def flops(compiled):
        cost = compiled.cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    assert abs(flops(four) / flops(one) - 1) < 0.05
    gathers = re.findall(r"= (\S+) (?:all-gather|all-to-all|collective-permute)", four.as_text())
    assert gathers == []


@pytest.mark.slow
def test_the_spike_analysis_of_a_split_batch_is_that_of_the_whole(mesh):
    from glif_jax import analysis

    model = models.create(
        "spiking_cnn", num_classes=10, time_steps=2, rngs=nnx.Rngs(0), in_channels=1
    )
    model.eval()
    images = [jax.random.normal(jax.random.key(i), (8, 8, 8, 1)) for i in range(2)]
    whole = analysis.analyze(model, images)
    with jax.set_mesh(mesh):
        split = analysis.analyze(
            model, [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in images]
        )
    assert split["totals"]["sops"] == pytest.approx(whole["totals"]["sops"], rel=1e-6)
    assert [layer["rate"] for layer in split["layers"] if "rate" in layer] == pytest.approx(
        [layer["rate"] for layer in whole["layers"] if "rate" in layer], rel=1e-6
    )
