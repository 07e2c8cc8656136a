"""A reference run of the tiny digits config, shared by the training and fault tests."""

import pytest

from experiments import train
from tests.support import tiny_digits
from tests.support.runs import restore_params


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """``(workdir, summary, params, step)`` of a run of the tiny config never interrupted."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = tiny_digits.get_config()
    summary = train.train_and_evaluate(config, workdir)
    params, step = restore_params(config, workdir)
    return workdir, summary, params, step
