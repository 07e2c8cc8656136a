"""The train and eval steps compiled ahead of time (``--mode=compile``), for any devices.

``--mode=compile`` (:func:`compile_and_report`) builds the steps of a config exactly as a training
run does (:class:`experiments.train.Trainer`), compiles them for the local devices or for a named
TPU topology that this machine does not have (``--topology=v5e:16x16``: libtpu compiles for it,
from the shapes alone, no dataset needed), and reads the compiled programs: each device's FLOPs and
bytes (``cost_analysis``), its memory (``memory_analysis``), and every collective in the HLO text.
A data-parallel step divides the work when those per-device figures do not grow with the device
count and its only collectives are the reductions it needs (``docs/performance.md``).

What it writes to the workdir: ``compile.json`` (:func:`compile_and_report` documents its keys),
``train_step.hlo.txt`` and ``eval_step.hlo.txt``; it prints one summary line.

The roofline is the largest of three times per step: FLOPs over the chip's peak, bytes accessed
over its HBM bandwidth, collective bytes over its inter-chip bandwidth (:data:`CHIPS`, published
figures with their sources). It is a bound no real step beats, not a prediction.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from experiments import data, train
from experiments.settings import Settings

__all__ = [
    "CHIPS",
    "Chip",
    "CompileError",
    "Search",
    "collectives",
    "compile_and_report",
    "compile_steps",
    "find_max_batch",
    "largest_that_fits",
    "peak_bytes",
    "topology_devices",
]

ACTIVATION_BYTES = 2**20
"""A gather, all-to-all or permute moving more than this per device moves activations, not the
metrics' logits: a data-parallel step has none, and the summary line warns of one."""


class CompileError(ValueError):
    """A topology, flag or batch that cannot be compiled, said in one line."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published figures.

    Attributes:
      name: the generation as a topology names it (``"v5e"``).
      hbm_bytes: HBM capacity.
      peak_flops: peak bf16 FLOP/s.
      hbm_bytes_per_s: HBM bandwidth.
      ici_bytes_per_s: bidirectional inter-chip interconnect bandwidth per chip.
      source: where the figures come from.
      topology_options: what ``get_topology_desc`` needs to give one device per chip.
    """

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float
    source: str
    topology_options: tuple[tuple[str, Any], ...] = ()


CHIPS: dict[str, Chip] = {
    "v4": Chip(
        "v4",
        hbm_bytes=32 * 2**30,
        peak_flops=275e12,
        hbm_bytes_per_s=1200e9,
        # The v4 page gives no per-chip ICI figure: 6 links of 45 GB/s each way (How to Scale
        # Your Model, part 2, "How to think about TPUs", its table of ICI bandwidths).
        ici_bytes_per_s=6 * 2 * 45e9,
        source="cloud.google.com/tpu/docs/v4 (ICI: jax-ml.github.io/scaling-book/tpus)",
        # Megacore: one device per chip (its two TensorCores as one), as v4 pods are used.
        topology_options=(("chip_config_name", "megacore"),),
    ),
    "v5e": Chip(
        "v5e",
        hbm_bytes=16 * 2**30,
        peak_flops=197e12,
        hbm_bytes_per_s=819e9,
        ici_bytes_per_s=400e9,
        source="cloud.google.com/tpu/docs/v5e",
    ),
    "v5p": Chip(
        "v5p",
        hbm_bytes=95 * 2**30,
        peak_flops=459e12,
        hbm_bytes_per_s=2765e9,
        ici_bytes_per_s=1200e9,
        source="cloud.google.com/tpu/docs/v5p",
    ),
    "v6e": Chip(
        "v6e",
        hbm_bytes=32 * 2**30,
        peak_flops=918e12,
        hbm_bytes_per_s=1638e9,
        ici_bytes_per_s=800e9,
        source="cloud.google.com/tpu/docs/v6e",
    ),
}


def _chip(topology: str) -> Chip:
    generation, sep, shape = topology.partition(":")
    if generation not in CHIPS or not sep or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
        raise CompileError(
            f"unknown topology {topology!r}: expected GENERATION:SHAPE with GENERATION one of "
            f"{sorted(CHIPS)} and SHAPE such as 2x2, 16x16 or 4x4x4 (e.g. v5e:16x16, v4:4x4x4)."
        )
    return CHIPS[generation]


