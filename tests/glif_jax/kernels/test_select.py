"""What ``implementation="auto"`` runs: the table of glif_jax.kernels.select, and that glif
follows it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from glif_jax import kernels, neuron
from tests.support.glif_inputs import random_input, random_params

F32, BF16, F16, F64 = jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64


@pytest.mark.parametrize(
    "backend, devices, shape, dtypes, expected",
    [
        ("gpu", 1, (4, 8, 16), (F32, F32), "pallas"),
        ("gpu", 1, (16, 8, 16), (BF16, F32), "pallas"),
        ("gpu", 1, (17, 8, 16), (F32, F32), "xla"),  # beyond the T the kernels were timed at
        ("gpu", 1, (4, 8, 16), (F32, F64), "scan"),  # float64: measured fastest at T = 4
        ("gpu", 1, (2, 8, 16), (F32, F64), "xla"),  # ... and the XLA VJP at T = 2
        ("gpu", 1, (4, 8, 16), (F16, F32), "scan"),  # kernels checked from fp32 and bf16 only
        ("gpu", 4, (4, 8, 16), (F32, F32), "scan"),  # several devices and no mesh in context
        ("tpu", 1, (4, 8, 16), (F32, F32), "xla"),  # not measured on TPU
        ("cpu", 1, (4, 8, 16), (F32, F32), "xla"),
        ("cpu", 1, (12, 8, 16), (F32, F64), "xla"),
    ],
)
def test_auto_follows_the_measured_table(backend, devices, shape, dtypes, expected):
    input_dtype, compute_dtype = dtypes
    choice = kernels.select(
        shape, input_dtype, compute_dtype, backend=backend, device_count=devices
    )
    assert choice == expected


def test_on_a_gpu_mesh_auto_runs_pallas_when_the_mesh_splits_the_batch():
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        assert kernels.select((4, 8, 16), F32, F32, backend="gpu") == "pallas"
        assert kernels.select((4, 6, 16), F32, F32, backend="gpu") == "scan"  # 6 over 4 devices
        assert kernels.select((12, 6, 16), F32, F32, backend="gpu") == "xla"


def test_glif_runs_what_auto_selects(monkeypatch):
    params = random_params(np.random.default_rng(8), 8, 4)
    x = random_input(np.random.default_rng(9), (4, 16, 8))

    def traced():
        return str(jax.make_jaxpr(lambda x: neuron.glif(params, x))(x))

    for choice, marker in (("pallas", "pallas_call"), ("xla", "custom_vjp"), ("scan", "scan")):
        monkeypatch.setattr(kernels, "select", lambda *args, choice=choice, **kwargs: choice)
        jaxpr = traced()
        assert marker in jaxpr
        if choice == "scan":
            assert "pallas_call" not in jaxpr and "custom_vjp" not in jaxpr
