"""The training recipe: parameter groups, the learning-rate schedule, the optimizer and the loss.

The reference's static-image recipe (docs/reference.md §4.1): SGD with momentum 0.9 in torch's
convention; weight decay on conv, linear and BN parameters and none on GLIF parameters; the gates
α, β, γ at a scaled learning rate (lr/10 on CIFAR); the reference's cosine, changed once per epoch;
cross-entropy on the mean-over-T logits. The CIFAR10-DVS recipe is the same functions with other
values (docs/reference.md §4.3).

A :class:`Recipe` holds the config's recipe keys as typed values (read by
:meth:`experiments.settings.Settings.from_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from glif_jax import neuron

__all__ = [
    "Recipe",
    "compute_loss",
    "create_optimizer",
    "learning_rate_schedule",
    "param_group",
]

GATE_PARAMS = frozenset(neuron.GATE_NAMES)
NEURON_PARAMS = frozenset(neuron.PARAM_NAMES) - GATE_PARAMS


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The optimizer, schedule and loss of a run (the keys of ``experiments/configs/base.py``).

    Attributes:
      learning_rate: the base learning rate of the conv, linear, BN and GLIF non-gate parameters.
      momentum: SGD momentum (torch's convention: the gradient is added to the momentum buffer).
      weight_decay: L2 weight decay of the conv, linear and BN parameters (not of GLIF's).
      gate_lr_scale: the gates' learning rate over ``learning_rate``.
      num_epochs: the length of the schedule, in epochs.
      lr_period_epochs: the cosine's period in epochs (``None``: ``num_epochs``).
      loss: ``"cross_entropy"`` on the mean-over-T logits, or ``"tet"``.
      label_smoothing: label smoothing of the cross-entropy.
      tet_lambda: the weight λ of TET's regulariser.
      tet_means: the target φ of TET's regulariser.
    """

    learning_rate: float
    momentum: float
    weight_decay: float
    gate_lr_scale: float
    num_epochs: int
    lr_period_epochs: int | None = None
    loss: Literal["cross_entropy", "tet"] = "cross_entropy"
    label_smoothing: float = 0.0
    tet_lambda: float = 1e-3
    tet_means: float = 1.0

    def __post_init__(self):
        if self.loss not in ("cross_entropy", "tet"):
            raise ValueError(f"unknown loss {self.loss!r}; expected 'cross_entropy' or 'tet'.")


def param_group(path: tuple) -> str:
    """The optimizer group of a parameter, by its name as the reference does.

    Args:
      path: the parameter's pytree path in the model's ``nnx.State``; its last dictionary key is
        the attribute name (``kernel``, ``alpha``...), followed by the Variable's ``.value``.

    Returns:
      ``"gates"`` (α, β, γ), ``"neuron"`` (the other GLIF parameters) or ``"weights"`` (conv,
      linear and BN affine parameters).
    """
    name = next(str(k.key) for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
    if name in GATE_PARAMS:
        return "gates"
    if name in NEURON_PARAMS:
        return "neuron"
    return "weights"


def learning_rate_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
    """The reference's cosine, constant within an epoch: lr·(1 + cos(π·e/period))/2.

    ``e`` is the 0-based epoch of the step; ``period`` is ``num_epochs`` unless
    ``lr_period_epochs`` is set (torch's CosineAnnealingLR is periodic beyond T_max). The rates
    are computed per epoch in float64, so that the last epochs' small rates are exact in float32.
    """
    period = recipe.lr_period_epochs or recipe.num_epochs
    epochs = np.arange(recipe.num_epochs, dtype=np.float64)
    table = jnp.asarray(
        recipe.learning_rate * (1 + np.cos(np.pi * epochs / period)) / 2, jnp.float32
    )

    def schedule(step):
        return table[jnp.minimum(jnp.floor_divide(step, steps_per_epoch), len(table) - 1)]

    return schedule


def create_optimizer(recipe: Recipe, params, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum in torch's convention, over the three groups of :func:`param_group`.

    Conv, linear and BN parameters get ``weight_decay`` (added to the gradient before the
    momentum, as torch's SGD); the GLIF parameters get none; the gates α, β, γ run at
    ``learning_rate · gate_lr_scale``.

    Args:
      recipe: the recipe.
      params: the model's ``nnx.Param`` state (only its structure and names are read).
      steps_per_epoch: optimizer steps per epoch, for the schedule.
    """
    schedule = learning_rate_schedule(recipe, steps_per_epoch)

    def sgd(lr_scale: float, weight_decay: float):
        return optax.chain(
            optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
            optax.sgd(lambda step: lr_scale * schedule(step), momentum=recipe.momentum),
        )

    labels = jax.tree_util.tree_map_with_path(lambda path, _: param_group(path), params)
    return optax.multi_transform(
        {
            "weights": sgd(1.0, recipe.weight_decay),
            "neuron": sgd(1.0, 0.0),
            "gates": sgd(recipe.gate_lr_scale, 0.0),
        },
        labels,
    )


def _cross_entropy(logits, labels, label_smoothing):
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def compute_loss(per_step_logits: jax.Array, labels: jax.Array, recipe: Recipe) -> jax.Array:
    """Mean cross-entropy of the mean-over-T logits (the reference), or the TET loss.

    TET (Deng et al., ICLR 2022): ``(1 − λ)·mean_t CE(o_t, y) + λ·mean_t MSE(o_t, φ)``.

    Args:
      per_step_logits: ``(T, B, n)`` float32.
      labels: ``(B,)`` int32.
      recipe: its ``loss``, ``label_smoothing``, ``tet_lambda`` (λ) and ``tet_means`` (φ).

    Returns:
      The scalar loss.
    """
    smoothing = recipe.label_smoothing
    if recipe.loss == "cross_entropy":
        return jnp.mean(_cross_entropy(per_step_logits.mean(0), labels, smoothing))
    per_step = jax.vmap(lambda z: _cross_entropy(z, labels, smoothing))(per_step_logits)
    regulariser = jnp.mean(jnp.square(per_step_logits - recipe.tet_means))
    return (1 - recipe.tet_lambda) * jnp.mean(per_step) + recipe.tet_lambda * regulariser