def topology_devices(topology: str, num_slices: int = 1) -> list[jax.Device]:
    """Compile-only devices of ``num_slices`` slices of a TPU ``topology`` (``"v5e:4x4"``), one per
    chip, from libtpu; no TPU is needed.

    Raises:
      CompileError: an unknown topology, libtpu missing, or a shape libtpu rejects.
    """
    chip = _chip(topology)
    if num_slices < 1:
        raise CompileError(f"--num_slices must be at least 1, got {num_slices}.")
    if importlib.util.find_spec("libtpu") is None:
        raise CompileError(
            f"--topology={topology} compiles with libtpu, which is not installed: "
            "pip install -e '.[tpu]' (libtpu for the installed JAX version)."
        )
    # Compile-only devices need no TPU host: skip asking the metadata server for one; and several
    # processes may compile at once (libtpu otherwise takes a lock file for one process).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    options = dict(chip.topology_options)
    if num_slices > 1:
        options["num_slices"] = num_slices
    try:
        description = topologies.get_topology_desc(
            topology_name=topology, platform="tpu", **options
        )
    except jax.errors.JaxRuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CompileError(f"libtpu cannot describe topology {topology!r}: {first}") from None
    return list(description.devices)


# ------------------------------------------------------------------------------------------------
# Reading a compiled program

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*(?P<result>.*?)\s"
    r"(?P<kind>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(?P<start>-start)?\(",
    re.MULTILINE,
)
_ARRAY = re.compile(r"\b(pred|bf16|[suf]\d+)\[([\d,]*)\]")


def _array_bytes(dtype: str, dims: str) -> int:
    size = math.prod(int(d) for d in dims.split(",") if d)
    return size * _DTYPE_BYTES.get(dtype, 8 if dtype.endswith("64") else 4)


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Every collective of a compiled (per-device) HLO program: ``{kind: {"count", "bytes",
    "largest_bytes"}}``, the bytes being each one's result on one device.

    An asynchronous collective counts once, at its start; a start's result holds its operand
    beside its result, so the largest array of it is taken for gathers and permutes, and the
    whole of it for all-reduces (whose operands XLA combines into one tuple).
    """
    found: dict[str, dict[str, int]] = {}
    for match in _COLLECTIVE.finditer(hlo_text):
        kind = match["kind"]
        arrays = [_array_bytes(dtype, dims) for dtype, dims in _ARRAY.findall(match["result"])]
        if match["start"] and kind != "all-reduce":
            arrays = [max(arrays, default=0)]
        entry = found.setdefault(kind, {"count": 0, "bytes": 0, "largest_bytes": 0})
        entry["count"] += 1
        entry["bytes"] += sum(arrays)
        entry["largest_bytes"] = max(entry["largest_bytes"], max(arrays, default=0))
    return found


def _first(analysis):
    # cost_analysis() is a dict, or a one-element list of one in older JAX releases.
    return analysis[0] if isinstance(analysis, list | tuple) else analysis


STEP_KEYS = (
    "flops_per_device",
    "bytes_accessed_per_device",
    "argument_bytes",
    "output_bytes",
    "alias_bytes",
    "temp_bytes",
    "peak_bytes",
    "compile_seconds",
    "collectives",
    "collective_bytes",
    "fits",
    "roofline_seconds",
    "roofline_images_per_second",
    "compiler_error",
)
"""The keys of a step's report in ``compile.json``; a step the compiler refused for want of
memory has ``fits: false``, its ``compiler_error`` and ``None`` for the figures."""


def _compile(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled | None, str | None]:
    """The compiled program, or ``(None, the compiler's first line)`` when the compiler refuses it
    for want of memory: the TPU compiler does, for a program larger than the chip's HBM (with
    XLA's status code ``RESOURCE_EXHAUSTED``); the CPU compiler never does."""
    try:
        return lowered.compile(), None
    except jax.errors.JaxRuntimeError as error:
        text = str(error).strip()
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        return None, text.splitlines()[0][:300]


def peak_bytes(memory) -> int:
    """A compiled program's memory on one device, from its ``memory_analysis()``: arguments,
    outputs and temporaries, a donated argument counted once (it shares its buffer with the
    output it aliases)."""
    return int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )


