"""Test settings: four fake CPU devices for the data-parallel tests."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """A parametrized test's first case runs in the fast loop (``-m "not slow"``, `make
    test-fast`); its whole grid runs in `make test`. The tests marked ``slow`` by hand are the
    whole runs, the processes, the notebooks and the whole networks compiled."""
    seen = set()
    for item in items:
        if getattr(item, "callspec", None) is None:
            continue
        test = (item.path, item.originalname)
        if test in seen:
            item.add_marker(pytest.mark.slow)
        seen.add(test)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
