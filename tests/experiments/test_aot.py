"""The data-parallel steps divide the work: read from the compiled programs, not from the numbers
they compute (a replicated step computes the same numbers as a divided one)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import aot
from tests.support import tiny_digits

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20

# libtpu comes with the tpu extra, which `make test` installs; elsewhere the TPU tests skip, but
# never in CI, where a missing libtpu is a broken install.
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None and not os.environ.get("CI"),
    reason="libtpu is not installed (pip install -e '.[tpu]')",
)


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository's root, in a process of its own (its own devices)."""
    env = {**os.environ, "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _scaling(cases: str, *options: str) -> dict:
    result = _run(["-m", "tests.support.scaling", f"--cases={cases}", *options])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_divides_the_work(reports: dict[str, dict]) -> None:
    """Per-device FLOPs within 5 % whatever the device count; between devices, no all-to-all or
    permute, no gather beyond the logits of the metrics, all-reduces of at most twice the
    parameters (gradients, BN statistics, metrics) plus 1 MiB."""
    for step in ("train_step", "eval_step"):
        if step not in next(iter(reports.values())):
            continue
        flops = {name: report[step]["flops_per_device"] for name, report in reports.items()}
        assert max(flops.values()) <= 1.05 * min(flops.values()), (step, flops)
        for name, report in reports.items():
            found = report[step]["collectives"]
            logits_bytes = report["global_batch"] * 1000 * 4  # at most 1000 classes, float32
            assert not {"all-to-all", "collective-permute"} & set(found), (name, step, found)
            gathered = found.get("all-gather", {}).get("largest_bytes", 0)
            assert gathered <= logits_bytes, (name, step, found)
            reduced = found.get("all-reduce", {}).get("bytes", 0)
            assert reduced <= 2 * report["param_bytes"] + MiB, (name, step, found)


def test_collectives_are_read_from_hlo_text():
    hlo = "\n".join(
        [
            "  %a = (bf16[2,3]{1,0:T(8,128)(2,1)}, /*index=1*/f32[4]{0}) all-reduce(%x), x=1",
            "  %b = (f32[8]{0}, f32[32]{0}, u32[], u32[]) collective-permute-start(%y)",
            "  %c = f32[32]{0} collective-permute-done(%b)",
            "  ROOT %d = f32[4,4]{1,0} all-gather(%z), dimensions={0}",
            "  %e = f32[4,4]{1,0} add(%all-gather, %all-reduce)",
        ]
    )
    assert aot.collectives(hlo) == {
        "all-reduce": {"count": 1, "bytes": 2 * 3 * 2 + 4 * 4, "largest_bytes": 16},
        "collective-permute": {"count": 1, "bytes": 128, "largest_bytes": 128},
        "all-gather": {"count": 1, "bytes": 64, "largest_bytes": 64},
    }


@pytest.mark.slow
def test_sharded_step_divides_the_work():
    """ResNet-19 (small) with the default implementation on 1, 2, 4 and 8 CPU devices."""
    reports = _scaling("resnet19:auto", "--devices=1,2,4,8")["resnet19:auto"]
    assert_divides_the_work(reports)
    assert [reports[n]["per_device_batch"] for n in ("1", "2", "4", "8")] == [2, 2, 2, 2]


@pytest.mark.slow
def test_every_implementation_network_and_remat_divides_the_work():
    # "xla" is what "auto" runs on the CPU: test_sharded_step_divides_the_work compiles it.
    cases = [
        "resnet19:scan",
        "resnet19:pallas",
        "resnet19:xla:remat",
        "resnet18:auto",
        "cifarnet:auto",
        "ms_resnet18:auto",
        "sew_7b_widenet:auto",
    ]
    # The train step holds the eval step's forward pass; the eval step is checked above.
    results = _scaling(",".join(cases), "--devices=1,4", "--steps=train")
    for case in cases:
        assert_divides_the_work(results[case])


@pytest.mark.slow
@needs_libtpu
def test_tpu_pod_step_divides_the_work():
    """The same, compiled by the TPU compiler for v5e 2x2 and 4x4 (no TPU needed)."""
    reports = _scaling("resnet19:auto", "--topologies=v5e:2x2,v5e:4x4")["resnet19:auto"]
    assert_divides_the_work(reports)
    assert reports["v5e:4x4"]["devices"] == 16
    assert reports["v5e:4x4"]["train_step"]["roofline_images_per_second"] > 0


@pytest.mark.slow
@needs_libtpu
def test_pallas_kernels_compile_under_mosaic_for_every_tpu_generation():
    script = """
import jax, jax.numpy as jnp
from experiments import aot
from tests.support import tiny_digits
from glif_jax import kernels, neuron
params = neuron.init_params(128, 4, key=jax.random.key(0))
def loss(p, x):
    return jnp.sum(neuron.glif(p, x, implementation=kernels.Pallas(backend="tpu")) * x)
for topology in ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2"):
    device = aot.topology_devices(topology)[0]
    x = jax.ShapeDtypeStruct((4, 16, 8, 8, 128), jnp.float32,
                             sharding=jax.sharding.SingleDeviceSharding(device))
    p = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                     sharding=jax.sharding.SingleDeviceSharding(device)), params)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(p, x).lower().compile().as_text()
    print(topology, hlo.count("tpu_custom_call"))
"""
    result = _run(["-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(line.split() for line in result.stdout.strip().splitlines())
    # The forward kernel in the forward pass, and both kernels in the backward pass.
    assert {topology: int(n) >= 2 for topology, n in counts.items()} == {
        "v4:2x2x1": True,
        "v5e:2x2": True,
        "v5p:2x2x1": True,
        "v6e:2x2": True,
    }


# ------------------------------------------------------------------------------------------------
# The command


def _main(*flags: str, patch: str = "") -> subprocess.CompletedProcess:
    script = f"""
import sys
{patch}
from absl import app
from experiments import main
sys.argv = ["experiments.main", *{list(flags)!r}]
app.run(main.main)
"""
    return _run(["-c", script])


@pytest.mark.slow
def test_compile_mode_writes_compile_json_and_hlo_without_data(tmp_path):
    result = _main(
        "--config=experiments/configs/digits.py",
        f"--workdir={tmp_path}",
        "--mode=compile",
        "--config.batch_size=8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout
    report = json.loads((tmp_path / "compile.json").read_text())
    keys = {"flops_per_device", "bytes_accessed_per_device", "argument_bytes", "output_bytes"}
    keys |= {"temp_bytes", "peak_bytes", "compile_seconds", "collectives", "fits"}
    keys |= {"roofline_seconds", "roofline_images_per_second"}
    for step in ("train_step", "eval_step"):
        assert keys <= set(report[step])
        assert report[step]["flops_per_device"] > 0
        assert "HloModule" in (tmp_path / f"{step}.hlo.txt").read_text()[:200]
    assert report["global_batch"] == 8
    assert report["topology"] is None


def test_find_max_batch_without_a_memory_size_is_refused_before_compiling(tmp_path, monkeypatch):
    def compiled(*args, **kwargs):
        raise AssertionError("compiled before the memory size was known")

    monkeypatch.setattr(aot, "compile_steps", compiled)
    with pytest.raises(aot.CompileError, match="--find_max_batch needs the devices' memory size"):
        aot.compile_and_report(tiny_digits.get_config(), tmp_path, max_batch=True)
    assert not (tmp_path / "compile.json").exists()


def test_unknown_topology_lists_the_known_ones():
    with pytest.raises(aot.CompileError, match=r"unknown topology 'v9:2x2'.*v4.*v5e.*v5p.*v6e"):
        aot.topology_devices("v9:2x2")
    with pytest.raises(aot.CompileError, match="SHAPE"):
        aot.topology_devices("v5e")


def test_topology_without_libtpu_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(aot.CompileError, match=r"pip install -e '\.\[tpu\]'"):
        aot.topology_devices("v5e:2x2")


@pytest.mark.slow
@needs_libtpu
def test_a_step_that_does_not_fit_exits_with_one_line(tmp_path):
    # A chip of 1 MiB of HBM, in the child process that compiles.
    patch = (
        "import dataclasses\nfrom experiments import aot\n"
        "aot.CHIPS['v5e'] = dataclasses.replace(aot.CHIPS['v5e'], hbm_bytes=2**20)"
    )
    result = _main(
        "--config=experiments/configs/digits.py",
        f"--workdir={tmp_path}",
        "--mode=compile",
        "--topology=v5e:2x2",
        "--per_device_batch=4",
        patch=patch,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "more than the 0.00 GiB of HBM" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "compile.json").read_text())["train_step"]["fits"] is False


@pytest.mark.slow
@needs_libtpu
def test_a_step_the_tpu_compiler_refuses_is_one_line_and_a_failed_probe(tmp_path):
    # Far beyond a v5e's 16 GiB: libtpu refuses to lay it out (RESOURCE_EXHAUSTED), rather than
    # compile a program whose memory analysis says it does not fit.
    result = _main(
        "--config=experiments/configs/digits.py",
        f"--workdir={tmp_path}",
        "--mode=compile",
        "--topology=v5e:2x2",
        "--per_device_batch=2000000",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RESOURCE_EXHAUSTED" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    step = json.loads((tmp_path / "compile.json").read_text())["train_step"]
    assert step["fits"] is False and "HBM" in step["compiler_error"]
    assert step["peak_bytes"] is None and set(step) == set(aot.STEP_KEYS)
    # The search treats the refusal as a batch that does not fit. Two probes: 2**16 images per
    # chip, which libtpu refuses (in a second), then half of it, which fits (a compile of a
    # minute); a tolerance of 1 stops the search there, as any further probe costs another minute.
    script = """
import json
from experiments import aot
from tests.support import tiny_digits
from experiments.configs import digits
devices = aot.topology_devices("v5e:2x2")
found = aot.find_max_batch(
    digits.get_config(), devices, chip=aot.CHIPS["v5e"], start=2**16, upper=2**21, tolerance=1.0
)
print(json.dumps(found))
"""
    searched = _run(["-c", script])
    assert searched.returncode == 0, searched.stderr[-3000:]
    assert 0 < json.loads(searched.stdout.strip().splitlines()[-1]) < 2**21


@needs_libtpu
def test_several_slices_give_every_slices_chips():
    devices = aot.topology_devices("v5e:2x2", num_slices=2)
    assert len(devices) == 8
    assert {device.slice_index for device in devices} == {0, 1}


@pytest.mark.slow
def test_find_max_batch_finds_the_largest_batch_that_fits(monkeypatch):
    """On the CPU with a memory size set: the batch found fits, the next does not."""
    import jax

    from tests.support import tiny_digits

    config = tiny_digits.get_config()
    devices = jax.devices()[:1]
    peaks = {}

    def peak(per_device):
        if per_device not in peaks:
            config.batch_size = per_device
            report, _ = aot.compile_steps(config, devices, steps=("train",))
            peaks[per_device] = report["train_step"]["peak_bytes"]
        return peaks[per_device]

    # Every probe is a compile of its own: a budget between batches 2 and 4 and a search from 1
    # to 8 take four (1, 2, 4, 3), doubling and then bisecting.
    budget = (peak(2) + peak(4)) // 2
    monkeypatch.setattr(aot, "_local_hbm_bytes", lambda device: budget)
    found = aot.find_max_batch(tiny_digits.get_config(), devices, chip=None, start=1, upper=8)
    assert 2 <= found < 4
    assert peak(found) <= budget < peak(found + 1)


@pytest.mark.parametrize("threshold", [1, 63, 64, 65, 100, 1000, 5000])
def test_the_search_finds_the_largest_size_below_a_threshold(threshold):
    probed = []

    def fits(batch):
        probed.append(batch)
        return batch <= threshold

    found = aot.largest_that_fits(fits, start=64, upper=4096)
    assert found.largest == min(threshold, 4096) and found.exact
    assert found.smallest_failure == (None if threshold >= 4096 else threshold + 1)
    assert [b for b, _ in found.probes] == probed
    assert len(probed) <= 7 + 13  # doublings to the bound, then a bisection of 64..4096


def test_the_search_stops_within_its_tolerance_and_at_its_deadline():
    found = aot.largest_that_fits(lambda b: b <= 1000, start=64, upper=4096, tolerance=0.1)
    assert found.exact and 1000 - 100 <= found.largest <= 1000
    assert found.smallest_failure - found.largest <= 0.1 * found.largest

    calls = []

    def slow(batch):
        calls.append(batch)
        return batch <= 100

    # Out of time from the start: the first probe still runs, and nothing after it.
    found = aot.largest_that_fits(slow, start=8, upper=4096, deadline=0.0)
    assert calls == [8] and found.largest == 8 and not found.exact
    calls.clear()
    found = aot.largest_that_fits(slow, start=128, upper=4096, deadline=0.0)
    assert calls == [128] and found.largest == 0 and found.smallest_failure == 128
    with pytest.raises(ValueError, match="start <= upper"):
        aot.largest_that_fits(slow, start=10, upper=5)
