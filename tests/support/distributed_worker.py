"""One process of a multi-process training test: train the tiny digits config, dump parameters.

    python tests/support/distributed_worker.py WORKDIR OUT [--coordinator_address=HOST:PORT
        --num_processes=N --process_id=I]

Writes ``OUT/params_<process index>.npz``: the final parameters as this process restores them.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("out", type=Path)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()

    from experiments.main import initialize_distributed

    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    import jax
    import numpy as np

    from experiments import train
    from tests.support import tiny_digits
    from tests.support.runs import restore_params

    config = tiny_digits.get_config()
    config.num_epochs = 1
    train.train_and_evaluate(config, args.workdir)
    params, _ = restore_params(config, args.workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"params_{jax.process_index()}.npz", **params)


if __name__ == "__main__":
    main()
