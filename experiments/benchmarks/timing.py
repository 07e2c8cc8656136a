"""Timing and the description of the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def interleaved_times(
    candidates: Mapping[str, Callable[[], Any]], repeats: int
) -> dict[str, list[float]]:
    """Wall time of each candidate, in seconds, run in turn ``repeats`` times.

    Each candidate is called once first (compilation and warm-up, not timed); then every round
    calls each candidate once, so that all of them see the same load on a shared machine. Every
    call allocates fresh outputs and is waited for with ``jax.block_until_ready``.

    Args:
      candidates: name → a function of no arguments.
      repeats: timed calls per candidate.

    Returns:
      name → the ``repeats`` wall times, in seconds.
    """
    for fn in candidates.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The 1-minute load average (NaN where the OS does not report it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def _transparent_huge_pages() -> str:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or ``""``."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            modes = f.read().split()
    except OSError:
        return ""
    return next((m.strip("[]") for m in modes if m.startswith("[")), "")


def machine() -> dict[str, Any]:
    """The CPU model, core count, Python, JAX and backend of this run, and the memory settings
    that change the cost of fresh outputs (transparent huge pages, glibc's tunables)."""
    import jaxlib

    device = jax.devices()[0]
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "transparent_hugepage": _transparent_huge_pages(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }


def progress(message: str) -> None:
    """One line of progress on stderr (the tables go to stdout at the end)."""
    print(message, file=sys.stderr, flush=True)
