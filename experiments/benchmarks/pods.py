"""TPU pods, compiled here, not run: the training step of the paper's networks on four pods.

    python -m experiments.benchmarks.pods --out experiments/benchmarks/results-tpu-pods --jobs 2

For every row (a network, T and dtype) and pod, the train step is compiled by libtpu for the pod's
topology at 64 images per chip (:mod:`experiments.aot`), each cell in a process of its own; the
cells' reports are kept as JSON in ``--out`` (a rerun skips the cells it has) and assembled into
``--out``/results.md: memory per chip against HBM, FLOPs and bytes per chip, collective bytes per
step, compile time, and the roofline's images/s per chip and per pod. ``--implementations``
compares the compiled costs of the GLIF implementations on one slice; ``--max-batch`` finds the
largest batch per chip that fits, to within 1/16, on a 2x2 slice of a generation (a data-parallel
step's program per chip is the same on any number of chips: only its all-reduce's group grows).

Nothing here runs on a TPU: every figure is the compiler's (cost and memory analysis) or the
roofline's bound from the chips' published figures (:data:`experiments.aot.CHIPS`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROWS = {
    "resnet19-t4-fp32": ("cifar.py:model=resnet19,t=4", {}),
    "resnet19-t4-bf16": ("cifar.py:model=resnet19,t=4", {"compute_dtype": "bfloat16"}),
    "resnet19-t6-fp32": ("cifar.py:model=resnet19,t=6", {}),
    "resnet19-t6-bf16": ("cifar.py:model=resnet19,t=6", {"compute_dtype": "bfloat16"}),
    "ms_resnet18-t6-fp32": ("imagenet.py:model=ms_resnet18,t=6", {}),
}
PODS = {
    "v5e-256": "v5e:16x16",
    "v4-128": "v4:4x4x4",
    "v5p-128": "v5p:4x4x4",
    "v6e-256": "v6e:16x16",
}
SLICES = {"v5e": "v5e:2x2", "v4": "v4:2x2x1", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
PER_CHIP = 64
MAX_BATCH_UPPER = 1024
"""The largest batch per chip a search probes: a row that reaches it says so (``≥ 1024``)."""


def _config(row: str, implementation: str | None = None, remat: bool = False):
    file, overrides = ROWS[row]
    module_name, _, variant = file.partition(":")
    module = importlib.import_module(f"experiments.configs.{module_name.removesuffix('.py')}")
    config = module.get_config(variant)
    for key, value in overrides.items():
        config[key] = value
    if implementation:
        config.model_options.implementation = implementation
    config.model_options.remat = remat
    return config


def cell(kind: str, row: str, where: str, option: str) -> dict:
    """One compile, in this process: ``kind`` is ``step`` (the train step on ``where`` at 64 per
    chip, ``option`` the implementation) or ``max_batch`` (``option`` ``remat`` or not)."""
    import time

    from experiments import aot

    start = time.perf_counter()
    devices = aot.topology_devices(where)
    chip = aot.CHIPS[where.split(":")[0]]
    if kind == "max_batch":
        config = _config(row, remat=option == "remat")
        found = aot.find_max_batch(
            config, devices, chip=chip, start=PER_CHIP, upper=MAX_BATCH_UPPER, tolerance=1 / 16
        )
        return {"max_per_chip": found, "wall_seconds": time.perf_counter() - start}
    config = _config(row, implementation=option)
    config.batch_size = PER_CHIP * len(devices)
    report, _ = aot.compile_steps(config, devices, chip=chip, steps=("train",))
    report["wall_seconds"] = time.perf_counter() - start
    return report


def _run_cell(out: Path, kind: str, row: str, where: str, option: str) -> str:
    name = f"{kind}--{row}--{where.replace(':', '_')}--{option}"
    path = out / f"{name}.json"
    if path.exists():
        return f"{name}: kept"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.pods", "--cell", kind, row, where, option],
        capture_output=True,
        text=True,
        env={**os.environ, "TPU_SKIP_MDS_QUERY": "1", "JAX_PLATFORMS": "cpu"},
    )
    if result.returncode:
        return f"{name}: FAILED {result.stderr.strip().splitlines()[-1:]}"
    path.write_text(result.stdout.strip().splitlines()[-1] + "\n")
    return f"{name}: done"


def _largest(report: dict | None) -> str:
    """A max-batch cell: its batch, ``≥`` the bound when the bound fits."""
    if report is None:
        return "–"
    found = report["max_per_chip"]
    return f"≥ {found}" if found >= MAX_BATCH_UPPER else str(found)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def table(out: Path) -> str:
    """results.md from the cells in ``out``."""
    from experiments import aot

    def load(name):
        path = out / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    lines = [
        "# TPU pods, compiled here, not run",
        "",
        "Command: `python -m experiments.benchmarks.pods --out experiments/benchmarks/"
        "results-tpu-pods --jobs 2` (libtpu "
        "from `pip install -e '.[tpu]'`; no TPU). The train step at "
        f"{PER_CHIP} images per chip, data-parallel over every chip of the pod. Memory, FLOPs "
        "and bytes are the compiler's figures for one chip's program; collective bytes are its "
        "all-reduces' results on one chip (the gradients, BN statistics and metrics); the "
        "roofline is the largest of FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth and "
        "collective bytes / ICI bandwidth, a bound no real step beats.",
        "",
        "| network | pod | chips | peak GiB per chip / HBM | GFLOP per chip | GB accessed per chip "
        "| collective MiB per step | compile s | roofline images/s per chip | per pod |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        for pod, topology in PODS.items():
            report = load(f"step--{row}--{topology.replace(':', '_')}--auto")
            if report is None:
                lines.append(f"| {row} | {pod} | | not compiled | | | | | | |")
                continue
            step = report["train_step"]
            if step.get("compiler_error"):
                lines.append(
                    f"| {row} | {pod} | {report['devices']} | does not fit: "
                    f"{step['compiler_error']} | | | | | | |"
                )
                continue
            fits = "" if step["fits"] else " **does not fit**"
            per_chip = step["roofline_images_per_second"]
            lines.append(
                f"| {row} | {pod} | {report['devices']} | {_gib(step['peak_bytes'])} / "
                f"{_gib(report['hbm_bytes_per_device'])}{fits} | "
                f"{step['flops_per_device'] / 1e9:.0f} | "
                f"{step['bytes_accessed_per_device'] / 1e9:.1f} | "
                f"{step['collective_bytes'] / 2**20:.1f} | {step['compile_seconds']:.0f} | "
                f"{per_chip:.0f} | {per_chip * report['devices']:,.0f} |"
            )
    implementations = [
        (impl, load(f"step--resnet19-t4-fp32--v5e_2x2--{impl}"))
        for impl in ("scan", "xla", "pallas")
    ]
    if any(report for _, report in implementations):
        lines += [
            "",
            "## The GLIF implementations on TPU (ResNet-19, T = 4, float32, v5e 2x2)",
            "",
            "| implementation | peak GiB per chip | temporaries GiB | GFLOP per chip "
            "| GB accessed per chip | roofline images/s per chip |",
            "|---|---|---|---|---|---|",
        ]
        for impl, report in implementations:
            if report is None:
                lines.append(f"| {impl} | not compiled | | | | |")
                continue
            step = report["train_step"]
            lines.append(
                f"| {impl} | {_gib(step['peak_bytes'])} | {_gib(step['temp_bytes'])} | "
                f"{step['flops_per_device'] / 1e9:.0f} | "
                f"{step['bytes_accessed_per_device'] / 1e9:.1f} | "
                f"{step['roofline_images_per_second']:.0f} |"
            )
    found = {
        (row, generation, option): load(f"max_batch--{row}--{topology.replace(':', '_')}--{option}")
        for row in ROWS
        for generation, topology in SLICES.items()
        for option in ("no_remat", "remat")
    }
    if any(found.values()):
        lines += [
            "",
            "## The largest batch per chip that fits (the train step compiled on a 2x2 slice)",
            "",
            "| network | " + " | ".join(SLICES) + " |",
            "|---|" + "---|" * len(SLICES),
        ]
        for row in ROWS:
            cells = []
            for generation in SLICES:
                plain, remat = (found[(row, generation, o)] for o in ("no_remat", "remat"))
                if plain is None and remat is None:
                    cells.append("")
                    continue
                cells.append(f"{_largest(plain)} ({_largest(remat)} with remat)")
            if any(cells):
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Chips' figures:", ""]
    lines += [
        f"- {c.name}: {c.hbm_bytes / 2**30:.0f} GiB HBM at {c.hbm_bytes_per_s / 1e9:.0f} GB/s, "
        f"{c.peak_flops / 1e12:.0f} TFLOP/s bf16, ICI {c.ici_bytes_per_s / 1e9:.0f} GB/s "
        f"({c.source})"
        for c in aot.CHIPS.values()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/benchmarks/results-tpu-pods")
    parser.add_argument("--jobs", type=int, default=2, help="cells compiled at once")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--pods", default=",".join(PODS))
    parser.add_argument("--implementations", action="store_true")
    parser.add_argument("--max-batch", default="", help="rows whose largest batch to find")
    parser.add_argument(
        "--max-batch-generations", default="v5e", help="generations to find it for (2x2 slices)"
    )
    parser.add_argument("--cell", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(cell(*args.cell)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    if args.implementations:
        cells += [("step", "resnet19-t4-fp32", "v5e:2x2", i) for i in ("scan", "xla", "pallas")]
    cells += [
        ("step", row, PODS[pod], "auto")
        for row in args.rows.split(",")
        for pod in args.pods.split(",")
    ]
    # Every row's plain step before any with recomputation: the figure a reader looks for first.
    cells += [
        ("max_batch", row, topology, option)
        for option in ("no_remat", "remat")
        for row in filter(None, args.max_batch.split(","))
        for topology in (SLICES[g] for g in args.max_batch_generations.split(","))
    ]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda c: _run_cell(out, *c), cells):
            print(line, flush=True)
            (out / "results.md").write_text(table(out))
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
