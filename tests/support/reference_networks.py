"""The reference networks in PyTorch over a reference state dict, for the tests (docs/reference.md
§2-§3.5; the § numbers below are that document's).

Written from docs/reference.md, not from glif_jax or the benchmarks: nothing here imports either.
The GLIF layer is :func:`tests.support.oracles.torch_glif`, the tests' one transcription of the
neuron. The networks read their tensors from a state dict under the reference's names and
layouts, and run channel-first and time-major, ``(T, B, C, H, W)``, as the reference does:

- every convolution and tdBN sees time folded into the batch, row ``t·B + b`` (SpikingJelly's
  ``SeqToANNContainer``);
- tdBN normalises over (T·B, H, W) with the biased variance, scales by ``alpha·Vth`` (Vth the 0.5
  buffer; plain BN when the buffer is absent) and updates the running variance with the unbiased
  estimate;
- the static networks repeat the image over T, pool globally, apply the bias-free linears on every
  step and average the logits over T; the DVS network averages its flattened features over T
  before its linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests.support.oracles import torch_glif

SHORTCUT_ALPHA = 1 / math.sqrt(2)
GLIF_KEYS = ("alpha", "beta", "gamma", "tau", "Vth", "leak", "reVth", "conduct")


def per_frame(fn, x):
    """``fn`` on every frame of ``x`` ``(T, B, ...)``: time folded into the batch, then unfolded."""
    steps, batch = x.shape[:2]
    y = fn(x.reshape(steps * batch, *x.shape[2:]))
    return y.reshape(steps, batch, *y.shape[1:])


class Network:
    """The layers of a reference network over its state dict.

    Args:
      state: the reference state dict, torch tensors.
      training: normalise with the batch statistics (else the running ones).

    Attributes:
      updated: the running statistics the reference stores after the forward pass (training
        only), by their reference names.
    """

    def __init__(self, state: dict, training: bool):
        self.state = state
        self.training = training
        self.updated: dict[str, torch.Tensor] = {}

    def bn(self, prefix: str, x, alpha: float):
        """tdBN ``prefix`` (§2.1; plain BN without a ``Vth`` buffer) on ``(T·B, C, H, W)``."""
        s, p = self.state, prefix
        if self.training:
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=False)
            n = x.numel() / x.size(1)
            with torch.no_grad():
                updated = {
                    "running_mean": 0.1 * mean + 0.9 * s[p + "running_mean"],
                    "running_var": 0.1 * var * n / (n - 1) + 0.9 * s[p + "running_var"],
                    "num_batches_tracked": s[p + "num_batches_tracked"] + 1,
                }
            self.updated.update({p + key: value for key, value in updated.items()})
        else:
            mean, var = s[p + "running_mean"], s[p + "running_var"]
        centred = x - mean[None, :, None, None]
        if p + "Vth" in s:
            centred = alpha * s[p + "Vth"] * centred
        y = centred / torch.sqrt(var[None, :, None, None] + 1e-5)
        return y * s[p + "weight"][None, :, None, None] + s[p + "bias"][None, :, None, None]

    def conv_bn(self, prefix: str, x, stride: int, alpha: float = 1.0):
        """Conv ``prefix + "0."`` then tdBN ``prefix + "1."`` on ``(T, B, C, H, W)``."""
        weight = self.state[prefix + "0.weight"]
        padding = weight.shape[-1] // 2
        conv = lambda y: F.conv2d(y, weight, stride=stride, padding=padding)
        return per_frame(lambda y: self.bn(prefix + "1.", conv(y), alpha), x)

    def glif(self, prefix: str, x):
        """The GLIF layer ``prefix`` (§1.3) on ``(T, B, C, ...)``: soft gates, rectangle
        surrogate, the reset not detached."""
        raw = {key: self.state[prefix + key] for key in GLIF_KEYS}
        spikes, _ = torch_glif(raw, x.movedim(2, -1))  # torch_glif is channel-last
        return spikes.movedim(-1, 2)

    def shortcut(self, prefix: str, x, stride: int):
        """A block's shortcut: conv 1×1 then tdBN, or tdBN alone when it has no conv."""
        if prefix + "0.0.weight" in self.state:
            return self.conv_bn(prefix + "0.", x, stride, SHORTCUT_ALPHA)
        return per_frame(lambda y: self.bn(prefix + "0.", y, SHORTCUT_ALPHA), x)


