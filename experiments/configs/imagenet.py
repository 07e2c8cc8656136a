"""Table 2: GLIF on ImageNet with MS-ResNet-18 (T = 6) and ResNet-34 (T = 4, 6).

    python -m experiments.main --config=experiments/configs/imagenet.py:model=ms_resnet18,t=6 --workdir=runs/ms18-t6

Expected wall time: 150 epochs of ImageNet at T = 6 is a multi-GPU/TPU job (days on 8 GPUs for
the reference; not measured here). It runs data-parallel over every device of every host (launch
one process per host; see the README).

Variants: model ∈ {ms_resnet18, resnet34, ms_resnet34}, t ∈ {6, 4}; the paper's rows are in
``ROWS``. Recipe (docs/reference.md §4.1): SGD 0.1, momentum 0.9, weight decay 4e-5 (not on GLIF), the gates at
the same learning rate as the rest (the reference sets no lr/10 on ImageNet), cosine per epoch over
150 epochs. The reference used batch 50 per GPU on an unstated number of GPUs; the global batch
here is 400 (8 × 50), change it with ``--config.batch_size``. glif_jax keeps tdBN across devices
(statistics over the global batch); the reference's multi-GPU run silently trained with plain BN
(docs/reference.md §5.5), available as ``--config.model_options.plain_bn=True``.
"""

from experiments.configs.base import base_config, parse_variant

CHOICES = {"model": ("ms_resnet18", "resnet34", "ms_resnet34"), "t": ("6", "4")}

ROWS = ("model=ms_resnet18,t=6", "model=resnet34,t=4", "model=resnet34,t=6")


def get_config(variant: str | None = None):
    chosen = parse_variant(variant, CHOICES)
    config = base_config()
    config.dataset = "imagenet2012"
    config.model = chosen["model"]
    config.time_steps = int(chosen["t"])
    config.batch_size = 400
    config.num_epochs = 150
    config.gate_lr_scale = 1.0
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 100
    return config
