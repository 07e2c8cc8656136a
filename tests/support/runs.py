"""Helpers for the tests that run training: a workdir's parameters, and their comparison."""

from pathlib import Path

import jax
import numpy as np

from experiments import train
from experiments.settings import Settings

MULTI_PROCESS_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
)
"""What makes a process join a multi-process run (:mod:`experiments.distributed`): the tests of
single-process runs remove them, so that a launcher's environment does not leak in."""


def restore_params(config, workdir, which="latest"):
    """The parameters of a workdir's checkpoint as NumPy arrays keyed by path."""
    settings = Settings.from_config(config)
    _, state, _ = train.load_for_evaluation(settings, Path(workdir), checkpoint=which)
    flat = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, int(state.step)


def assert_same_params(a, b, exact=True):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
