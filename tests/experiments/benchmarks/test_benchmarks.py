"""Smoke test of the benchmark suite at toy sizes: it runs, writes its tables, and the numbers
that do not depend on timing are right."""

import json

import pytest

from experiments.benchmarks import __main__ as benchmarks
from experiments.benchmarks import glif_speed


def test_quick_suite_writes_glif_shape_and_residual_tables(tmp_path):
    parts = "glif,shapes,residuals"
    argv = ["--quick", "--parts", parts, "--time-steps", "2", "--out", str(tmp_path)]
    results = benchmarks.main(argv)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["parts"].keys() == {"glif", "shapes", "residuals"}
    assert "| copy (ceiling) |" in (tmp_path / "results.md").read_text()
    assert {"cpu", "cores", "jax", "backend", "transparent_hugepage"} <= written["machine"].keys()

    glif = {(r["dtype"], r["implementation"]): r for r in results["parts"]["glif"]}
    in_a_loss = "xla" + glif_speed.IN_A_LOSS
    assert {("float32", "scan"), ("float32", "xla"), ("bfloat16", "xla")} <= glif.keys()
    assert {("float32", in_a_loss), ("bfloat16", in_a_loss)} <= glif.keys()
    assert all(r["best_ms"] > 0 and r["of_ceiling"] > 0 for r in glif.values())

    shapes = {(r["shape"], r["implementation"]) for r in results["parts"]["shapes"]}
    assert {("2×4×4×16", "xla"), ("3×5×16", "xla"), ("3×5×16", in_a_loss)} <= shapes
    assert all(r["T"] == 4 and r["dtype"] == "float32" for r in results["parts"]["shapes"])

    rows = written["parts"]["residuals"]
    kept = {(r["choice"], r["dtype"]): r["bytes_per_neuron_step"] for r in rows}
    assert kept["xla", "float32"] == 4 and kept["xla", "bfloat16"] == 2
    assert kept["pallas", "float32"] == 4
    assert kept["scan under jax.checkpoint", "float32"] == 4
    assert kept["scan (plain autodiff)", "float32"] > 4


@pytest.mark.slow
def test_quick_suite_measures_training_with_and_without_recomputation(tmp_path):
    results = benchmarks.main(["--quick", "--parts", "training", "--out", str(tmp_path)])
    rows = results["parts"]["training"]
    assert [r["remat"] for r in rows] == [False, True]
    assert all(r["loss_finite"] and r["images/s"] > 0 and r["peak_MiB"] > 0 for r in rows)


@pytest.mark.parametrize("layout", ["reference", "channel_last"])
def test_pytorch_loops_compute_the_gradients_of_glif(layout):
    # The benchmark's baselines must time the same operation: spikes and every gradient.
    torch = pytest.importorskip("torch")
    import jax
    import numpy as np

    from experiments.benchmarks import glif_speed, torch_glif
    from glif_jax import neuron

    params, x, g = glif_speed.inputs(4, (2, 3, 5, 6), np.float32)
    spikes, vjp = jax.vjp(lambda p, x: neuron.glif(p, x, implementation="scan"), params, x)
    grad_params, grad_x = vjp(g)

    raw, tx, tg = torch_glif.make_inputs(torch, np.asarray(x), np.asarray(g), params, layout)
    got = torch_glif.forward_backward(torch, raw, tx, tg, layout).detach().numpy()
    got_dx = tx.grad.numpy()
    if layout == "reference":  # back from (T, B, C, H, W)
        got, got_dx = np.moveaxis(got, 2, -1), np.moveaxis(got_dx, 2, -1)
    np.testing.assert_array_equal(got, spikes)
    assert 0 < got.mean() < 1
    np.testing.assert_allclose(got_dx, grad_x, rtol=1e-5, atol=1e-6)
    names = {"Vth": "v_th", "reVth": "v_reset"}
    for name, tensor in raw.items():
        want = getattr(grad_params, names.get(name, name))
        np.testing.assert_allclose(tensor.grad.numpy(), want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_loss_row_computes_the_gradients_of_the_vjp_row():
    import jax
    import numpy as np

    params, x, g = glif_speed.inputs(3, (2, 5, 6), np.float32)
    _, *want = glif_speed.forward_backward("xla")(params, x, g)
    value, got = glif_speed.in_a_loss("xla")(params, x, g)
    assert np.isfinite(float(value))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_a_pallas_tiling_path_computes_the_gradients_of_the_default_path():
    # "pallas/FIELD=N" rows time the kernels at a given tiling; they must time the same operation.
    # On the CPU the kernels run in Pallas's interpreter, which checks the same code.
    import jax
    import numpy as np

    params, x, g = glif_speed.inputs(3, (40, 6), np.float32)
    want = glif_speed.forward_backward("xla")(params, x, g)
    got = glif_speed.forward_backward("pallas/block_rows=16/sub_rows=4")(params, x, g)
    np.testing.assert_array_equal(got[0], want[0])
    assert 0 < float(want[0].mean()) < 1
    for a, b in zip(jax.tree.leaves(want[1:]), jax.tree.leaves(got[1:]), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
    timed = glif_speed.available_paths(["xla", "pallas/sub_rows=4"])
    compiled = jax.default_backend() in ("gpu", "tpu")
    assert timed == (["xla", "pallas/sub_rows=4"] if compiled else ["xla"])
    with pytest.raises(ValueError, match=r"unknown xla settings \['sub_rows'\]"):
        glif_speed.layer("xla/sub_rows=4")
    with pytest.raises(ValueError, match=r"unknown pallas settings \['rows'\]"):
        glif_speed.layer("pallas/rows=4")
