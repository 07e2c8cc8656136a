"""Run the benchmark suite: ``python -m experiments.benchmarks [--quick] [--parts ...]``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from experiments.benchmarks import glif_speed, report, residuals, timing

PARTS = ("glif", "shapes", "residuals", "training", "max_batch")
DEFAULT_PARTS = ("glif", "shapes", "residuals", "training")

_QUICK = {
    "time_steps": "2,4",
    "shape": "2,4,4,16",
    "shapes": "2,4,4,16;3,5,16",
    "repeats": 2,
    "train_model": "spiking_cnn",
    "train_time_steps": "2",
    "train_batch": "2",
    "image_shape": "8,8,1",
    "train_repeats": 1,
    "max_batch_time_steps": "2",
    "max_batch_start": 2,
    "max_batch_upper": 2,
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
        "One training step of the reference's recipe on random images: glif_jax's "
        "(`experiments.train.train_step`: SGD with momentum, three parameter groups, jitted with "
        "the state donated) and, for ResNet-19, the same network, weights, recipe and batch in "
        "the PyTorch transcription (`experiments/benchmarks/torch_networks.py`: the per-step GLIF "
        "loop over (T, B, C, H, W), tdBN), eager as the reference runs it (cuDNN deterministic, "
        "benchmark off; bfloat16 through autocast, the reference's --amp path) and under "
        "`torch.compile`. `step_ms` is the best of the timed steps after one warm-up step, "
        "`images/s` the batch over it. `conv_TFLOP/s` counts 3 × 2 × the forward convolutions' "
        "MACs × T × batch per step (forward, and the input and kernel gradients), over the best "
        "step; `of_peak` divides it by the device's dense peak for the dtype (H200: 494.7 TF32, "
        "989.4 BF16; `--peak-tflops`). `peak_MiB`: glif_jax's is XLA's account of the compiled "
        "step (arguments and outputs not aliased, plus `temp_MiB`, its scratch); PyTorch's "
        "`torch.cuda.max_memory_allocated` (on a GPU). `vs_eager`/`vs_compiled`: glif_jax's "
        "images/s over that PyTorch row's. The precision columns state what each side's "
        "float32 convolutions may use: JAX's default matmul precision (None, JAX's default, "
        "lets XLA use TF32 on NVIDIA GPUs since Ampere) and PyTorch's cuDNN TF32 switch. "
        "Rows past `--train-budget-s` are listed as skipped. `peak_vs_no_remat`: peak memory "
        "with recomputation over that without."
    ),
    "max_batch": (
        "The largest batch of one training step that fits on the device, by doubling from "
        "`--max-batch-start` and then bisecting to within `--max-batch-tolerance` of the "
        "largest fit; `probes` lists each batch tried (✓ fits, ✗ out of memory, or past cuDNN's"
        " 32-bit size limit). `exact` is false when the time budget ended the search "
        "(`max_batch` is then a lower bound; every search makes at least one probe), and a "
        "search that reaches `--max-batch-upper` reports that bound. On a GPU each search runs in "
        "a fresh process: glif_jax with XLA's allocator given 92% of the device at start, "
        "PyTorch with its caching allocator. PyTorch's `remat` is `torch.utils.checkpoint` "
        "around each residual block (not an option of the reference)."
    ),
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks", description=__doc__)
    p.add_argument(
        "--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, from {PARTS}"
    )
    p.add_argument("--out", default="runs/benchmarks", help="folder for results.md/.json")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the parts of the results.json already in --out that this run does not redo",
    )
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
    p.add_argument(
        "--train-model-options",
        default="{}",
        help="JSON of extra model options, e.g. '{\"stem_channels\": 8}'",
    )
    p.add_argument("--train-time-steps", default="2,4,6", help="T values of the training part")
    p.add_argument("--train-batch", default="64,128", help="batch sizes of the training part")
    p.add_argument("--train-dtypes", default="float32,bfloat16", help="compute dtypes")
    p.add_argument("--image-shape", default="32,32,3", help="H,W,C of a training image")
    p.add_argument("--train-repeats", type=int, default=5, help="timed steps after a warm-up")
    p.add_argument(
        "--train-torch",
        default="eager,compiled",
        help="PyTorch rows of the training part (ResNet-19 only): eager, compiled, or none",
    )
    p.add_argument(
        "--train-remat", action="store_true", help="also time glif_jax with recomputation"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s (default: an H200's dense 494.7 TF32 / 989.4 BF16)",
    )
    p.add_argument(
        "--train-budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the training grid; later settings are reported as skipped",
    )
    p.add_argument("--max-batch-time-steps", default="4,6", help="T values of the max_batch part")
    p.add_argument("--max-batch-dtype", default="float32")
    p.add_argument("--max-batch-start", type=int, default=64, help="the first batch probed")
    p.add_argument("--max-batch-upper", type=int, default=8192, help="the largest batch probed")
    p.add_argument(
        "--max-batch-tolerance",
        type=float,
        default=1 / 16,
        help="stop bisecting when the bracket is this fraction of the largest fit",
    )
    p.add_argument(
        "--max-batch-budget-s",
        type=float,
        default=None,
        help="wall-clock budget of all the searches (a search out of time reports its bracket)",
    )
    p.add_argument(
        "--max-batch-isolate",
        choices=("auto", "yes", "no"),
        default="auto",
        help="each search in a fresh process (auto: on GPUs)",
    )
    return p


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _saver(results: dict, notes: dict, out: Path, part: str):
    """A callback that writes ``results`` with ``part``'s rows so far."""

    def on_rows(rows):
        results["parts"][part] = rows
        report.write(results, notes, out)

    return on_rows


