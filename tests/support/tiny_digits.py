"""The digits config shrunk for tests: a narrow network, two epochs, frequent checkpoints.

    python -m experiments.main --config=tests/support/tiny_digits.py --workdir=/tmp/tiny

Expected wall time: about 15 s on a 2-core CPU.
"""

from experiments.configs import digits


def get_config():
    config = digits.get_config()
    config.model_options.channels = (4, 8)
    config.batch_size = 32
    config.num_epochs = 2
    config.log_every_steps = 5
    config.checkpoint_every_steps = 7
    config.analyze_after_training = False
    return config
