"""The training recipe (docs/reference.md §4.1) against the reference's numbers and torch's SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import recipe
from experiments.configs import base
from experiments.settings import Settings
from glif_jax import nn


def make_recipe(**changes) -> recipe.Recipe:
    config = base.base_config()
    config.update(changes)
    return Settings.from_config(config).recipe


@pytest.mark.parametrize(
    "epoch, lr",
    [
        (1, 0.1),
        (2, 0.099993832),
        (100, 0.050785366),
        (101, 0.05),
        (199, 2.4671982e-05),
        (200, 6.1683759e-06),
    ],
)
def test_cosine_per_epoch_matches_reference_values(epoch, lr):
    steps_per_epoch = 782
    schedule = recipe.learning_rate_schedule(make_recipe(num_epochs=200), steps_per_epoch)
    # Training epoch e (1-based) uses the same rate for all of its steps.
    for step in ((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1):
        np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6)


def test_dvs_cosine_is_periodic_beyond_t_max():
    schedule = recipe.learning_rate_schedule(
        make_recipe(num_epochs=200, learning_rate=0.01, lr_period_epochs=64), steps_per_epoch=281
    )
    values = {e: float(schedule(e * 281)) for e in (0, 64, 128, 192, 199)}
    np.testing.assert_allclose(values[0], 0.01, rtol=1e-6)
    np.testing.assert_allclose(values[64], 0.0, atol=1e-9)
    np.testing.assert_allclose(values[128], 0.01, rtol=1e-6)
    np.testing.assert_allclose(values[192], 0.0, atol=1e-9)
    np.testing.assert_allclose(values[199], 2.9228e-4, rtol=1e-4)


class TinyNet(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.linear = nnx.Linear(3, 4, use_bias=False, rngs=rngs)
        self.bn = nn.TDBatchNorm(4)
        self.lif = nn.GLIF(4, 2, random_gates=True, rngs=rngs)


def test_parameter_groups_follow_the_reference_names():
    _, params, _ = nnx.split(TinyNet(), nnx.Param, ...)
    groups = {
        "/".join(k.key for k in path if isinstance(k, jax.tree_util.DictKey)): group
        for path, group in jax.tree_util.tree_leaves_with_path(
            jax.tree_util.tree_map_with_path(lambda p, _: recipe.param_group(p), params)
        )
    }
    assert groups == {
        "linear/kernel": "weights",
        "bn/scale": "weights",
        "bn/bias": "weights",
        **{f"lif/{name}": "gates" for name in ("alpha", "beta", "gamma")},
        **{f"lif/{name}": "neuron" for name in ("tau", "v_th", "leak", "v_reset", "conduct")},
    }


def test_optimizer_matches_torch_sgd_with_the_three_groups():
    torch = pytest.importorskip("torch")
    config = make_recipe(num_epochs=10, learning_rate=0.1, weight_decay=4e-5, gate_lr_scale=0.1)
    steps_per_epoch = 3
    _, params, _ = nnx.split(TinyNet(), nnx.Param, ...)
    tx = recipe.create_optimizer(config, params, steps_per_epoch)
    opt_state = tx.init(params)

    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    torch_params = [
        torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True) for _, v in leaves
    ]
    groups = [recipe.param_group(path) for path, _ in leaves]
    decay = {"weights": 4e-5, "neuron": 0.0, "gates": 0.0}
    scale = {"weights": 1.0, "neuron": 1.0, "gates": 0.1}
    torch_opt = torch.optim.SGD(
        [
            {"params": [p], "lr": 0.1 * scale[g], "weight_decay": decay[g]}
            for p, g in zip(torch_params, groups, strict=True)
        ],
        lr=0.1,
        momentum=0.9,
    )
    base_lrs = [group["lr"] for group in torch_opt.param_groups]
    rng = np.random.default_rng(0)
    for step in range(8):
        epoch = step // steps_per_epoch
        for group, base_lr in zip(torch_opt.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * 0.5 * (1 + np.cos(np.pi * epoch / 10))
        grads = [rng.normal(size=np.shape(v)) for _, v in leaves]
        for p, g in zip(torch_params, grads, strict=True):
            p.grad = torch.tensor(g)
        torch_opt.step()
        jax_grads = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(g, jnp.float32) for g in grads]
        )
        updates, opt_state = tx.update(jax_grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    for (path, value), expected in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], torch_params, strict=True
    ):
        np.testing.assert_allclose(
            value, expected.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=str(path)
        )


def test_cross_entropy_is_on_the_mean_over_time_logits():
    logits = jax.random.normal(jax.random.key(0), (4, 3, 5))
    labels = jnp.array([0, 3, 4])
    loss = recipe.compute_loss(logits, labels, make_recipe())
    mean = logits.mean(0)
    expected = -jnp.mean(jax.nn.log_softmax(mean)[jnp.arange(3), labels])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_tet_loss_and_label_smoothing():
    logits = jax.random.normal(jax.random.key(1), (3, 2, 4))
    labels = jnp.array([1, 2])
    config = make_recipe(loss="tet", tet_lambda=0.25, tet_means=1.0)
    per_step = [-jax.nn.log_softmax(logits[t])[jnp.arange(2), labels].mean() for t in range(3)]
    expected = 0.75 * np.mean(per_step) + 0.25 * jnp.mean((logits - 1.0) ** 2)
    np.testing.assert_allclose(recipe.compute_loss(logits, labels, config), expected, rtol=1e-6)
    smooth = recipe.compute_loss(logits, labels, make_recipe(label_smoothing=0.1))
    targets = jax.nn.one_hot(labels, 4) * 0.9 + 0.1 / 4
    expected = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits.mean(0)), -1))
    np.testing.assert_allclose(smooth, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        make_recipe(loss="mse")
