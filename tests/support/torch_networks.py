"""An independent PyTorch transcription of the reference networks' forward pass, for the tests.

Written from the specification (spec §1.3, §2, §3), not from glif_jax: every layer reads its
tensors from a reference state dict (torch tensors under the reference's names and layouts) and
works channel-first and time-major, ``(T, B, C, H, W)``, as the reference does:

- ``SeqToANNContainer`` folds time into the batch, row ``t·B + b``;
- tdBN normalises over (T·B, H, W) with the biased variance, scales by ``alpha·Vth`` (Vth the
  0.5 buffer; plain BN when the buffer is absent) and updates the running variance with the
  unbiased estimate;
- the GLIF neuron is :func:`tests.support.oracles.torch_glif` (spec §1.3) on each layer's raw
  parameters;
- the static networks repeat the image over T, pool globally, apply the bias-free linears on
  every step and average the logits over T; the DVS network averages its flattened features
  over T before its linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests.support.oracles import torch_glif

SHORTCUT_ALPHA = 1 / math.sqrt(2)
_GLIF_KEYS = ("alpha", "beta", "gamma", "tau", "Vth", "leak", "reVth", "conduct")


def seq_to_ann(fn, x):
    """Apply ``fn`` to ``(T·B, ...)`` and give ``(T, B, ...)`` back."""
    steps, batch = x.shape[:2]
    y = fn(x.reshape(steps * batch, *x.shape[2:]))
    return y.reshape(steps, batch, *y.shape[1:])


class Transcription:
    """The layers of a reference network over its state dict ``state``.

    ``training`` selects batch statistics; the running statistics that the reference would
    store after this forward pass are collected in ``updated`` (reference names).
    """

    def __init__(self, state: dict, training: bool):
        self.state = state
        self.training = training
        self.updated: dict[str, torch.Tensor] = {}

    def bn(self, prefix: str, x, alpha: float):
        s = self.state
        if self.training:
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=False)
            n = x.numel() / x.size(1)
            with torch.no_grad():
                self.updated[prefix + "running_mean"] = (
                    0.1 * mean + 0.9 * s[prefix + "running_mean"]
                )
                self.updated[prefix + "running_var"] = (
                    0.1 * var * n / (n - 1) + 0.9 * s[prefix + "running_var"]
                )
                self.updated[prefix + "num_batches_tracked"] = s[prefix + "num_batches_tracked"] + 1
        else:
            mean, var = s[prefix + "running_mean"], s[prefix + "running_var"]
        centred = x - mean[None, :, None, None]
        if prefix + "Vth" in s:
            centred = alpha * s[prefix + "Vth"] * centred
        y = centred / torch.sqrt(var[None, :, None, None] + 1e-5)
        return (
            y * s[prefix + "weight"][None, :, None, None] + s[prefix + "bias"][None, :, None, None]
        )

    def conv_bn(self, prefix: str, x, stride: int, alpha: float = 1.0):
        weight = self.state[prefix + "0.weight"]
        padding = weight.shape[-1] // 2

        def frames(y):
            y = F.conv2d(y, weight, stride=stride, padding=padding)
            return self.bn(prefix + "1.", y, alpha)

        return seq_to_ann(frames, x)

    def glif(self, prefix: str, x):
        raw = {key: self.state[prefix + key] for key in _GLIF_KEYS}
        spikes, _ = torch_glif(raw, x.movedim(2, -1))  # the transcription is channel-last
        return spikes.movedim(-1, 2)

    def shortcut(self, prefix: str, x, stride: int):
        if prefix + "0.0.weight" in self.state:
            return self.conv_bn(prefix + "0.", x, stride, SHORTCUT_ALPHA)
        return seq_to_ann(lambda y: self.bn(prefix + "0.", y, SHORTCUT_ALPHA), x)


def post_activation_block(net: Transcription, prefix: str, x, stride: int):
    """Spec §3.1: GLIF(tdBN_{1/√2}(conv(GLIF(tdBN(conv_s(x))))) + shortcut(x))."""
    body = net.conv_bn(prefix + "body.0.", x, stride)
    body = net.glif(prefix + "body.1.", body)
    body = net.conv_bn(prefix + "body.2.", body, 1, SHORTCUT_ALPHA)
    return net.glif(prefix + "lif.", body + net.shortcut(prefix + "downsample.", x, stride))


def membrane_shortcut_block(net: Transcription, prefix: str, x, stride: int):
    """Spec §3.5: tdBN_{1/√2}(conv(GLIF(tdBN(conv_s(GLIF(x)))))) + shortcut(x), no GLIF after."""
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
    """Logits ``(B, n)`` of a reference ResNet on normalised images ``(B, C, H, W)``.

    Args:
      block_strides: the stride of every block, in order (the state dict does not hold them).

    Returns:
      ``(logits, updated running statistics)``.
    """
    net = Transcription(state, training)
    x = images.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1)
    weight = state["conv1.0.0.weight"]
    x = seq_to_ann(
        lambda y: net.bn(
            "conv1.0.1.", F.conv2d(y, weight, stride=stem_stride, padding=stem_padding), 1.0
        ),
        x,
    )
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


def sew_forward(state: dict, frames, *, layer_list, training: bool = False):
    """Logits ``(B, n)`` of the reference's SEW 7B-wideNet on frames ``(B, T, C, H, W)``.

    Args:
      layer_list: ``(channels, pool)`` per SEW block, as the reference's ``layer_list``.

    Returns:
      ``(logits, updated running statistics)``.
    """
    net = Transcription(state, training)

    def cba(prefix, x):
        return net.glif(prefix + "1.", net.conv_bn(prefix + "0.", x, 1))

    x = frames.permute(1, 0, 2, 3, 4)
    index, c_in = 0, x.shape[2]
    for channels, pool in layer_list:
        if channels != c_in:
            x = cba(f"conv.{index}.", x)
            index, c_in = index + 1, channels
        out = cba(f"conv.{index}.conv.1.", cba(f"conv.{index}.conv.0.", x))
        x = out + x  # connect_f 'ADD'
        index += 1
        if pool:
            x = seq_to_ann(lambda y: F.avg_pool2d(y, 2, 2), x)
            index += 1
    features = x.flatten(2).mean(0)
    return F.linear(features, state["out.weight"], state["out.bias"]), net.updated
