"""The TPU pods' table from its cells' reports (the cells themselves are compiles of minutes:
``tests/experiments/test_aot.py`` compiles for TPU topologies)."""

import json
import shutil
from pathlib import Path

from experiments.benchmarks import pods

CELLS = Path(__file__).parents[3] / "experiments/benchmarks/results-tpu-pods"


def test_the_table_shows_each_cell_and_marks_a_search_that_reached_its_bound(tmp_path):
    shutil.copy(CELLS / "step--resnet19-t4-fp32--v5e_16x16--auto.json", tmp_path)
    for option, found in (("no_remat", 416), ("remat", pods.MAX_BATCH_UPPER)):
        report = {"max_per_chip": found, "wall_seconds": 1.0}
        path = tmp_path / f"max_batch--resnet19-t4-fp32--v5e_2x2--{option}.json"
        path.write_text(json.dumps(report))
    lines = pods.table(tmp_path).splitlines()
    # The committed v5e-256 cell: 4.53 of 16 GiB per chip, 3308 GFLOP, 48.7 MiB of all-reduces,
    # a roofline of 599 images/s per chip, 256 × that per pod.
    row = next(line for line in lines if line.startswith("| resnet19-t4-fp32 | v5e-256 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:] == ["256", "4.53 / 16.00", "3308", "87.6", "48.7", "489", "599", "153,217"]
    assert "| resnet19-t4-fp32 | v4-128 | | not compiled |" in lines[lines.index(row) + 1]
    assert "| resnet19-t4-fp32 | 416 (≥ 1024 with remat) |  |  |  |" in lines
