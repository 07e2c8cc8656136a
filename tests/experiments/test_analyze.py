"""What ``--mode=analyze`` writes: both energy verdicts in analysis.md, the summary line and the
energy plot, from a report of a tiny network (no training)."""

from __future__ import annotations

import copy

import jax
import pytest
from flax import nnx

from experiments import analyze, reporting
from glif_jax import analysis, models


@pytest.fixture(scope="module")
def report():
    model = models.create(
        "spiking_cnn",
        num_classes=10,
        time_steps=4,
        rngs=nnx.Rngs(0),
        channels=(4, 8),
        implementation="scan",
    )
    model.eval()
    images = 2.0 * jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    measured = analysis.analyze(model, [images])
    return {"model": "spiking_cnn", "dataset": "digits", "split": "eval", "source": "x", **measured}


@pytest.mark.slow
def test_the_markdown_gives_both_verdicts_and_both_tables(report):
    text = analyze.markdown(report)
    assert "## Two verdicts: operations only, and operations + memory" in text
    assert analysis.verdict_table(report) in text
    assert analysis.summary_table(report) in text
    assert analysis.memory_table(report) in text
    assert "E_byte = 1.25 pJ per byte" in text


def test_the_summary_line_adds_the_memory_verdict(report):
    t, m = report["totals"], report["totals"]["memory"]
    line = analyze.summary_line(report)
    ops_only, with_memory = line.split("; with memory traffic ")
    assert ops_only.endswith(f"({t['energy_ratio']:.1f}× less)")
    si = analysis.si_format
    assert si(m["total_energy_j"], "J") in with_memory
    assert si(m["ann_total_energy_j"], "J") in with_memory
    # A report written before the memory count (no totals.memory) keeps its one verdict.
    old = copy.deepcopy(report)
    del old["totals"]["memory"]
    assert analyze.summary_line(old) == ops_only


def test_a_verdict_for_the_ann_says_more(report):
    flipped = copy.deepcopy(report)
    flipped["totals"]["memory"]["energy_ratio"] = 0.25
    assert analyze.summary_line(flipped).endswith("(4.0× more)")
    assert "| ANN, 4× less |" in analysis.verdict_table(flipped)


def test_the_energy_plot_shows_both_verdicts(report, tmp_path, monkeypatch):
    figures, make_figure = [], reporting.figure

    def figure(**kwargs):
        figures.append(make_figure(**kwargs))
        return figures[-1]

    monkeypatch.setattr(reporting, "figure", figure)
    analyze.plot_energy(report, tmp_path / "energy.png")
    assert (tmp_path / "energy.png").stat().st_size > 0
    (fig,) = figures
    ops, memory = fig.axes
    assert ops.get_title().startswith("Operations only: SNN ")
    assert memory.get_title().startswith("Operations + memory (1.25 pJ/B): SNN ")
    moving = [e["name"] for e in report["layers"] if e["memory"]["bytes"]]
    assert [label.get_text() for label in memory.get_xticklabels()] == moving
    legend = [text.get_text() for text in memory.get_legend().get_texts()]
    assert legend == [
        "ANN: operations", "ANN: memory", "SNN: operations", "SNN: weights", "SNN: input",
        "SNN: membranes", "SNN: output",
    ]  # fmt: skip
