"""The benchmark suite at toy sizes: it runs, writes its tables, and the numbers that do not
depend on timing are right."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import aot
from experiments.benchmarks import __main__ as benchmarks
from experiments.benchmarks import glif_speed, max_batch, training

# One block per stage: a tdBN shortcut, then two 1×1-conv shortcuts with stride 2.
TINY_RESNET19 = {
    "stem_channels": 8,
    "stage_channels": (8, 16, 32),
    "stage_repeats": (1, 1, 1),
    "head_width": 16,
}


def _header(columns):
    return "| " + " | ".join(columns) + " |"


# ------------------------------------------------------------------------------------------------
# The suite


@pytest.mark.slow
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
def test_quick_training_and_max_batch_parts_write_their_columns(tmp_path):
    # spiking_cnn has no PyTorch transcription: glif_jax's rows only.
    argv = ["--quick", "--parts", "training", "--train-batch", "2,3", "--train-dtypes", "float32"]
    rows = benchmarks.main([*argv, "--train-remat", "--out", str(tmp_path)])["parts"]["training"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["parts"]["training"] == json.loads(json.dumps(rows))
    assert _header(training.COLUMNS) in (tmp_path / "results.md").read_text()
    assert [(r["framework"], r["batch"], r["remat"]) for r in rows] == [
        ("glif_jax", 2, False),
        ("glif_jax", 2, True),
        ("glif_jax", 3, False),
        ("glif_jax", 3, True),
    ]
    # spiking_cnn on 8×8×1 images: conv3×3 1→32 at 8×8, 32→64 at 4×4, 64→128 at 2×2; a step
    # counts the forward convolutions and the two of their backward pass, T = 2.
    macs = 9 * (1 * 32 * 64 + 32 * 64 * 16 + 64 * 128 * 4)
    for row in rows:
        assert list(row) == list(training.COLUMNS)
        assert row["error"] is None and row["loss_finite"] and row["compile_s"] > 0
        seconds = row["step_ms"] / 1e3
        assert row["images/s"] == pytest.approx(row["batch"] / seconds)
        flops = 3 * 2 * macs * 2 * row["batch"]
        assert row["conv_TFLOP/s"] * 1e12 * seconds == pytest.approx(flops)
        assert row["of_peak"] is None  # no peak for a CPU
        assert row["peak_MiB"] > row["temp_MiB"] > 0
        assert row["vs_eager"] is None and row["jax_matmul_precision"] is not None
    for plain, recomputed in (rows[0:2], rows[2:4]):
        ratio = recomputed["peak_MiB"] / plain["peak_MiB"]
        assert recomputed["peak_vs_no_remat"] == pytest.approx(ratio)

    # The max_batch part, added to the same tables: at toy sizes on a CPU, the bound fits; each
    # search in a process of its own, as on a GPU.
    argv = ["--quick", "--parts", "max_batch", "--max-batch-isolate", "yes", "--append"]
    argv += ["--out", str(tmp_path)]
    searches = benchmarks.main(argv)["parts"]["max_batch"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written["parts"]) == ["training", "max_batch"]
    assert written["parts"]["training"] == json.loads(json.dumps(rows))
    assert written["command"].count("python -m experiments.benchmarks") == 2
    markdown = (tmp_path / "results.md").read_text()
    assert "## training" in markdown and _header(max_batch.COLUMNS) in markdown
    assert [(r["framework"], r["T"], r["remat"]) for r in searches] == [
        ("glif_jax", 2, False),
        ("glif_jax", 2, True),
    ]
    for row in searches:
        assert list(row) == list(max_batch.COLUMNS)
        assert row["max_batch"] == 2 and row["note"] == "the bound 2 fits"


def test_settings_past_the_time_budget_are_reported_as_skipped():
    rows = training.measure("spiking_cnn", [2], [2, 4], ["float32"], (8, 8, 1), 1, budget_s=0)
    assert [(r["framework"], r["batch"]) for r in rows] == [("glif_jax", 2), ("glif_jax", 4)]
    assert all(r["error"].startswith("skipped") and r["step_ms"] is None for r in rows)


@pytest.mark.slow
def test_pytorch_rows_start_from_glif_jax_weights_and_report_a_failed_compilation(monkeypatch):
    torch = pytest.importorskip("torch")

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    rows = training.measure(
        "resnet19", [2], [2], ["float32"], (8, 8, 3), 1, model_options=TINY_RESNET19
    )
    by_framework = {r["framework"]: r for r in rows}
    assert list(by_framework) == ["glif_jax", "pytorch eager", "pytorch compiled"]
    jax_row, eager = by_framework["glif_jax"], by_framework["pytorch eager"]
    assert eager["error"] is None and eager["loss_finite"]
    assert eager["autocast"] == "off" and isinstance(eager["torch_cudnn_tf32"], bool)
    # Both sides count the FLOPs of the same network.
    assert eager["conv_TFLOP/s"] * eager["step_ms"] == pytest.approx(
        jax_row["conv_TFLOP/s"] * jax_row["step_ms"]
    )
    compiled = by_framework["pytorch compiled"]
    assert compiled["error"] == "RuntimeError: no compiler here" and compiled["step_ms"] is None

    assert jax_row["vs_eager"] == pytest.approx(jax_row["images/s"] / eager["images/s"])
    assert jax_row["vs_compiled"] is None


# ------------------------------------------------------------------------------------------------
# The PyTorch baselines compute what glif_jax computes


@pytest.mark.parametrize("layout", ["reference", "channel_last"])
def test_pytorch_loops_compute_the_gradients_of_glif(layout):
    # The benchmark's baselines must time the same operation: spikes and every gradient.
    torch = pytest.importorskip("torch")
    from experiments.benchmarks import torch_glif
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
    params, x, g = glif_speed.inputs(3, (2, 5, 6), np.float32)
    _, *want = glif_speed.forward_backward("xla")(params, x, g)
    value, got = glif_speed.in_a_loss("xla")(params, x, g)
    assert np.isfinite(float(value))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_a_pallas_tiling_path_computes_the_gradients_of_the_default_path():
    # "pallas/FIELD=N" rows time the kernels at a given tiling; they must time the same operation.
    # On the CPU the kernels run in Pallas's interpreter, which checks the same code.
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


@pytest.mark.slow
def test_pytorch_resnet19_takes_the_training_step_of_glif_jax_from_the_same_weights():
    torch = pytest.importorskip("torch")
    from experiments.benchmarks import torch_networks

    options = tuple(TINY_RESNET19.items())
    setting = training.Setting("resnet19", 2, 4, "float32", (8, 8, 3), model_options=options)
    runner = training.GlifJaxStep(setting)
    initial = runner.reference_state_dict()
    images, labels = setting.batch_arrays(seed=3)

    net = torch_networks.resnet19_from_state_dict(initial)
    optimizer = torch_networks.reference_optimizer(net, **training.torch_recipe(setting))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.1, 0.01])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [4e-5, 0.0, 0.0]
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    expected_loss = torch_networks.train_step(net, optimizer, x, torch.from_numpy(labels).long())

    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    runner.state, metrics = runner.step(runner.state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), expected_loss.item(), rtol=1e-5)
    updated = runner.reference_state_dict()
    got = net.state_dict()
    assert got.keys() == updated.keys()
    for key, before in initial.items():
        if key.endswith("num_batches_tracked"):
            assert got[key].item() == updated[key] == before + 1, key
            continue
        # One step from the same weights: the updates (lr × the gradients, plus weight decay)
        # agree to float32 rounding of the gradients and of the updated weights.
        want = updated[key].astype(np.float64) - before
        change = got[key].numpy().astype(np.float64) - before
        atol = 1e-4 * np.abs(want).max() + 2.0**-22 * np.abs(before).max()
        np.testing.assert_allclose(change, want, rtol=1e-3, atol=atol, err_msg=key)
    moved = [k for k in initial if k.endswith(".alpha") and np.abs(updated[k] - initial[k]).max()]
    assert moved  # the gates learned: the comparison went through the spikes' surrogate


@pytest.mark.slow
def test_pytorch_resnet19_recomputation_changes_neither_the_step_nor_the_statistics():
    torch = pytest.importorskip("torch")
    from experiments.benchmarks import torch_networks

    torch.manual_seed(0)
    blocks = torch_networks.resnet19_blocks(8, (8, 16), (2, 1), (1, 2))
    plain = torch_networks.ResNet19(time_steps=2, blocks=blocks, stem_channels=8)
    recomputed = torch_networks.ResNet19(time_steps=2, blocks=blocks, stem_channels=8, remat=True)
    recomputed.load_state_dict(plain.state_dict())
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([1, 4, 7])
    losses = []
    for net in (plain, recomputed):
        losses.append(torch_networks.train_step(net, torch_networks.reference_optimizer(net), x, y))
    torch.testing.assert_close(losses[0], losses[1])
    for (key, a), b in zip(
        plain.state_dict().items(), recomputed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
    assert plain.state_dict()["conv1.0.1.num_batches_tracked"].item() == 1


# ------------------------------------------------------------------------------------------------
# The largest batch


@pytest.mark.parametrize(
    "error",
    [
        jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes."),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED."),
    ],
)
def test_a_step_that_does_not_fit_is_a_probe_that_fails(error):
    def step(batch):
        if batch > 3:
            raise error

    found = aot.largest_that_fits(functools.partial(max_batch.step_fits, step), start=1, upper=64)
    assert found.probes == ((1, True), (2, True), (4, False), (3, True))
    assert (found.largest, found.smallest_failure, found.exact) == (3, 4, True)


def test_any_other_error_of_a_step_ends_the_search():
    def step(batch):
        raise ValueError("shapes do not match")

    with pytest.raises(ValueError, match="shapes do not match"):
        aot.largest_that_fits(functools.partial(max_batch.step_fits, step), start=1, upper=8)


def test_max_batch_reports_the_bound_for_each_framework_t_and_remat():
    pytest.importorskip("torch")

    rows = max_batch.measure(
        "resnet19",
        [2],
        (8, 8, 3),
        frameworks=("pytorch eager",),
        start=1,
        upper=2,
        model_options=TINY_RESNET19,
        isolate=False,
    )
    assert [(r["framework"], r["T"], r["remat"]) for r in rows] == [
        ("pytorch eager", 2, False),
        ("pytorch eager", 2, True),
    ]
    for row in rows:
        assert row["max_batch"] == 2 and row["exact"] and row["probes"] == "1✓ 2✓"
        assert row["note"] == "the bound 2 fits" and np.isfinite(row["search_s"])