def _step_report(lowered: jax.stages.Lowered, chip: Chip | None, hbm_bytes: int | None):
    start = time.perf_counter()
    compiled, refused = _compile(lowered)
    seconds = time.perf_counter() - start
    if compiled is None:
        # What the compiler says is all there is: the program was never laid out in memory.
        report = dict.fromkeys(STEP_KEYS)
        report.update(
            compile_seconds=round(seconds, 2), collectives={}, fits=False, compiler_error=refused
        )
        return report, ""
    cost = _first(compiled.cost_analysis()) or {}
    memory = compiled.memory_analysis()
    hlo = compiled.as_text()
    found = collectives(hlo)
    argument = int(memory.argument_size_in_bytes)
    output = int(memory.output_size_in_bytes)
    alias = int(memory.alias_size_in_bytes)
    temp = int(memory.temp_size_in_bytes)
    peak = peak_bytes(memory)
    flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    collective_bytes = sum(entry["bytes"] for entry in found.values())
    report = {
        "flops_per_device": flops,
        "bytes_accessed_per_device": bytes_accessed,
        "argument_bytes": argument,
        "output_bytes": output,
        "alias_bytes": alias,
        "temp_bytes": temp,
        "peak_bytes": peak,
        "compile_seconds": round(seconds, 2),
        "collectives": found,
        "collective_bytes": collective_bytes,
        "fits": None if hbm_bytes is None else peak <= hbm_bytes,
        "roofline_seconds": None,
        "roofline_images_per_second": None,
        "compiler_error": None,
    }
    if chip is not None:
        report["roofline_seconds"] = max(
            flops / chip.peak_flops,
            bytes_accessed / chip.hbm_bytes_per_s,
            collective_bytes / chip.ici_bytes_per_s,
        )
    return report, hlo


def _batch(info: data.DatasetInfo, global_batch: int, sharding, *, eval: bool) -> dict:
    batch = {
        "image": jax.ShapeDtypeStruct(
            (global_batch, *info.image_shape), jnp.float32, sharding=sharding
        ),
        "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=sharding),
    }
    if eval:
        batch["mask"] = jax.ShapeDtypeStruct((global_batch,), jnp.bool_, sharding=sharding)
    return batch


