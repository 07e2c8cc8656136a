"""A config read into typed values, once, at the top of a command.

:class:`Settings` holds the keys of ``experiments/configs/base.py`` grouped by what they say: the
:class:`Network`, its :class:`Input`, the :class:`~experiments.recipe.Recipe` that trains it and
the :class:`Loop` that runs it. Below :func:`Settings.from_config` nothing reads the config.

Which keys define a checkpoint's state (its arrays, and which example each step reads) follows
from the fields: all but those marked ``defines_state=False`` (where the data lives, how often the
run logs). Of them, the recipe's may change on resume when asked to (:data:`SCHEDULE_KEYS`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from experiments import recipe
from glif_jax import models

__all__ = ["SCHEDULE_KEYS", "Input", "Loop", "Network", "Settings"]

_RUN_ONLY = {"defines_state": False}

SCHEDULE_KEYS = tuple(field.name for field in dataclasses.fields(recipe.Recipe))
"""The recipe's keys: they change how the state moves on, not what it is, so a resume may change
them when asked to (``--allow_schedule_change``); the change is recorded."""


def _from(cls, config: ml_collections.ConfigDict):
    values = {}
    for field in dataclasses.fields(cls):
        value = config[field.name]
        values[field.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Network:
    """The network a run trains.

    Attributes:
      model: its name in :func:`glif_jax.models.create`.
      model_options: the network's and its neuron's options (``None``: the network's default).
      time_steps: T, the simulation steps per image.
      compute_dtype: ``"float32"`` or ``"bfloat16"`` (parameters and BN statistics stay float32).
    """

    model: str
    model_options: dict[str, Any]
    time_steps: int
    compute_dtype: str = "float32"

    def build(self, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """The network, with its options and compute dtype."""
        options = {k: v for k, v in self.model_options.items() if v is not None}
        if self.compute_dtype != "float32":
            options["dtype"] = jnp.dtype(self.compute_dtype)
        return models.create(
            self.model, num_classes=num_classes, time_steps=self.time_steps, rngs=rngs, **options
        )


@dataclasses.dataclass(frozen=True)
class Input:
    """What a run reads.

    Attributes:
      dataset: its name in :mod:`experiments.data`.
      batch_size: the global batch, over every device of every host.
      data_dir: where the prepared dataset lives (``None``: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
    """

    dataset: str
    batch_size: int
    data_dir: str | None = dataclasses.field(default=None, metadata=_RUN_ONLY)


@dataclasses.dataclass(frozen=True)
class Loop:
    """How the training loop runs.

    Attributes:
      num_train_steps: stop after that many steps (``-1``: the recipe's ``num_epochs``).
      log_every_steps: a log line every that many steps.
      checkpoint_every_steps: a checkpoint every that many steps, besides each epoch's end.
      max_to_keep: the newest checkpoints kept (the best is kept besides).
    """

    num_train_steps: int = -1
    log_every_steps: int = 50
    checkpoint_every_steps: int = 500
    max_to_keep: int = 2


@dataclasses.dataclass(frozen=True)
class Settings:
    """A run's config as typed values.

    Attributes:
      network, input, recipe, loop: see their classes.
      seed: the network's initialisation and the order of the training examples.
    """

    network: Network
    input: Input
    recipe: recipe.Recipe
    loop: Loop = dataclasses.field(default_factory=Loop, metadata=_RUN_ONLY)
    seed: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Settings:
        """The typed values of ``config``."""
        return cls(
            network=_from(Network, config),
            input=_from(Input, config),
            recipe=_from(recipe.Recipe, config),
            loop=_from(Loop, config),
            seed=config.seed,
        )

    def fingerprint(self) -> dict[str, Any]:
        """The values of the keys that define a checkpoint's state, as plain JSON values, by the
        config's key names."""
        values = {}
        for field in dataclasses.fields(self):
            if field.metadata.get("defines_state", True):
                value = getattr(self, field.name)
                if dataclasses.is_dataclass(value):
                    for inner in dataclasses.fields(value):
                        if inner.metadata.get("defines_state", True):
                            values[inner.name] = getattr(value, inner.name)
                else:
                    values[field.name] = value
        return json.loads(json.dumps(values))
