"""The GLIF layer alone in PyTorch, for the GLIF part of the benchmark: one forward and backward
pass of the reference's per-step loop (:mod:`experiments.benchmarks.torch_networks`),
differentiated by autograd. Benchmark-only; needs torch.

Channel-wise, soft gates, the rectangle surrogate, the reset not detached. Two layouts:

* ``"reference"``: as the reference code runs it (docs/reference.md §1.3,
  :func:`~experiments.benchmarks.torch_networks.reference_glif`): the input is
  ``(T, B, C, H, W)``, the per-channel parameters are broadcast as ``(1, C, 1, 1)`` and their
  sigmoids taken inside the per-step update, and the spikes are written into a preallocated
  ``out`` whose row t−1 is read back (``.clone()``) as the previous spike;
* ``"channel_last"``: the same equations on glif_jax's layout ``(T, B, H, W, C)``, with the
  sigmoids taken once and the spikes stacked at the end
  (:func:`~experiments.benchmarks.torch_networks.channel_last_glif`): the faster of the two on a
  CPU.

Both move the same bytes as glif_jax's operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.benchmarks import torch_networks
from glif_jax import interop

LAYOUTS = {
    "reference": torch_networks.reference_glif,
    "channel_last": torch_networks.channel_last_glif,
}


def forward_backward(torch, raw: dict[str, Any], x, g, layout: str = "channel_last"):
    """One forward and backward pass: spikes, and the gradients of ⟨spikes, g⟩ w.r.t. ``x`` and
    every raw parameter (accumulated into their ``.grad``).

    Args:
      torch: the torch module, as the caller imported it.
      raw: the raw parameters (:func:`make_inputs`).
      x: the input current, in the layout's shape (:func:`make_inputs`).
      g: the cotangent of the spikes, in the same shape.
      layout: a key of :data:`LAYOUTS`.

    Returns:
      The spikes.
    """
    for p in (*raw.values(), x):
        p.grad = None
    spikes = LAYOUTS[layout](raw, x)
    spikes.backward(g)
    return spikes


def make_inputs(torch, x: np.ndarray, g: np.ndarray, params, layout: str = "channel_last"):
    """Torch leaf tensors (float32) for the raw parameters, the input and the cotangent.

    Args:
      torch: the torch module, as the caller imported it.
      x: the input current, channel-last ``(T, B, H, W, C)``.
      g: the cotangent of the spikes, the same shape.
      params: a :class:`glif_jax.neuron.GLIFParams`, renamed as the reference names them.
      layout: a key of :data:`LAYOUTS`; ``x`` and ``g`` are laid out for it.

    Returns:
      ``(raw, x, g)``: the parameters by the reference's names (requiring gradients), the input
      (requiring gradients) and the cotangent.
    """
    if layout == "reference":
        x, g = (np.ascontiguousarray(np.moveaxis(a, -1, 2)) for a in (x, g))
    raw = {
        interop.GLIF_REFERENCE_NAMES[name]: torch.tensor(np.asarray(value), requires_grad=True)
        for name, value in vars(params).items()
    }
    return raw, torch.tensor(x, requires_grad=True), torch.tensor(g)
