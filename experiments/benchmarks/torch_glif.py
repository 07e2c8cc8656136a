"""The GLIF layer as the reference runs it: a per-step PyTorch loop of the equations of
docs/reference.md §1.3-§1.4, differentiated by autograd. Benchmark-only; needs torch.

Channel-wise, soft gates, the rectangle surrogate, the reset not detached. Two layouts:

* ``"reference"``: as the reference code runs it (docs/reference.md §1.3): the input is
  ``(T, B, C, H, W)``, the per-channel parameters are broadcast as ``(1, C, 1, 1)`` and their
  sigmoids taken inside the per-step update, and the spikes are written into a preallocated
  ``out`` whose row t−1 is read back (``.clone()``) as the previous spike;
* ``"channel_last"``: the same equations on glif_jax's layout ``(T, B, H, W, C)``, with the
  sigmoids taken once and the spikes stacked at the end: the faster of the two on a CPU.

Both move the same bytes as glif_jax's operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glif_jax import interop


def _spike_function(torch):
    class Spike(torch.autograd.Function):
        """H(v) forward; the rectangle 1[|v| < 0.5] backward (the reference's SpikeAct)."""

        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return (v > 0).to(v.dtype)

        @staticmethod
        def backward(ctx, grad):
            (v,) = ctx.saved_tensors
            return grad * (v.abs() < 0.5).to(grad.dtype)

    return Spike.apply


def glif_loop(torch, raw: dict[str, Any], x):
    """Spikes ``(T, ...)`` of the channel-wise soft GLIF, one step at a time.

    Args:
      torch: the torch module.
      raw: raw (pre-sigmoid) parameters ``alpha, beta, gamma, tau, Vth, leak, reVth`` of shape
        ``(C,)`` and ``conduct`` of shape ``(T, C)``, as tensors.
      x: input current ``(T, ..., C)``.
    """
    spike = _spike_function(torch)
    sig = torch.sigmoid
    alpha, beta, gamma = sig(raw["alpha"]), sig(raw["beta"]), sig(raw["gamma"])
    tau, v_th, leak, v_reset = sig(raw["tau"]), sig(raw["Vth"]), sig(raw["leak"]), sig(raw["reVth"])
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        current = x[t] * (1 - beta * (1 - sig(raw["conduct"][t])))
        u = (
            ((1 - alpha * (1 - tau)) * u * (1 - gamma * o) - (1 - alpha) * leak)
            + current
            - (1 - gamma) * v_reset * o
        )
        o = spike(u - v_th)
        spikes.append(o)
    return torch.stack(spikes)


def reference_loop(torch, raw: dict[str, Any], x):
    """:func:`glif_loop` as the reference codes it, on ``x`` of shape ``(T, B, C, H, W)``."""
    spike = _spike_function(torch)
    sig = torch.sigmoid

    def per_channel(value):  # (C,) → (1, C, 1, 1) for (B, C, H, W) steps
        return value.view(1, -1, *([1] * (x.ndim - 3)))

    u = torch.zeros(x.shape[1:])
    out = torch.zeros(x.shape)
    for t in range(x.shape[0]):
        o = out[max(t - 1, 0)].clone()
        alpha, beta, gamma = (sig(per_channel(raw[n])) for n in ("alpha", "beta", "gamma"))
        tau, v_th, leak, v_reset = (
            sig(per_channel(raw[n])) for n in ("tau", "Vth", "leak", "reVth")
        )
        current = x[t] * (1 - beta * (1 - sig(per_channel(raw["conduct"][t]))))
        u = (
            ((1 - alpha * (1 - tau)) * u * (1 - gamma * o) - (1 - alpha) * leak)
            + current
            - (1 - gamma) * v_reset * o
        )
        out[t] = spike(u - v_th)
    return out


LAYOUTS = {"reference": reference_loop, "channel_last": glif_loop}


def forward_backward(torch, raw: dict[str, Any], x, g, layout: str = "channel_last"):
    """One forward and backward pass: spikes, and the gradients of ⟨spikes, g⟩ w.r.t. ``x`` and
    every raw parameter (accumulated into their ``.grad``). ``x`` and ``g`` are in the layout's
    shape (:func:`make_inputs`)."""
    for p in (*raw.values(), x):
        p.grad = None
    spikes = LAYOUTS[layout](torch, raw, x)
    spikes.backward(g)
    return spikes


def make_inputs(torch, x: np.ndarray, g: np.ndarray, params, layout: str = "channel_last"):
    """Torch leaf tensors (float32) for the raw parameters (a :class:`glif_jax.neuron.GLIFParams`,
    renamed as the reference names them), the input and the cotangent; ``x`` and ``g`` come
    channel-last, ``(T, B, H, W, C)``, and are laid out for ``layout``."""
    if layout == "reference":
        x, g = (np.ascontiguousarray(np.moveaxis(a, -1, 2)) for a in (x, g))
    raw = {
        interop.GLIF_REFERENCE_NAMES[name]: torch.tensor(np.asarray(value), requires_grad=True)
        for name, value in vars(params).items()
    }
    return raw, torch.tensor(x, requires_grad=True), torch.tensor(g)
