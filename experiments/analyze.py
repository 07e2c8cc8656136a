"""Spike activity and energy of a trained network over the test split (``--mode=analyze``).

Runs :func:`glif_jax.analysis.analyze` over the whole evaluation split, with a progress bar, and
writes into the workdir:

- ``analysis.json``: the report of :func:`glif_jax.analysis.analyze` (``layers``, ``totals``),
  with the model, dataset and checkpoint it describes;
- ``analysis.md``: the two verdicts (SNN against the same network as an ANN, by operations only
  and by operations + memory traffic), the per-layer tables of operations and of bytes moved,
  and the firing rate of every GLIF layer at every time step;
- ``analysis_rates.png``: the firing rate of every GLIF layer at every time step, and per layer;
- ``analysis_energy.png``: the energy per image of every layer, SNN against ANN, by operations
  only and by operations + memory traffic.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import data, reporting, train
from experiments.settings import Settings
from glif_jax import analysis

__all__ = ["analyze", "analyze_model", "summary_line"]


def analyze(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    checkpoint: str = "best",
    reference_checkpoint: str | None = None,
) -> dict[str, Any]:
    """Analyse ``workdir``'s ``checkpoint`` (``latest`` or ``best``), or a released reference
    checkpoint file, over the test split; writes the files of the module docstring.

    Raises:
      RuntimeError: more than one process (the analysis runs on one host).
    """
    workdir = Path(workdir)
    _check_single_process()
    settings = Settings.from_config(config)
    trainer, state, source = train.load_for_evaluation(
        settings, workdir, checkpoint=checkpoint, reference_checkpoint=reference_checkpoint
    )
    return analyze_model(trainer.model(state), settings, workdir, source=source, mesh=trainer.mesh)


def _check_single_process() -> None:
    if jax.process_count() > 1:
        raise RuntimeError(
            "the spike analysis runs on one process; run --mode=analyze on a single host."
        )


def analyze_model(
    model,
    settings: Settings,
    workdir: Path,
    *,
    source: str,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Analyse ``model`` (in evaluation mode) over the test split of ``settings``' dataset and
    write the report, its table and plots into ``workdir``.

    With ``mesh`` (the one ``model``'s state is replicated over) every batch is split over its
    devices, each device analysing its own share; a batch the devices cannot split evenly (the
    split's last) runs whole on each.
    """
    _check_single_process()
    info = data.dataset_info(settings.input.dataset)
    batches = data.eval_batches(
        settings.input.dataset,
        data_dir=settings.input.data_dir,
        global_batch_size=settings.input.batch_size,
    )
    with tqdm.tqdm(total=info.num_eval, desc="spike analysis", unit="img") as bar:

        def placed(images):
            if mesh is None:
                return images
            spec = P("data") if len(images) % mesh.size == 0 else P()
            return jax.device_put(images, NamedSharding(mesh, spec))

        def real_examples():
            for batch in batches:
                images = batch["image"][batch["mask"]]
                yield placed(images)
                bar.update(len(images))

        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            report = analysis.analyze(model, real_examples())
    report = {
        "model": settings.network.model,
        "dataset": settings.input.dataset,
        "split": "eval",
        "source": source,
        **report,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_atomically(workdir / "analysis.json", reporting.strict_json(report, indent=1))
    reporting.write_atomically(workdir / "analysis.md", markdown(report))
    plot_rates(report, workdir / "analysis_rates.png")
    plot_energy(report, workdir / "analysis_energy.png")
    return report


def _less_or_more(ratio: float) -> str:
    return f"{ratio:.1f}× less" if ratio >= 1 else f"{1 / ratio:.1f}× more"


def summary_line(report: dict[str, Any]) -> str:
    """One line: the mean firing rate, the operations and the energy per image, against the ANN,
    by operations only and (when the report has it) by operations + memory traffic."""
    t = report["totals"]
    si = analysis.si_format
    ratio = t["energy_ratio"]
    if not ratio:
        return "no energy: the network computed nothing"
    line = (
        f"spike activity over {t['examples']} test images: mean firing rate "
        f"{t['mean_rate']:.4f}; per image {si(t['sops'])} SOPs and {si(t['dense_macs'])} dense "
        f"MACs, {si(t['energy_j'], 'J')} against {si(t['ann_energy_j'], 'J')} for the same "
        f"network as an ANN ({_less_or_more(ratio)})"
    )
    m = t.get("memory")
    if m and m["energy_ratio"]:
        line += (
            f"; with memory traffic ({si(m['bytes'], 'B')} against {si(m['ann_bytes'], 'B')} "
            f"at {m['energy_per_byte_j'] * 1e12:g} pJ/B), {si(m['total_energy_j'], 'J')} "
            f"against {si(m['ann_total_energy_j'], 'J')} ({_less_or_more(m['energy_ratio'])})"
        )
    return line


def markdown(report: dict[str, Any]) -> str:
    """``analysis.md``: the table, then every GLIF layer's firing rate per time step."""
    t, m = report["totals"], report["totals"]["memory"]
    steps = t["time_steps"]
    lines = [
        f"# Spike activity and energy: {report['model']} on {report['dataset']}",
        "",
        f"{report['source']}; {t['examples']} test images, T = {steps}. Energy with "
        f"E_MAC = {t['energy_per_mac_j'] * 1e12:g} pJ and "
        f"E_AC = {t['energy_per_ac_j'] * 1e12:g} pJ (45 nm), and for the memory traffic "
        f"E_byte = {m['energy_per_byte_j'] * 1e12:g} pJ per byte read or written, by the "
        "convention of docs/analysis.md.",
        "",
        summary_line(report) + ".",
        "",
        "## Two verdicts: operations only, and operations + memory",
        "",
        analysis.verdict_table(report),
        "## Operations per layer",
        "",
        analysis.summary_table(report),
        "## Memory traffic per layer (bytes per image)",
        "",
        analysis.memory_table(report),
        "## Firing rate of every GLIF layer at every time step",
        "",
        "| GLIF layer | " + " | ".join(f"t = {t}" for t in range(steps)) + " | mean |",
        "|---|" + "---|" * (steps + 1),
    ]
    for entry in report["layers"]:
        if entry["kind"] == "glif":
            per_step = " | ".join(f"{r:.4f}" for r in entry["rate_per_step"])
            lines.append(f"| {entry['name']} | {per_step} | {entry['rate']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_rates(report: dict[str, Any], out: Path) -> None:
    """A heat map of the firing rate of every GLIF layer at every time step, and its mean."""
    glif = [entry for entry in report["layers"] if entry["kind"] == "glif"]
    if not glif:
        return
    steps = report["totals"]["time_steps"]
    fig = reporting.figure(figsize=(10, max(3.0, 0.28 * len(glif) + 1.5)))
    ax_map, ax_mean = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(steps, 2), 3]})
    rates = [entry["rate_per_step"] for entry in glif]
    image = ax_map.imshow(rates, aspect="auto", cmap="viridis", vmin=0)
    ax_map.set(
        xlabel="time step t",
        ylabel="GLIF layer (network order)",
        title="Firing rate per layer and time step",
        xticks=range(steps),
        yticks=range(len(glif)),
    )
    ax_map.set_yticklabels([entry["name"] for entry in glif], fontsize=7)
    fig.colorbar(image, ax=ax_map, label="spikes per neuron and step")
    ax_mean.barh(range(len(glif)), [entry["rate"] for entry in glif], color="tab:blue")
    ax_mean.set(xlabel="mean rate", yticks=[], title="Mean over T", ylim=ax_map.get_ylim())
    ax_mean.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def plot_energy(report: dict[str, Any], out: Path) -> None:
    """The energy per image of every layer, SNN against the same network as an ANN: on the left
    by operations only (conv and linear layers: SOPs and dense MACs), on the right by operations
    + memory traffic (every layer that moves bytes, stacked by what they are, on a linear axis)."""
    layers = [entry for entry in report["layers"] if entry["kind"] in ("conv", "linear")]
    if not layers:
        return
    t = report["totals"]
    moving = [e for e in report["layers"] if e["memory"]["bytes"] or e["memory"]["ann_bytes"]]
    fig = reporting.figure(figsize=(max(10.0, 0.35 * (len(layers) + len(moving)) + 6), 4.5))
    ax_ops, ax_mem = fig.subplots(
        1, 2, gridspec_kw={"width_ratios": [len(layers) + 2, len(moving) + 2]}
    )
    largest = max(e["memory"]["ann_total_energy_j"] for e in moving)
    largest = max(largest, max(e["memory"]["total_energy_j"] for e in moving)) or 1.0
    units = ((1e3, "mJ"), (1e6, "µJ"), (1e9, "nJ"), (1e12, "pJ"))
    scale, unit = next(((s, u) for s, u in units if largest * s >= 1), units[-1])
    _plot_operations(ax_ops, layers, t, scale)
    _plot_memory(ax_mem, moving, t, scale)
    for ax in (ax_ops, ax_mem):
        ax.set_ylabel(f"energy per image ({unit})")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def _log_if_wide(ax, heights: list[float]) -> None:
    # Layers two orders of magnitude apart are unreadable on a linear axis.
    if max(heights) > 0 and min(v for v in heights if v > 0) < max(heights) / 100:
        ax.set_yscale("log")


