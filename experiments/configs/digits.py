"""The offline default: a spiking CNN with GLIF neurons on scikit-learn's bundled digits, T = 4.

    python -m experiments.main --config=experiments/configs/digits.py --workdir=runs/digits

Expected wall time: under 3 minutes on a 2-core CPU, compilation included, to ≥ 95 % test top-1
(1,797 8×8 images shipped inside scikit-learn: no download; a fixed stratified split of 360 test
images). This is what ``make demo`` runs.
"""

from experiments.configs.base import base_config


def get_config():
    config = base_config()
    config.dataset = "digits"
    config.model = "spiking_cnn"
    config.time_steps = 4
    config.batch_size = 64
    config.num_epochs = 30
    config.seed = 0
    config.learning_rate = 0.1
    config.weight_decay = 4e-5
    config.gate_lr_scale = 0.1
    config.log_every_steps = 10
    config.checkpoint_every_steps = 100
    return config
