"""Every implementation of the time loop against the reference, ``implementation="scan"``.

One parametrised test: each kernel of :mod:`glif_jax.kernels` (with its default settings, the XLA
one also without its CPU tuning, and the scan itself as a rolled loop at every T) computes the
spikes, the membrane and every gradient of the scan, under ``jit``, across modes, channel-wise and
layer-wise parameters, dtypes, lengths and shapes. The loss reads both outputs, so that both
cotangents flow back. The Pallas kernels run in Pallas's interpreter here; ``JAX_PLATFORMS=cuda``
runs them compiled on a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glif_jax import kernels, neuron, surrogates
from tests.support.glif_inputs import random_input, random_params


@dataclasses.dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]  # (T, ..., C)
    channel_wise: bool = True
    mode: str = "soft"
    dtype: Any = jnp.float32
    surrogate: surrogates.Surrogate = surrogates.rectangle()
    detach_reset: bool = False
    vanishing_input_scale: bool = False  # conduct[1] = -30: input scale ~1e-13


CASES = {
    **{
        f"{mode}-{'channel' if cw else 'layer'}-wise": Case((4, 3, 5, 6), cw, mode)
        for mode in neuron.MODES
        for cw in (True, False)
    },
    "one-step": Case((1, 4, 5)),
    "eight-steps": Case((8, 6, 5)),  # more parameter terms than one XLA:CPU loop of sums takes
    "long-scanned": Case((12, 3, 5), surrogate=surrogates.atan(), detach_reset=True),
    "long-layer-wise": Case((12, 3, 5), channel_wise=False),
    "19-neurons": Case((4, 19, 3)),  # no small divisor: groups of eight and three left over
    "17-neurons-layer-wise": Case((4, 17, 3), channel_wise=False),
    "210-neurons": Case((4, 30, 7, 3)),
    "one-neuron-per-channel": Case((4, 3)),
    "wide-layer": Case((4, 2, 1100)),  # channel sums in slices, nine Pallas channel blocks
    "ten-channels-35-rows": Case((3, 5, 7, 10)),  # blocks the Pallas kernels pad
    "130-channels": Case((2, 300, 130)),  # one channel wider than a block of 128
    "37-rows-layer-wise": Case((5, 37, 3), channel_wise=False),
    "sigmoid-detached": Case((4, 5, 6), surrogate=surrogates.sigmoid(), detach_reset=True),
    "bfloat16": Case((4, 9, 6), dtype=jnp.bfloat16),
    "float64": Case((6, 3, 5), dtype=jnp.float64),
    "float64-long": Case((10, 3, 4), channel_wise=False, dtype=jnp.float64),
    "vanishing-input-scale": Case((4, 7, 6), mode="fused", vanishing_input_scale=True),
}

IMPLEMENTATIONS = {
    "scan-rolled": kernels.Scan(unroll_max_steps=0),
    "xla": kernels.Xla(),
    "xla-untuned": kernels.Xla(cpu_tuning=False),
    "pallas": kernels.Pallas(),
}


def _inputs(case: Case, seed: int):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if case.dtype == jnp.float64 else np.float32
    channels = case.shape[-1] if case.channel_wise else None
    params = random_params(rng, channels, case.shape[0], mode=case.mode, dtype=dtype)
    if case.vanishing_input_scale:
        params = params.replace(conduct=params.conduct.at[1].set(-30.0))
    x = random_input(rng, case.shape, dtype).astype(case.dtype)
    weights = jnp.asarray(rng.normal(size=case.shape), dtype)
    return params, x, weights


def _run(case: Case, implementation, params, x, weights):
    """Spikes, membrane and the gradients of a loss that reads both."""

    def loss(params, x):
        spikes, membrane = neuron.glif(
            params,
            x,
            mode=case.mode,
            surrogate=case.surrogate,
            detach_reset=case.detach_reset,
            return_membrane=True,
            implementation=implementation,
        )
        value = jnp.sum(spikes.astype(weights.dtype) * weights) + jnp.sum(jnp.sin(membrane))
        return value, (spikes, membrane)

    (grad_params, grad_x), (spikes, membrane) = jax.jit(
        jax.grad(loss, argnums=(0, 1), has_aux=True)
    )(params, x)
    return spikes, membrane, grad_params, grad_x


@functools.cache
def _scan_results(name: str):
    case = CASES[name]
    with jax.enable_x64(case.dtype == jnp.float64):
        inputs = _inputs(case, seed=zlib.crc32(name.encode()))
        return inputs, jax.device_get(_run(case, "scan", *inputs))


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", list(CASES))
def test_implementation_matches_scan_in_values_and_gradients(name, implementation):
    case = CASES[name]
    (params, x, weights), want = _scan_results(name)
    with jax.enable_x64(case.dtype == jnp.float64):
        got = _run(case, IMPLEMENTATIONS[implementation], params, x, weights)
    exact = case.dtype == jnp.float64
    rtol = 1e-10 if exact else 2e-5
    spikes, membrane, grad_params, grad_x = got
    assert spikes.dtype == x.dtype and grad_x.dtype == x.dtype
    np.testing.assert_array_equal(spikes, want[0])
    np.testing.assert_allclose(membrane, want[1], rtol=1e-12 if exact else 1e-6, atol=1e-6)
    for field in neuron.PARAM_NAMES:
        a, b = getattr(want[2], field), getattr(grad_params, field)
        scale = 0.0 if a is None else float(np.abs(np.asarray(a, np.float64)).max())
        chex.assert_trees_all_close(
            None if b is None else np.asarray(b, np.float64),
            None if a is None else np.asarray(a, np.float64),
            rtol=rtol,
            atol=rtol * (scale + 1),
            custom_message=field,
        )
    np.testing.assert_allclose(
        np.asarray(grad_x, np.float64), np.asarray(want[3], np.float64), rtol=rtol, atol=rtol
    )
    # The case exercises what it is about.
    assert 0 < np.mean(np.asarray(spikes, np.float32)) < 1 or case.shape[0] == 1
    assert np.abs(np.asarray(grad_params.v_th)).sum() > 0
    if case.vanishing_input_scale:
        assert np.abs(np.asarray(grad_params.conduct[1])).max() > 0


def test_every_kernel_is_registered_by_its_name_and_dispatched_alike():
    assert set(kernels.KERNELS) == {"scan", "xla", "pallas"}
    assert neuron.IMPLEMENTATIONS == ("auto", *kernels.KERNELS)
    for name, kernel in kernels.KERNELS.items():
        assert kernel.name == name and kernels.get(name) is kernel
    assert isinstance(kernels.get("scan"), kernels.Scan)
    assert kernels.differentiable_twice(kernels.Scan())
    with pytest.raises(ValueError, match=r"unknown kernel 'fused'; expected one of \['pallas'"):
        kernels.get("fused")
    params = random_params(np.random.default_rng(1), 5, 4)
    x = random_input(np.random.default_rng(2), (4, 3, 5))
    by_name = neuron.glif(params, x, return_membrane=True, implementation="scan")
    by_kernel = neuron.glif(params, x, return_membrane=True, implementation=kernels.Scan())
    chex.assert_trees_all_equal(by_kernel, by_name)


@pytest.mark.parametrize("implementation", [name for name in IMPLEMENTATIONS if "scan" not in name])
def test_implementation_keeps_only_the_input_for_the_backward_pass(implementation):
    params = random_params(np.random.default_rng(0), 8, 4)
    x = jnp.ones((4, 16, 8))
    layer = functools.partial(neuron.glif, params, implementation=IMPLEMENTATIONS[implementation])
    _, vjp_fn = jax.vjp(layer, x)
    big = [leaf for leaf in jax.tree.leaves(vjp_fn) if getattr(leaf, "size", 0) >= x.size]
    assert sum(leaf.nbytes for leaf in big) <= x.nbytes
