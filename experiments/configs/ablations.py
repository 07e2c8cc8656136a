"""Tables 4-6: the ablations on CIFAR-100 with ResNet-19 and ResNet-18.

    python -m experiments.main --config=experiments/configs/ablations.py:model=resnet19,t=4,neuron=simplex_101 --workdir=runs/abl-r19-101

Expected wall time: as the Table 1 runs (``cifar.py``): 200 epochs at batch 64, a GPU-day per run
for the reference; weeks on the 2-core development CPU (not measured end to end).

Variants: model ∈ {resnet19, resnet18}, t ∈ {4, 2}, neuron ∈
- ``glif``: the paper's channel-wise GLIF (the reference column of every table);
- ``simplex_000`` … ``simplex_111``: the eight simplex LIFs of Table 4 (binary, static gates α, β,
  γ from the code, the reference's ``--gate a b c`` without ``--soft-mode``), at T = 4;
- ``glif_s``: gates fixed after the random initialisation (Table 5);
- ``glif_f``: the coarsely fused LIF, every gate on and both resets (Table 5; no gate parameters);
- ``layer_wise``: one parameter set per layer instead of per channel (Table 6).
"""

from experiments.configs.base import base_config, parse_variant

SIMPLEX_CODES = ("000", "001", "010", "011", "100", "101", "110", "111")
NEURONS = ("glif", *(f"simplex_{code}" for code in SIMPLEX_CODES), "glif_s", "glif_f", "layer_wise")
CHOICES = {"model": ("resnet19", "resnet18"), "t": ("4", "2"), "neuron": NEURONS}

ROWS = tuple(
    [
        f"model={model},t=4,neuron=simplex_{code}"
        for model in ("resnet19", "resnet18")
        for code in SIMPLEX_CODES
    ]
    + [
        f"model={model},t={t},neuron={neuron}"
        for model in ("resnet19", "resnet18")
        for t in ("4", "2")
        for neuron in ("glif", "glif_s", "glif_f", "layer_wise")
    ]
)


def get_config(variant: str | None = None):
    chosen = parse_variant(variant, CHOICES)
    config = base_config()
    config.dataset = "cifar100"
    config.model = chosen["model"]
    config.time_steps = int(chosen["t"])
    neuron = chosen["neuron"]
    options = config.model_options
    if neuron.startswith("simplex_"):
        options.simplex = neuron.removeprefix("simplex_")
        options.mode = "static_hard"
    elif neuron == "glif_s":
        options.mode = "static"
    elif neuron == "glif_f":
        options.mode = "fused"
    elif neuron == "layer_wise":
        options.channel_wise = False
    return config