def _training(args, results: dict, notes: dict, compare_torch: bool) -> None:
    """The training part, written out after every row."""
    # Imported here: the training stack needs the experiments extra, the other parts only JAX.
    from experiments.benchmarks import training

    variants = [v for v in args.train_torch.split(",") if v and v != "none"]
    unknown = set(variants) - set(training.TORCH_VARIANTS)
    if unknown:
        raise SystemExit(
            f"unknown --train-torch {sorted(unknown)}; expected some of {training.TORCH_VARIANTS}."
        )
    results["parts"]["training"] = training.measure(
        args.train_model,
        _ints(args.train_time_steps),
        _ints(args.train_batch),
        [d for d in args.train_dtypes.split(",") if d],
        tuple(_ints(args.image_shape)),
        args.train_repeats,
        torch_variants=variants if compare_torch else (),
        remat=args.train_remat,
        model_options=json.loads(args.train_model_options),
        peak_tflops_override=args.peak_tflops,
        budget_s=args.train_budget_s,
        on_rows=_saver(results, notes, Path(args.out), "training"),
    )


def _max_batch(args, results: dict, notes: dict, compare_torch: bool) -> None:
    """The max_batch part, written out after every search."""
    from experiments.benchmarks import max_batch

    results["parts"]["max_batch"] = max_batch.measure(
        args.train_model,
        _ints(args.max_batch_time_steps),
        tuple(_ints(args.image_shape)),
        dtype=args.max_batch_dtype,
        frameworks=("glif_jax", "pytorch eager") if compare_torch else ("glif_jax",),
        start=args.max_batch_start,
        upper=args.max_batch_upper,
        tolerance=args.max_batch_tolerance,
        model_options=json.loads(args.train_model_options),
        budget_s=args.max_batch_budget_s,
        isolate={"auto": None, "yes": True, "no": False}[args.max_batch_isolate],
        on_rows=_saver(results, notes, Path(args.out), "max_batch"),
    )


def _previous_results(out: Path) -> dict | None:
    path = out / "results.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise SystemExit(f"--append: {path} is not JSON ({error}); move it away first.") from None


def main(argv: list[str] | None = None) -> dict:
    """Run the parts that ``argv`` asks for; write and print their tables.

    Args:
      argv: the command line after the program's name (default: ``sys.argv[1:]``).

    Returns:
      The results: ``command``, ``machine`` and ``parts`` (part → rows), as written to
      ``results.json``.
    """
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
    if {"training", "max_batch"} & set(parts):
        # Not most of the device for JAX at start: PyTorch runs in the same process, and the
        # max_batch part's searches in processes of their own.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    command = "python -m experiments.benchmarks " + shlex.join(argv)
    previous = _previous_results(Path(args.out)) if args.append else None
    results = {
        "command": command if previous is None else f"{previous['command']}; {command}",
        "machine": timing.machine() | {"load_at_start": timing.load_average()},
        "parts": {} if previous is None else dict(previous["parts"]),
    }
    results["machine"]["xla_python_client_preallocate"] = os.environ.get(
        "XLA_PYTHON_CLIENT_PREALLOCATE", ""
    )
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
    if "max_batch" in parts:
        if "training" in parts and "training" not in results["parts"]:
            results["parts"]["training"] = []  # its table first, filled below
        # Before the training part: on a GPU each search runs in a fresh process, and needs the
        # device that this process's memory pools would hold after the timed steps.
        _max_batch(args, results, notes, compare_torch)
    if "training" in parts:
        _training(args, results, notes, compare_torch)
    results["machine"]["load_at_end"] = timing.load_average()
    md, js = report.write(results, notes, Path(args.out))
    print(report.markdown(results, notes))
    print(f"Written: {md} and {js}")
    return results


if __name__ == "__main__":
    main()
