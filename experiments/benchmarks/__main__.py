"""Run the benchmark suite: ``python -m experiments.benchmarks [--quick] [--parts ...]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from experiments.benchmarks import glif_speed, report, residuals, timing

PARTS = ("glif", "shapes", "residuals", "training")

_QUICK = {
    "time_steps": "2,4",
    "shape": "2,4,4,16",
    "shapes": "2,4,4,16;3,5,16",
    "repeats": 2,
    "train_model": "spiking_cnn",
    "train_time_steps": "2",
    "train_batch": 2,
    "image_shape": "8,8,1",
    "train_repeats": 1,
}

_NOTES = {
    "glif": (
        "Forward+backward of one layer for a given output cotangent: spikes, dx and every "
        "parameter gradient. `GB/s` counts the minimal traffic, 16 bytes per neuron and step in "
        "float32 (8 in bfloat16): x read, spikes written, cotangent read, dx written. "
        "`of_ceiling` is that over the GB/s of `x * 2 + 1` into a fresh output (read + write), "
        "timed in rounds that alternate the two (the ceiling's row: its best over all rounds). "
        "`vs_pytorch_reference` is the time of the per-step PyTorch loop with autograd as the "
        "reference runs it ((T, B, C, H, W), sigmoids inside the step, spikes written into a "
        "preallocated tensor) over this one's; `vs_pytorch_channel_last` the same for the "
        "faster transcription on glif_jax's layout (float32 only, as the reference computes). "
        "`xla in value_and_grad` (and `pallas in value_and_grad` where Pallas is timed) is "
        "that path inside a scalar loss, ⟨spikes, g⟩ under `jax.jit(jax.value_and_grad(...))`: "
        "the same gradients, the spikes times g going to XLA's scratch memory and a reduction "
        "instead of an output. "
        "`load` is the 1-minute load average before and after."
    ),
    "shapes": (
        "The glif part's forward+backward in float32 at one T (`--shapes-time-steps`) for layers "
        "of other shapes (B,H,W,C or B,C of one time step): ResNet-19's three stages at CIFAR "
        "size, a linear layer, a neuron count with no divisor from 2 to 8 (11²·101), and a "
        "narrow layer of ten channels; columns as in the glif part."
    ),
    "residuals": (
        "Bytes the backward pass keeps per neuron and time step (arrays of at least one step's "
        "size in the closure of `jax.vjp`, the input x included when kept)."
    ),
    "training": (
        "One step of the training recipe (`experiments.train.train_step`: SGD with momentum, "
        "three parameter groups) on random images; `temp_MiB` is XLA's scratch for the step "
        "(mostly the activations kept for the backward pass), `peak_MiB` adds the unaliased "
        "arguments and outputs; `peak_vs_no_remat` is peak memory over that of the same T without "
        "recomputation."
    ),
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks", description=__doc__)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {PARTS}")
    p.add_argument("--out", default="runs/benchmarks", help="folder for results.md/.json")
    p.add_argument("--quick", action="store_true", help="toy sizes (the smoke test)")
    p.add_argument("--time-steps", default="2,4,6,16", help="T values of the glif part")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--shape", default="64,16,16,256", help="B,H,W,C of one time step")
    p.add_argument(
        "--shapes",
        default="64,32,32,128;64,16,16,256;64,8,8,512;64,4096;101,11,11,64;64,32,32,10",
        help="semicolon-separated shapes of one time step for the shapes part",
    )
    p.add_argument("--shapes-time-steps", type=int, default=4, help="T of the shapes part")
    p.add_argument(
        "--paths",
        default=",".join(glif_speed.PATHS),
        help="comma-separated, from scan, xla, pallas, or a kernel's settings KERNEL/FIELD=N/... "
        "(pallas/block_rows=32/sub_rows=2, xla/cpu_tuning=0: see glif_jax.kernels)",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed calls per candidate")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop")
    p.add_argument("--train-model", default="resnet19")
    p.add_argument("--train-time-steps", default="2,4,6")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--image-shape", default="32,32,3", help="H,W,C of a training image")
    p.add_argument("--train-repeats", type=int, default=3)
    return p


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.quick:
        defaults = _parser().parse_args([])
        for key, value in _QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; expected some of {PARTS}.")
    notes = dict(_NOTES)
    results = {
        "command": "python -m experiments.benchmarks " + shlex.join(argv),
        "machine": timing.machine() | {"load_at_start": timing.load_average()},
        "parts": {},
    }
    compare_torch = not args.no_torch and _torch_available()
    if "glif" in parts:
        paths = glif_speed.available_paths(args.paths.split(","))
        if len(paths) < len(args.paths.split(",")):
            notes["glif"] += " Pallas is not timed here: off GPU and TPU it only interprets."
        results["parts"]["glif"] = glif_speed.measure(
            _ints(args.time_steps),
            args.dtypes.split(","),
            _ints(args.shape),
            paths,
            args.repeats,
            compare_torch,
        )
    if "shapes" in parts:
        results["parts"]["shapes"] = glif_speed.measure_shapes(
            [_ints(shape) for shape in args.shapes.split(";") if shape],
            args.shapes_time_steps,
            glif_speed.available_paths(["xla", "pallas"]),
            args.repeats,
            compare_torch,
        )
    if "residuals" in parts:
        results["parts"]["residuals"] = residuals.measure(4, (2, 4, 4, 16), args.dtypes.split(","))
    if "training" in parts:
        # Imported here: the training stack needs the experiments extra, the other parts only JAX.
        from experiments.benchmarks import training

        results["parts"]["training"] = training.measure(
            args.train_model,
            _ints(args.train_time_steps),
            args.train_batch,
            tuple(_ints(args.image_shape)),
            args.train_repeats,
        )
    results["machine"]["load_at_end"] = timing.load_average()
    md, js = report.write(results, notes, Path(args.out))
    print(report.markdown(results, notes))
    print(f"Written: {md} and {js}")
    return results


if __name__ == "__main__":
    main()
