"""Table 1: GLIF on CIFAR-10 and CIFAR-100 with ResNet-19, ResNet-18 and CIFARNet.

    python -m experiments.main --config=experiments/configs/cifar.py:model=resnet19,dataset=cifar10,t=4 --workdir=runs/r19-c10-t4

Expected wall time: the recipe is 200 epochs of 781 steps at batch 64 (156,200 steps; the
reference's epochs have 782, the last a partial batch, which this pipeline drops). On the
2-core CPU this project is developed on, one ResNet-19 step at T = 4 takes seconds (see
``python -m experiments.benchmarks``), so a full run there takes weeks; it is written for one GPU
or TPU host, where the reference took about a day per run (not measured here).

Variants (``key=value`` after the ``:``): model ∈ {resnet19, resnet18, cifarnet}, dataset ∈
{cifar10, cifar100}, t ∈ {2, 4, 5, 6}. The paper's rows are listed in ``ROWS``. The recipe is the
reference's README command (docs/reference.md §4.1): SGD 0.1 with momentum 0.9, weight decay 4e-5 on conv,
linear and BN, none on GLIF, gates at lr/10, cosine per epoch over 200 epochs, batch 64,
channel-wise soft GLIF with random gates, cross-entropy on the mean-over-T logits.
"""

from experiments.configs.base import base_config, parse_variant

CHOICES = {
    "model": ("resnet19", "resnet18", "cifarnet"),
    "dataset": ("cifar10", "cifar100"),
    "t": ("4", "2", "5", "6"),
}

ROWS = (
    *(
        f"model={model},dataset={dataset},t={t}"
        for model in ("resnet19", "resnet18")
        for dataset in ("cifar10", "cifar100")
        for t in ("2", "4", "6")
    ),
    "model=cifarnet,dataset=cifar10,t=5",
)


def get_config(variant: str | None = None):
    chosen = parse_variant(variant, CHOICES)
    config = base_config()
    config.model = chosen["model"]
    config.dataset = chosen["dataset"]
    config.time_steps = int(chosen["t"])
    return config