def post_activation_block(net: Network, prefix: str, x, stride: int):
    """§3.1: GLIF(tdBN_{1/√2}(conv(GLIF(tdBN(conv_s(x))))) + shortcut(x)), on spikes."""
    body = net.conv_bn(prefix + "body.0.", x, stride)
    body = net.glif(prefix + "body.1.", body)
    body = net.conv_bn(prefix + "body.2.", body, 1, SHORTCUT_ALPHA)
    return net.glif(prefix + "lif.", body + net.shortcut(prefix + "downsample.", x, stride))


def membrane_shortcut_block(net: Network, prefix: str, x, stride: int):
    """§3.5: tdBN_{1/√2}(conv(GLIF(tdBN(conv_s(GLIF(x)))))) + shortcut(x), on membrane
    potentials, no GLIF after."""
    body = net.glif(prefix + "body.0.", x)
    body = net.conv_bn(prefix + "body.1.", body, stride)
    body = net.glif(prefix + "body.2.", body)
    body = net.conv_bn(prefix + "body.3.", body, 1, SHORTCUT_ALPHA)
    return body + net.shortcut(prefix + "downsample.", x, stride)


def resnet_forward(
    state: dict,
    images,
    *,
    time_steps: int,
    block_strides,
    membrane_shortcut: bool = False,
    stem_stride: int = 1,
    stem_padding: int = 1,
    training: bool = False,
):
    """A reference ResNet on normalised images.

    Args:
      state: the reference state dict, torch tensors.
      images: ``(B, C, H, W)``.
      time_steps: T.
      block_strides: the stride of every block, in order (the state dict does not hold them).
      membrane_shortcut: MS blocks (§3.5) instead of post-activation ones (§3.1).
      stem_stride, stem_padding: the stem convolution's.
      training: batch statistics (else the running ones).

    Returns:
      ``(logits (B, n), updated running statistics)``.
    """
    net = Network(state, training)
    x = images.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1)
    weight = state["conv1.0.0.weight"]
    stem = lambda y: F.conv2d(y, weight, stride=stem_stride, padding=stem_padding)
    x = per_frame(lambda y: net.bn("conv1.0.1.", stem(y), 1.0), x)
    x = net.glif("conv1.1.", x)
    block = membrane_shortcut_block if membrane_shortcut else post_activation_block
    for i, stride in enumerate(block_strides):
        x = block(net, f"features.{i}.", x, stride)
    features = x.mean((3, 4))  # AdaptiveAvgPool2d(1), then view(T, B, C)
    j = 0
    while f"lastave.{j}.weight" in state:
        features = F.linear(features, state[f"lastave.{j}.weight"])
        j += 1
    return features.mean(0), net.updated


def _conv_bn_glif(net: Network, prefix: str, x):
    """A SEW layer: conv ``prefix + "0.0."``, tdBN ``prefix + "0.1."``, GLIF ``prefix + "1."``."""
    return net.glif(prefix + "1.", net.conv_bn(prefix + "0.", x, 1))


def sew_forward(state: dict, frames, *, layer_list, training: bool = False):
    """The reference's SEW 7B-wideNet (the CIFAR10-DVS network) on event frames.

    Args:
      state: the reference state dict, torch tensors.
      frames: ``(B, T, C, H, W)``.
      layer_list: ``(channels, pool)`` per SEW block, as the reference's ``layer_list``.
      training: batch statistics (else the running ones).

    Returns:
      ``(logits (B, n), updated running statistics)``.
    """
    net = Network(state, training)
    x = frames.permute(1, 0, 2, 3, 4)
    index, c_in = 0, x.shape[2]
    for channels, pool in layer_list:
        if channels != c_in:
            x = _conv_bn_glif(net, f"conv.{index}.", x)
            index, c_in = index + 1, channels
        out = _conv_bn_glif(net, f"conv.{index}.conv.0.", x)
        out = _conv_bn_glif(net, f"conv.{index}.conv.1.", out)
        x = out + x  # connect_f 'ADD'
        index += 1
        if pool:
            x = per_frame(lambda y: F.avg_pool2d(y, 2, 2), x)
            index += 1
    features = x.flatten(2).mean(0)
    return F.linear(features, state["out.weight"], state["out.bias"]), net.updated
