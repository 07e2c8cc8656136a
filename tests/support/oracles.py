"""Independent transcriptions of the reference neuron (docs/reference.md §1.3-§1.8), for the tests.

``numpy_glif`` is a hand-unrolled NumPy loop of the equations of docs/reference.md, in the
reference's term order; ``torch_glif`` is the same loop in PyTorch, whose autograd gives the
reference gradients, and the GLIF layer of :mod:`tests.support.reference_networks`. Neither shares
code with glif_jax. Parameters are dicts of raw (pre-sigmoid) arrays keyed by the reference's names
(``alpha, beta, gamma, tau, Vth, leak, reVth, conduct``).
"""

from __future__ import annotations

import math

import numpy as np

JAX_TO_REFERENCE = {
    "alpha": "alpha",
    "beta": "beta",
    "gamma": "gamma",
    "tau": "tau",
    "v_th": "Vth",
    "leak": "leak",
    "v_reset": "reVth",
    "conduct": "conduct",
}


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_glif(raw: dict, x: np.ndarray, mode: str = "soft"):
    """Forward pass: spikes and membrane (before reset), each of x's shape (T, ..., C)."""
    tau, vth, leak, revth = (_sigmoid(raw[k]) for k in ("tau", "Vth", "leak", "reVth"))
    if mode == "fused":
        a = b = g = None
    elif mode in ("soft", "static"):
        a, b, g = (_sigmoid(raw[k]) for k in ("alpha", "beta", "gamma"))
    elif mode == "hard":
        a, b, g = ((_sigmoid(raw[k]) > 0.5).astype(x.dtype) for k in ("alpha", "beta", "gamma"))
    elif mode == "static_hard":
        a, b, g = ((raw[k] > 0).astype(x.dtype) for k in ("alpha", "beta", "gamma"))
    else:
        raise ValueError(mode)
    u = np.zeros(x.shape[1:], x.dtype)
    o = np.zeros(x.shape[1:], x.dtype)
    spikes, membrane = [], []
    for t in range(x.shape[0]):
        conduct = _sigmoid(raw["conduct"][t])
        if mode == "fused":
            current = x[t] * conduct
            u = ((tau * u * (1 - o) - leak) + current) - revth * o
        else:
            current = x[t] * (1 - b * (1 - conduct))
            u = (
                ((1 - a * (1 - tau)) * u * (1 - g * o) - (1 - a) * leak)
                + current
                - ((1 - g) * revth * o)
            )
        o = (u - vth > 0).astype(x.dtype)
        spikes.append(o)
        membrane.append(u)
    return np.stack(spikes), np.stack(membrane)


def torch_glif(raw: dict, x, mode: str = "soft", surrogate: str = "rectangle", detach=False):
    """The same loop in PyTorch (any float dtype); differentiable w.r.t. ``raw`` and ``x``."""
    import torch

    derivatives = {
        "rectangle": lambda z: (z.abs() < 0.5).to(z.dtype),
        "sigmoid": lambda z: 4.0 * torch.sigmoid(4.0 * z) * (1 - torch.sigmoid(4.0 * z)),
        "atan": lambda z: 1.0 / (1 + (math.pi * z) ** 2),
        "triangle": lambda z: (1.0 - z.abs()).clamp(min=0),
        "superspike": lambda z: 1.0 / (1 + 10.0 * z.abs()) ** 2,
    }

    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return (z > 0).to(z.dtype)

        @staticmethod
        def backward(ctx, grad):
            (z,) = ctx.saved_tensors
            return grad * derivatives[surrogate](z)

    class StraightThrough(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gate):
            return (gate > 0.5).to(gate.dtype)

        @staticmethod
        def backward(ctx, grad):
            return grad

    sig = torch.sigmoid
    tau, vth, leak, revth = (sig(raw[k]) for k in ("tau", "Vth", "leak", "reVth"))
    if mode in ("soft",):
        a, b, g = (sig(raw[k]) for k in ("alpha", "beta", "gamma"))
    elif mode == "hard":
        a, b, g = (StraightThrough.apply(sig(raw[k])) for k in ("alpha", "beta", "gamma"))
    elif mode == "static":
        a, b, g = (sig(raw[k]).detach() for k in ("alpha", "beta", "gamma"))
    elif mode == "static_hard":
        a, b, g = (raw[k].detach().gt(0).to(x.dtype) for k in ("alpha", "beta", "gamma"))
    u = torch.zeros(x.shape[1:], dtype=x.dtype)
    o = torch.zeros(x.shape[1:], dtype=x.dtype)
    spikes, membrane = [], []
    for t in range(x.shape[0]):
        conduct = sig(raw["conduct"][t])
        o_reset = o.detach() if detach else o
        if mode == "fused":
            u = ((tau * u * (1 - o_reset) - leak) + x[t] * conduct) - revth * o_reset
        else:
            current = x[t] * (1 - b * (1 - conduct))
            u = (
                ((1 - a * (1 - tau)) * u * (1 - g * o_reset) - (1 - a) * leak)
                + current
                - ((1 - g) * revth * o_reset)
            )
        o = Spike.apply(u - vth)
        spikes.append(o)
        membrane.append(u)
    return torch.stack(spikes), torch.stack(membrane)
