"""Compile a training config's steps for several device counts and print what each device does.

    python -m tests.support.scaling --cases=resnet19:xla,resnet19:scan:remat --devices=1,2,4,8
    python -m tests.support.scaling --cases=resnet19:auto --topologies=v5e:2x2,v5e:4x4

Runs in its own process, so that it can fake as many CPU devices as it needs (or describe TPU
topologies), and prints one JSON object ``{case: {devices: report}}``, each report being
:func:`experiments.aot.compile_steps`'s for that many devices (or that topology) at a fixed
batch per device. A case is ``model:implementation`` with ``:remat`` to recompute the blocks. The
tests of ``tests/experiments/test_aot.py`` read it.
"""

from __future__ import annotations

import argparse
import json
import os


def small_config(model: str, implementation: str, *, remat: bool, time_steps: int = 2):
    """A training config of ``model`` at a fraction of its width and depth, fast to compile: every
    kind of layer and block it has, the ResNets with one block per stage."""
    from experiments.configs import cifar, cifar10_dvs, imagenet

    if model in ("resnet19", "resnet18", "cifarnet"):
        config = cifar.get_config(f"model={model}")
    elif model.startswith("ms_resnet"):
        config = imagenet.get_config(f"model={model}")
    else:
        config = cifar10_dvs.get_config()
    if config.dataset != "cifar10_dvs":  # the DVS net's T is its recordings' frame count
        config.time_steps = time_steps
    config.model_options.implementation = implementation
    config.model_options.remat = remat
    if model in ("resnet19", "resnet18", "ms_resnet18", "ms_resnet34"):
        stages = 3 if model == "resnet19" else 4
        config.model_options.stem_channels = 8
        config.model_options.stage_channels = (8, 16, 32, 32)[:stages]
        # The first stage's block keeps its input's shape (the identity shortcut) and the others
        # change it (a convolution shortcut); the MS-ResNets downsample in every stage, so a
        # second block in their first stage has the identity shortcut.
        first = 2 if model.startswith("ms_") else 1
        config.model_options.stage_repeats = (first,) + (1,) * (stages - 1)
        config.model_options.head_width = 16
    elif model == "cifarnet":
        config.model_options.features = (8, 16, "A", 16, "A", 32, 16)
        config.model_options.classifier_widths = (32, 16)
    else:  # the CIFAR10-DVS net
        config.model_options.layer_list = ((8, False), (8, True), (16, True), (16, True))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="resnet19:auto")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--per-device-batch", type=int, default=2)
    parser.add_argument("--topologies", default="", help="TPU topologies instead of CPU devices")
    parser.add_argument("--steps", default="train,eval", help="which steps to compile")
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    # LLVM's optimisation level changes the machine code, not the optimised HLO read here (the
    # same text at every level), and at 0 takes a third off each CPU compile.
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={max(counts)} --xla_backend_optimization_level=0"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from experiments import aot

    if args.topologies:
        runs = [
            (name, aot.topology_devices(name), aot.CHIPS[name.split(":")[0]])
            for name in args.topologies.split(",")
        ]
    else:
        runs = [(str(n), jax.devices()[:n], None) for n in counts]
    results = {}
    for case in args.cases.split(","):
        model, implementation, *rest = case.split(":")
        config = small_config(model, implementation, remat=rest == ["remat"])
        results[case] = {}
        for name, devices, chip in runs:
            config.batch_size = args.per_device_batch * len(devices)
            results[case][name], _ = aot.compile_steps(
                config, devices, chip=chip, steps=args.steps.split(",")
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