def _plot_operations(ax, layers: list[dict], t: dict, scale: float) -> None:
    e_mac, e_ac = t["energy_per_mac_j"], t["energy_per_ac_j"]
    x = range(len(layers))
    ann = [e_mac * entry["ann_macs"] * scale for entry in layers]
    sop = [e_ac * entry["sops"] * scale for entry in layers]
    mac = [e_mac * entry["dense_macs"] * scale for entry in layers]
    ax.bar([i - 0.2 for i in x], ann, 0.4, color="tab:gray", label="ANN (dense MACs)")
    ax.bar([i + 0.2 for i in x], mac, 0.4, color="tab:orange", label="SNN: dense MACs")
    ax.bar([i + 0.2 for i in x], sop, 0.4, bottom=mac, color="tab:blue", label="SNN: SOPs")
    ax.set_xticks(list(x), [entry["name"] for entry in layers], rotation=70, fontsize=7)
    si = analysis.si_format
    ax.set_title(
        f"Operations only: SNN {si(t['energy_j'], 'J')}, ANN {si(t['ann_energy_j'], 'J')}",
        fontsize=9,
    )
    _log_if_wide(ax, ann)


_MEMORY_COLOURS = {
    "weight_bytes": ("tab:green", "weights"),
    "input_bytes": ("tab:purple", "input"),
    "state_bytes": ("tab:red", "membranes"),
    "output_bytes": ("tab:brown", "output"),
}


