"""Results as markdown tables and JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Column → format of its cells; a column absent from a table's rows is left out.
_FORMATS = {
    "best_ms": "{:.2f}",
    "median_ms": "{:.2f}",
    "GB/s": "{:.2f}",
    "of_ceiling": "{:.2f}",
    "vs_pytorch_reference": "{:.2f}×",
    "vs_pytorch_channel_last": "{:.2f}×",
    "bytes_per_neuron_step": "{:g}",
    "compile_s": "{:.1f}",
    "step_ms": "{:.1f}",
    "median_step_ms": "{:.1f}",
    "images/s": "{:.2f}",
    "conv_TFLOP/s": "{:.3g}",
    "of_peak": "{:.3f}",
    "temp_MiB": "{:.0f}",
    "peak_MiB": "{:.0f}",
    "peak_vs_no_remat": "{:.2f}",
    "vs_eager": "{:.2f}×",
    "vs_compiled": "{:.2f}×",
    "search_s": "{:.0f}",
}


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return "–".join(_cell(column, v) for v in value)
    # An error message must stay in its cell.
    return _FORMATS.get(column, "{}").format(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table with one column per key of the first row."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def markdown(results: Mapping[str, Any], notes: Mapping[str, str]) -> str:
    """The whole report: the machine and settings, then one section per part."""
    machine = results["machine"]
    lines = ["# glif_jax benchmarks", "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += ["", f"Command: `{results['command']}`", ""]
    for part, rows in results["parts"].items():
        lines += [f"## {part}", ""]
        if part in notes:
            lines += [notes[part], ""]
        lines.append(markdown_table(rows))
    return "\n".join(lines)


def write(results: Mapping[str, Any], notes: Mapping[str, str], out: Path) -> tuple[Path, Path]:
    """Writes ``results.md`` and ``results.json`` under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "results.md", out / "results.json"
    # Whole files or none: a run stopped while writing keeps the previous tables.
    for path, text in (
        (md, markdown(results, notes)),
        (js, json.dumps(results, indent=1, default=str) + "\n"),
    ):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
    return md, js
