"""Spike activity and energy of a trained network over the test split (``--mode=analyze``).

Runs :func:`glif_jax.analysis.analyze` over the whole evaluation split, with a progress bar, and
writes into the workdir:

- ``analysis.json``: the report of :func:`glif_jax.analysis.analyze` (``layers``, ``totals``),
  with the model, dataset and checkpoint it describes;
- ``analysis.md``: the per-layer table, the totals against the same network as an ANN, and the
  firing rate of every GLIF layer at every time step;
- ``analysis_rates.png``: the firing rate of every GLIF layer at every time step, and per layer;
- ``analysis_energy.png``: the energy per image of every layer, SNN against ANN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import tqdm

from experiments import data, reporting, train
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
    trainer, state, source = train.load_for_evaluation(
        config, workdir, checkpoint=checkpoint, reference_checkpoint=reference_checkpoint
    )
    return analyze_model(trainer.model(state), config, workdir, source=source)


def _check_single_process() -> None:
    if jax.process_count() > 1:
        raise RuntimeError(
            "the spike analysis runs on one process; run --mode=analyze on a single host."
        )


def analyze_model(model, config, workdir: Path, *, source: str) -> dict[str, Any]:
    """Analyse ``model`` (in evaluation mode) over the test split of ``config``'s dataset and
    write the report, its table and plots into ``workdir``."""
    _check_single_process()
    info = data.dataset_info(config.dataset)
    batches = data.eval_batches(
        config.dataset, data_dir=config.data_dir, global_batch_size=config.batch_size
    )
    with tqdm.tqdm(total=info.num_eval, desc="spike analysis", unit="img") as bar:

        def real_examples():
            for batch in batches:
                images = batch["image"][batch["mask"]]
                yield images
                bar.update(len(images))

        report = analysis.analyze(model, real_examples())
    report = {
        "model": config.model,
        "dataset": config.dataset,
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


def summary_line(report: dict[str, Any]) -> str:
    """One line: the mean firing rate, the operations and the energy per image, against the ANN."""
    t = report["totals"]
    si = analysis.si_format
    ratio = t["energy_ratio"]
    return (
        f"spike activity over {t['examples']} test images: mean firing rate "
        f"{t['mean_rate']:.4f}; per image {si(t['sops'])} SOPs and {si(t['dense_macs'])} dense "
        f"MACs, {si(t['energy_j'], 'J')} against {si(t['ann_energy_j'], 'J')} for the same "
        f"network as an ANN ({ratio:.1f}× less)"
        if ratio
        else "no energy: the network computed nothing"
    )


def markdown(report: dict[str, Any]) -> str:
    """``analysis.md``: the table, then every GLIF layer's firing rate per time step."""
    t = report["totals"]
    steps = t["time_steps"]
    lines = [
        f"# Spike activity and energy: {report['model']} on {report['dataset']}",
        "",
        f"{report['source']}; {t['examples']} test images, T = {steps}. Energy with "
        f"E_MAC = {t['energy_per_mac_j'] * 1e12:g} pJ and "
        f"E_AC = {t['energy_per_ac_j'] * 1e12:g} pJ (45 nm), by the convention of "
        "docs/analysis.md.",
        "",
        summary_line(report) + ".",
        "",
        analysis.summary_table(report),
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
    """The energy per image of every conv and linear layer, as SNN (SOPs and dense MACs) and as
    the same network as an ANN."""
    layers = [entry for entry in report["layers"] if entry["kind"] in ("conv", "linear")]
    if not layers:
        return
    t = report["totals"]
    e_mac, e_ac = t["energy_per_mac_j"], t["energy_per_ac_j"]
    fig = reporting.figure(figsize=(max(6.0, 0.35 * len(layers) + 3), 4))
    ax = fig.subplots()
    x = range(len(layers))
    largest = max(e_mac * entry["ann_macs"] for entry in layers) or 1.0
    units = ((1e3, "mJ"), (1e6, "µJ"), (1e9, "nJ"), (1e12, "pJ"))
    scale, unit = next(((s, u) for s, u in units if largest * s >= 1), units[-1])
    ann = [e_mac * entry["ann_macs"] * scale for entry in layers]
    sop = [e_ac * entry["sops"] * scale for entry in layers]
    mac = [e_mac * entry["dense_macs"] * scale for entry in layers]
    ax.bar([i - 0.2 for i in x], ann, 0.4, color="tab:gray", label="ANN (dense MACs)")
    ax.bar([i + 0.2 for i in x], mac, 0.4, color="tab:orange", label="SNN: dense MACs")
    ax.bar([i + 0.2 for i in x], sop, 0.4, bottom=mac, color="tab:blue", label="SNN: SOPs")
    ax.set_xticks(list(x), [entry["name"] for entry in layers], rotation=70, fontsize=7)
    ax.set(
        ylabel=f"energy per image ({unit})",
        title=(
            f"Energy per layer: SNN {analysis.si_format(t['energy_j'], 'J')}, "
            f"ANN {analysis.si_format(t['ann_energy_j'], 'J')}"
        ),
    )
    if max(ann) > 0 and min(v for v in ann if v > 0) < max(ann) / 100:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
