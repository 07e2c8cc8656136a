"""Reference state dicts for the tests: the released files' layouts and generated values."""

from __future__ import annotations

import json
import pathlib

import numpy as np

MANIFEST_PATH = pathlib.Path(__file__).parent / "data" / "reference_checkpoints.json"


def manifest() -> dict:
    """Every released reference checkpoint: its container, T, classes and ``keys`` (name, shape,
    dtype), in the file's order (copied from the reference's released files)."""
    return json.loads(MANIFEST_PATH.read_text())


def manifest_layout(entry: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` of a manifest entry, in order."""
    return {name: (tuple(shape), dtype) for name, shape, dtype in entry["keys"]}


def random_reference_state(layout: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Values for a reference layout that exercise every term of the forward pass.

    Convolutions get He-normal weights, linears N(0, 0.1²), BN layers affine parameters and
    running statistics away from their initial values, tdBN ``Vth`` buffers 0.5, and the GLIF
    parameters (raw, pre-sigmoid) spread around the reference's initial values. Every value is
    representable in float32, whatever the layout's dtype (float64 gates included).
    """
    rng = np.random.default_rng(seed)
    state = {}
    raw_glif = {  # (centre, spread) of each raw GLIF parameter
        "alpha": (0.0, 1.0),
        "beta": (0.0, 1.0),
        "gamma": (0.0, 1.0),
        "tau": (-1.1, 0.5),
        "leak": (-2.7, 0.5),
        "reVth": (0.0, 0.3),
        "conduct": (0.0, 0.5),
    }
    for name, (shape, dtype) in layout.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            value = rng.integers(0, 10_000, shape)
        elif leaf == "Vth" and shape == ():
            value = np.full(shape, 0.5)
        elif leaf == "Vth":
            value = rng.normal(-0.5, 0.3, shape)
        elif leaf in raw_glif:
            centre, spread = raw_glif[leaf]
            value = rng.normal(centre, spread, shape)
        elif leaf == "running_var":
            # The scale of convolutions of sparse spikes, which keeps eval-mode networks active.
            value = rng.uniform(0.1, 0.3, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "weight" and len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            value = rng.normal(0.0, np.sqrt(2 / fan_out), shape)
        elif leaf == "weight" and len(shape) == 2:
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "weight":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.1, shape)
        else:
            raise ValueError(f"no generator for {name}")
        state[name] = np.asarray(value).astype(np.float32).astype(dtype)
    return state


def to_torch(state: dict) -> dict:
    """NumPy state dict → torch tensors of the same dtypes."""
    import torch

    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