def _local_hbm_bytes(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("bytes_limit")


def _memory_to_fit(devices: Sequence[jax.Device], chip: Chip | None) -> int:
    """The bytes a step must fit in on each device, for ``find_max_batch``.

    Raises:
      CompileError: the devices do not report their memory (a CPU).
    """
    hbm_bytes = chip.hbm_bytes if chip else _local_hbm_bytes(devices[0])
    if hbm_bytes is None:
        raise CompileError(
            f"--find_max_batch needs the devices' memory size, which {devices[0].device_kind} "
            "does not report: pass --topology, or run on a GPU or TPU."
        )
    return hbm_bytes


def compile_steps(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device],
    *,
    chip: Chip | None = None,
    steps: Sequence[str] = ("train", "eval"),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Compile the train and eval steps of ``config`` (global batch ``config.batch_size``) for a
    1-D data-parallel mesh over ``devices``; no data is read.

    Args:
      config: a training config.
      devices: local devices, or compile-only devices of a topology.
      chip: the chip's figures, for ``fits`` and the roofline (``None``: the local device's memory,
        if it reports one, and no roofline).
      steps: which of ``"train"`` and ``"eval"`` to compile.

    Returns:
      The report (the keys of ``compile.json`` but ``topology``) and each step's HLO text.
    """
    info = data.dataset_info(config.dataset)
    global_batch = config.batch_size
    mesh = train.make_mesh(global_batch, devices)
    trainer = train.Trainer(Settings.from_config(config), info.num_classes, 1, mesh)
    hbm_bytes = chip.hbm_bytes if chip else _local_hbm_bytes(devices[0])
    param_bytes = sum(
        math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(trainer.abstract_state.params)
    )
    report: dict[str, Any] = {
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "global_batch": global_batch,
        "per_device_batch": global_batch // len(devices),
        "param_bytes": int(param_bytes),
        "hbm_bytes_per_device": hbm_bytes,
    }
    hlo = {}
    for which in steps:
        batch = _batch(info, global_batch, trainer.batch_sharding, eval=which == "eval")
        step, hlo[which] = _step_report(trainer.lower(which, batch), chip, hbm_bytes)
        if step["roofline_seconds"]:
            step["roofline_images_per_second"] = (
                global_batch / step["roofline_seconds"] / len(devices)
            )
        report[f"{which}_step"] = step
    return report, hlo


@dataclasses.dataclass(frozen=True)
class Search:
    """What :func:`largest_that_fits` found.

    Attributes:
      largest: the largest size that fits (0 if none did).
      smallest_failure: the smallest size that did not (``None`` if every probe fitted).
      probes: ``(size, fitted)`` in the order tried.
      exact: the search ended by its own rule (the bound fits, or the bracket is within the
        tolerance), not by its deadline.
    """

    largest: int
    smallest_failure: int | None
    probes: tuple[tuple[int, bool], ...]
    exact: bool


def largest_that_fits(
    fits: Callable[[int], bool],
    *,
    start: int,
    upper: int,
    tolerance: float = 0.0,
    deadline: float | None = None,
) -> Search:
    """The largest size for which ``fits`` holds, assuming that it holds below some size.

    Doubling from ``start`` until a size does not fit or ``upper`` does, then bisection between
    the largest fit (0 if none) and the smallest failure until they are at most
    ``max(1, tolerance · largest)`` apart. Each probe is a compile (``--find_max_batch``) or a
    training step (the GPU benchmark), so the search is what counts them.

    Args:
      fits: one probe: whether a size fits.
      start, upper: the first size probed, and the largest.
      tolerance: the bisection's stopping gap, relative to the largest fit.
      deadline: ``time.time()`` after which no further probe starts; the first always runs
        (``None``: no limit).
    """
    if not 1 <= start <= upper:
        raise ValueError(f"need 1 <= start <= upper, got start={start}, upper={upper}.")
    low, high, probes = 0, None, []  # low fits (0 trivially), high does not

    def done() -> bool:
        bracketed = high is not None and high - low <= max(1, int(tolerance * low))
        return low >= upper or bracketed

    def out_of_time() -> bool:
        return deadline is not None and time.time() > deadline

    size = start
    while not done() and not (probes and out_of_time()):
        fitted = bool(fits(size))
        probes.append((size, fitted))
        low, high = (size, high) if fitted else (low, size)
        size = min(2 * size, upper) if high is None else (low + high) // 2
    return Search(low, high, tuple(probes), exact=done())


def find_max_batch(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device],
    *,
    chip: Chip | None,
    start: int = 1,
    upper: int = 4096,
    tolerance: float = 0.0,
) -> int:
    """The largest per-device batch whose train step fits the device's memory, by compiling
    (:func:`largest_that_fits` from ``start``): 0 if one image does not fit, ``upper`` if that
    does.

    Raises:
      CompileError: the device's memory is unknown (a CPU), so nothing can be said to fit.
    """
    hbm_bytes = _memory_to_fit(devices, chip)
    info = data.dataset_info(config.dataset)

    def fits(per_device: int) -> bool:
        trial = config.copy_and_resolve_references()
        trial.batch_size = per_device * len(devices)
        trainer = train.Trainer(
            Settings.from_config(trial),
            info.num_classes,
            1,
            train.make_mesh(trial.batch_size, devices),
        )
        batch = _batch(info, trial.batch_size, trainer.batch_sharding, eval=False)
        compiled, _ = _compile(trainer.lower("train", batch))
        if compiled is None:
            return False
        return peak_bytes(compiled.memory_analysis()) <= hbm_bytes

    start = max(1, min(start, upper))
    return largest_that_fits(fits, start=start, upper=upper, tolerance=tolerance).largest


def compile_and_report(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    topology: str | None = None,
    num_slices: int = 1,
    per_device_batch: int | None = None,
    max_batch: bool = False,
) -> dict[str, Any]:
    """Compile the steps of ``config`` and write ``compile.json`` and the HLO texts to ``workdir``.

    ``compile.json``: ``topology`` (``null`` for the local devices), ``devices``,
    ``device_kind``, ``global_batch``, ``per_device_batch``, ``param_bytes``,
    ``hbm_bytes_per_device``, and per step (``train_step``, ``eval_step``):
    ``flops_per_device``, ``bytes_accessed_per_device``, ``argument_bytes``, ``output_bytes``,
    ``alias_bytes``, ``temp_bytes``, ``peak_bytes`` (arguments + outputs − donated + temporaries),
    ``compile_seconds``, ``collectives`` (``{kind: {count, bytes, largest_bytes}}``),
    ``collective_bytes``, ``fits``, ``roofline_seconds``, ``roofline_images_per_second`` (per
    device); with ``max_batch``, ``max_per_device_batch`` ``{"remat": n, "no_remat": n}``.

    Args:
      config: a training config; its ``batch_size`` is the global batch unless
        ``per_device_batch`` is given.
      workdir: where to write.
      topology: a TPU topology such as ``"v5e:16x16"``; ``None``: the local devices.
      num_slices: slices of ``topology``.
      per_device_batch: images per device (overrides ``config.batch_size``).
      max_batch: also find the largest per-device batch that fits, with and without remat.

    Raises:
      CompileError: bad flags, a topology that cannot be described, or a batch the devices cannot
        split.
    """
    if topology is None:
        if num_slices != 1:
            raise CompileError("--num_slices goes with --topology.")
        devices, chip = jax.devices(), None
    else:
        devices, chip = topology_devices(topology, num_slices), _chip(topology)
    if max_batch:
        _memory_to_fit(devices, chip)  # before the first compile, not after it
    config = config.copy_and_resolve_references()
    if per_device_batch is not None:
        if per_device_batch < 1:
            raise CompileError(f"--per_device_batch must be positive, got {per_device_batch}.")
        config.batch_size = per_device_batch * len(devices)
    if config.batch_size % len(devices):
        raise CompileError(
            f"batch_size={config.batch_size} (the global batch) does not divide by the "
            f"{len(devices)} devices; choose a multiple of {len(devices)}, or --per_device_batch."
        )
    report, hlo = compile_steps(config, devices, chip=chip)
    report = {"topology": topology, "num_slices": num_slices, **report}
    if chip is not None:
        report["chip"] = dataclasses.asdict(chip) | {"topology_options": None}
    if max_batch:
        found = {}
        for remat in (False, True):
            trial = config.copy_and_resolve_references()
            trial.model_options.remat = remat
            found["remat" if remat else "no_remat"] = find_max_batch(
                trial, devices, chip=chip, start=config.batch_size // len(devices)
            )
        report["max_per_device_batch"] = found
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "compile.json").write_text(json.dumps(report, indent=2) + "\n")
    for which, text in hlo.items():
        (workdir / f"{which}_step.hlo.txt").write_text(text)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line: where, how many devices, and the train step's per-device figures."""
    step = report["train_step"]
    where = report["topology"] or "local devices"
    if step["compiler_error"]:
        return (
            f"{where}: {report['devices']} × {report['device_kind']}, "
            f"{report['per_device_batch']} per device; train step DOES NOT FIT, the compiler "
            f"refused it: {step['compiler_error']}"
        )
    kinds = ", ".join(
        f"{kind} ×{entry['count']} {entry['bytes'] / 2**20:.1f} MiB"
        for kind, entry in sorted(step["collectives"].items())
    )
    fits = {None: "", True: " (fits)", False: " (DOES NOT FIT)"}[step["fits"]]
    line = (
        f"{where}: {report['devices']} × {report['device_kind']}, {report['per_device_batch']} "
        f"per device; train step {step['flops_per_device'] / 1e9:.1f} GFLOP and "
        f"{step['peak_bytes'] / 2**30:.2f} GiB peak per device{fits}, "
        f"collectives: {kinds or 'none'}; compiled in {step['compile_seconds']:.0f} s"
    )
    if step["roofline_images_per_second"]:
        line += f"; roofline {step['roofline_images_per_second']:.0f} images/s per chip"
    if "max_per_device_batch" in report:
        found = report["max_per_device_batch"]
        line += f"; largest batch per device {found['no_remat']} ({found['remat']} with remat)"
    moving = sorted(
        kind
        for kind, entry in step["collectives"].items()
        if kind != "all-reduce" and entry["largest_bytes"] > ACTIVATION_BYTES
    )
    if moving:
        line += f"; WARNING: activations cross devices ({', '.join(moving)}): see the HLO text"
    return line
