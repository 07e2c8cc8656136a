"""The keys every config has, with the reference's static-image recipe (docs/reference.md §4.1) as defaults.

Not a runnable config itself: the experiment configs start from :func:`base_config` and change
what their experiment changes. Every key is documented here, once.
"""

import math

import ml_collections
from ml_collections import config_dict


def model_options() -> ml_collections.ConfigDict:
    """Options passed to ``glif_jax.models.create``: the neuron is a choice of the network."""
    return ml_collections.ConfigDict(
        {
            "channel_wise": True,  # False: layer-wise GLIF (Table 6)
            "mode": "soft",  # soft | hard | static (GLIF_s) | static_hard | fused (GLIF_f)
            "simplex": config_dict.placeholder(str),  # e.g. "101": a simplex LIF (Table 4)
            "surrogate": "rectangle",  # rectangle | sigmoid | atan | triangle | superspike
            "gates": "random",  # raw U(-0.1, 0.1), the reference's --randomgate
            "detach_reset": False,
            "implementation": "auto",  # auto | scan | xla | pallas
            "plain_bn": False,  # plain BN instead of tdBN (not an option of the DVS net)
            "remat": False,  # recompute each residual block in the backward pass
        }
    )


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Data. data_dir None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
    config.dataset = "cifar10"
    config.data_dir = config_dict.placeholder(str)
    # Model.
    config.model = "resnet19"
    config.model_options = model_options()
    config.time_steps = 4
    config.compute_dtype = "float32"  # or "bfloat16" (parameters and BN statistics stay float32)
    # Schedule: the global batch over all devices and hosts; -1 steps = num_epochs full epochs.
    config.batch_size = 64
    config.num_epochs = 200
    config.num_train_steps = -1  # > 0: stop after that many steps, schedule unchanged
    config.seed = 9
    # Optimiser (docs/reference.md §4.1): SGD, momentum 0.9; weight decay on conv, linear and BN only;
    # the gates alpha, beta, gamma at learning_rate * gate_lr_scale.
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 4e-5
    config.gate_lr_scale = 0.1
    # The reference's cosine, changed once per epoch: lr(e) = lr·(1 + cos(π·e/period))/2 for the
    # 0-based epoch e, with period = num_epochs unless set (periodic beyond it, as torch's).
    config.lr_period_epochs = config_dict.placeholder(int)
    # Loss on the mean-over-T logits; options the field uses, off by default.
    config.loss = "cross_entropy"  # or "tet" (Deng et al., 2022): (1 − λ)·per-step CE + λ·MSE
    config.tet_lambda = 1e-3
    config.tet_means = 1.0
    config.label_smoothing = 0.0
    # Logging and checkpoints.
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500  # and at the end of every epoch
    # Latest checkpoints kept: at least 2, so that a damaged one has an intact one to fall back to.
    config.max_to_keep = 2
    # After training: the spike activity and energy of the final network over the test split,
    # into analysis.json, analysis.md and two plots (docs/analysis.md); single-process runs only.
    config.analyze_after_training = True
    return config


def parse_variant(variant: str | None, choices: dict[str, tuple]) -> dict[str, str]:
    """Parse ``"key=value,key=value"`` (the part after ``:`` in ``--config=file.py:...``).

    Args:
      variant: the string, or None/empty for every key's first choice.
      choices: allowed values per key, the first being the default.

    Raises:
      ValueError: an unknown key or value, naming the allowed ones.
    """
    chosen = {key: values[0] for key, values in choices.items()}
    for item in filter(None, (variant or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in choices:
            raise ValueError(
                f"config variant {item!r}: expected key=value with key one of {sorted(choices)}."
            )
        if value not in choices[key]:
            raise ValueError(
                f"config variant {key}={value!r}: expected one of {list(choices[key])}."
            )
        chosen[key] = value
    return chosen


class ConfigError(ValueError):
    """A config value that cannot run, named with what was expected."""


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# key -> (what it must be, the test); a key absent here is checked where it is used (dataset,
# model and model options by their registries, loss by the recipe).
_CHECKS = {
    "time_steps": ("a positive integer", lambda v: _int(v) and v >= 1),
    "batch_size": ("a positive integer", lambda v: _int(v) and v >= 1),
    "num_epochs": ("a positive integer", lambda v: _int(v) and v >= 1),
    "num_train_steps": ("-1 or a positive integer", lambda v: _int(v) and (v == -1 or v >= 1)),
    "seed": ("an integer", _int),
    "learning_rate": ("a finite number ≥ 0", lambda v: _finite(v) and v >= 0),
    "momentum": ("a finite number in [0, 1)", lambda v: _finite(v) and 0 <= v < 1),
    "weight_decay": ("a finite number ≥ 0", lambda v: _finite(v) and v >= 0),
    "gate_lr_scale": ("a finite number ≥ 0", lambda v: _finite(v) and v >= 0),
    "lr_period_epochs": ("None or a positive integer", lambda v: v is None or (_int(v) and v >= 1)),
    "tet_lambda": ("a finite number in [0, 1]", lambda v: _finite(v) and 0 <= v <= 1),
    "tet_means": ("a finite number", _finite),
    "label_smoothing": ("a finite number in [0, 1)", lambda v: _finite(v) and 0 <= v < 1),
    "log_every_steps": ("a positive integer", lambda v: _int(v) and v >= 1),
    "checkpoint_every_steps": ("a positive integer", lambda v: _int(v) and v >= 1),
    "max_to_keep": ("an integer ≥ 2", lambda v: _int(v) and v >= 2),
    "compute_dtype": ("'float32' or 'bfloat16'", lambda v: v in ("float32", "bfloat16")),
    "loss": ("'cross_entropy' or 'tet'", lambda v: v in ("cross_entropy", "tet")),
}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Check every value of ``config`` that can be checked without building anything.

    Raises:
      ConfigError: the first bad value, as ``config.KEY=VALUE: expected ...``.
    """
    for key, (expected, valid) in _CHECKS.items():
        if key in config and not valid(config[key]):
            raise ConfigError(f"config.{key}={config[key]!r}: expected {expected}.")