def _plot_memory(ax, layers: list[dict], t: dict, scale: float) -> None:
    m = t["memory"]
    e_byte = m["energy_per_byte_j"] * scale
    x = range(len(layers))
    left, right = [i - 0.2 for i in x], [i + 0.2 for i in x]
    ann_ops = [(e["memory"]["ann_total_energy_j"] - e["memory"]["ann_energy_j"]) * scale
               for e in layers]  # fmt: skip
    ann_mem = [e["memory"]["ann_energy_j"] * scale for e in layers]
    ax.bar(left, ann_ops, 0.4, color="tab:gray", label="ANN: operations")
    ax.bar(left, ann_mem, 0.4, bottom=ann_ops, color="silver", hatch="//", label="ANN: memory")
    bottom = [e["energy_j"] * scale for e in layers]
    ax.bar(right, bottom, 0.4, color="tab:blue", label="SNN: operations")
    for key, (colour, label) in _MEMORY_COLOURS.items():
        height = [e_byte * e["memory"][key] for e in layers]
        ax.bar(right, height, 0.4, bottom=bottom, color=colour, label=f"SNN: {label}")
        bottom = [b + h for b, h in zip(bottom, height, strict=True)]
    ax.set_xticks(list(x), [e["name"] for e in layers], rotation=70, fontsize=7)
    si = analysis.si_format
    ax.set_title(
        f"Operations + memory ({m['energy_per_byte_j'] * 1e12:g} pJ/B): "
        f"SNN {si(m['total_energy_j'], 'J')}, ANN {si(m['ann_total_energy_j'], 'J')}",
        fontsize=9,
    )
    # A linear axis: on a logarithmic one the parts of a stack would not be to scale.
