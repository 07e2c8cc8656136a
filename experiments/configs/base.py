"""The keys every config has, with the reference's static-image recipe (docs/reference.md §4.1) as defaults.

Not a runnable config itself: the experiment configs start from :func:`base_config` and change
what their experiment changes. Every key is documented here, once.
"""

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
    config.loss = "cross_entropy"  # or "tet" (Deng et al., 2022): per-step CE + lambda·MSE
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
