"""A PyTorch transcription of the reference (docs/reference.md §1-§4.1; the § numbers below are
that document's), which the benchmarks time against glif_jax.

Written from docs/reference.md, not from glif_jax: nothing here imports glif_jax, and the
network reads its tensors from reference state dicts (torch tensors or NumPy arrays under the
reference's names and layouts, e.g. from :func:`glif_jax.interop.export_reference_state_dict`).
Everything is channel-first and time-major, ``(T, B, C, H, W)``, as the reference is:

- ``SeqToANNContainer`` folds time into the batch, row ``t·B + b``;
- tdBN normalises over (T·B, H, W) with the biased variance, scales by ``alpha·Vth`` (Vth the
  0.5 buffer) and updates the running variance with the unbiased estimate;
- the GLIF neuron is the reference's per-step loop (§1.3, :func:`reference_glif`): the sigmoids
  of the raw parameters are taken inside every step, the spikes are written into a preallocated
  ``(T, B, C, H, W)`` tensor whose previous row is read back (``.clone()``) as the previous
  spike, the reset is not detached, and the spike's surrogate is the rectangle (§1.4);
- the network repeats the image over T, pools globally, applies the bias-free linears on every
  step and averages the logits over T.

It holds the GLIF loop of both benchmarks: the GLIF part times :func:`reference_glif` and its
channel-last variant :func:`channel_last_glif` alone
(:mod:`experiments.benchmarks.torch_glif`), and the training part times a trainable ResNet-19
(the reference's ``ResNet_19_cifar_CW``, :class:`ResNet19`, built from a state dict by
:func:`resnet19_from_state_dict`) with the reference's optimizer (:func:`reference_optimizer`)
and step (:func:`train_step`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

SHORTCUT_ALPHA = 1 / math.sqrt(2)
BN_VTH = 0.5
GLIF_KEYS = ("alpha", "beta", "gamma", "tau", "Vth", "leak", "reVth", "conduct")
GATE_KEYS = frozenset({"alpha", "beta", "gamma"})
NEURON_KEYS = frozenset({"tau", "Vth", "leak", "conduct", "reVth"})
_STEP_KEYS = ("alpha", "beta", "gamma", "tau", "Vth", "leak", "reVth")  # the order of glif_update

# Raw (pre-sigmoid) initial values of the reference's LIFSpike_CW at the module constants of
# §1.1 (tau 0.25, Vth 0.5, leak 0.0625, conduct 0.5, reVth 0.5).
_RAW_INIT = {
    "tau": -math.log(1 / 0.25 - 1),
    "Vth": 0.0,
    "leak": -math.log(1 / 0.0625 - 1),
    "reVth": 0.0,
    "conduct": 0.0,
}


# ------------------------------------------------------------------------------------------------
# The neuron


class SpikeAct(torch.autograd.Function):
    """H(z) forward (1 where z > 0), the rectangle 1[|z| < 0.5] backward (§1.4)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.gt(z, 0.0).float()

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * (z.abs() < 0.5).float()


def _per_channel(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(C,)`` → ``(1, C, 1, 1)`` for one step ``(B, C, H, W)`` (or ``(1, C)`` for ``(B, C)``)."""
    return value.view(1, -1, *([1] * (x.ndim - 2)))


def glif_update(coefficients: Sequence[torch.Tensor], u, o, x_t, conduct_t):
    """One update of the channel-wise soft GLIF in the reference's term order (§1.3).

    Args:
      coefficients: the sigmoids of ``alpha, beta, gamma, tau, Vth, leak, reVth``, each
        broadcastable to ``x_t``.
      u: the membrane potential of the previous step (before its reset).
      o: the spikes of the previous step.
      x_t: this step's input current.
      conduct_t: the sigmoid of this step's ``conduct``.

    Returns:
      ``(u_t, o_t)``.
    """
    alpha, beta, gamma, tau, v_th, leak, v_reset = coefficients
    current = x_t * (1 - beta * (1 - conduct_t))
    u = (
        ((1 - alpha * (1 - tau)) * u * (1 - gamma * o) - (1 - alpha) * leak)
        + current
        - (1 - gamma) * v_reset * o
    )
    return u, SpikeAct.apply(u - v_th)


def reference_glif(raw: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The channel-wise soft GLIF over all steps, as the reference runs it.

    The sigmoids are taken inside every step; ``u`` and ``out`` are allocated in the default
    dtype (float32) whatever ``x``'s dtype, and step t reads the previous spikes back from
    ``out[t − 1]`` (slot 0, still zero, at t = 0).

    Args:
      raw: the raw parameters ``alpha, beta, gamma, tau, Vth, leak, reVth`` ``(C,)`` and
        ``conduct`` ``(T, C)``.
      x: the input current ``(T, B, C, ...)``.

    Returns:
      The spikes ``(T, B, C, ...)``, float32.
    """
    u = torch.zeros(x.shape[1:], device=x.device)
    out = torch.zeros(x.shape, device=x.device)
    for t in range(x.shape[0]):
        o, x_t = out[max(t - 1, 0)].clone(), x[t]
        coefficients = [torch.sigmoid(_per_channel(raw[name], x_t)) for name in _STEP_KEYS]
        conduct = torch.sigmoid(_per_channel(raw["conduct"][t], x_t))
        u, out[t] = glif_update(coefficients, u, o, x_t, conduct)
    return out


def channel_last_glif(raw: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:func:`reference_glif` on glif_jax's layout ``(T, ..., C)``, with the sigmoids taken once
    and the spikes stacked at the end: the faster of the two on a CPU.

    Args:
      raw: the raw parameters, as :func:`reference_glif` takes them.
      x: the input current ``(T, ..., C)``.

    Returns:
      The spikes ``(T, ..., C)``, in ``x``'s dtype.
    """
    coefficients = [torch.sigmoid(raw[name]) for name in _STEP_KEYS]
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        u, o = glif_update(coefficients, u, o, x[t], torch.sigmoid(raw["conduct"][t]))
        spikes.append(o)
    return torch.stack(spikes)


class LIFSpikeCW(nn.Module):
    """The reference's channel-wise GLIF layer (``LIFSpike_CW``, soft gates; §1.2-§1.3).

    Args:
      channels: C.
      time_steps: T (the length of ``conduct``).
    """

    def __init__(self, channels: int, time_steps: int):
        super().__init__()
        for name in ("alpha", "beta", "gamma"):
            # --randomgate (§1.6): every training command of the README uses it.
            setattr(self, name, nn.Parameter(torch.empty(channels).uniform_(-0.1, 0.1)))
        for name in ("tau", "Vth", "leak", "reVth"):
            setattr(self, name, nn.Parameter(torch.full((channels,), _RAW_INIT[name])))
        self.conduct = nn.Parameter(torch.full((time_steps, channels), _RAW_INIT["conduct"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(T, B, C, H, W)`` of the input current ``x`` of that shape."""
        return reference_glif({name: getattr(self, name) for name in GLIF_KEYS}, x)


# ------------------------------------------------------------------------------------------------
# tdBN and time folding


def td_batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    vth: torch.Tensor | None,
    alpha: float,
    training: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's tdBN (§2.1) on ``x`` ``(T·B, C, H, W)``.

    Args:
      x: the folded input.
      weight, bias: the affine parameters ``(C,)``.
      running_mean, running_var: the running statistics ``(C,)``.
      vth: tdBN's 0.5 buffer, which scales by ``alpha·vth``; ``None``: plain BN.
      alpha: tdBN's alpha (1 or 1/√2).
      training: normalise with the batch statistics (else the running ones).

    Returns:
      The normalised ``x``, and in training the running statistics the reference stores after
      this call (``running_mean``, ``running_var``; empty otherwise).
    """
    updated = {}
    if training:
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        n = x.numel() / x.size(1)
        with torch.no_grad():
            updated["running_mean"] = 0.1 * mean + 0.9 * running_mean
            updated["running_var"] = 0.1 * var * n / (n - 1) + 0.9 * running_var
    else:
        mean, var = running_mean, running_var
    centred = x - mean[None, :, None, None]
    if vth is not None:
        centred = alpha * vth * centred
    y = centred / torch.sqrt(var[None, :, None, None] + 1e-5)
    return y * weight[None, :, None, None] + bias[None, :, None, None], updated


class TdBatchNorm(nn.BatchNorm2d):
    """The reference's ``tdBatchNorm`` (§2.1): batch statistics over (T·B, H, W), scale
    ``alpha·Vth`` with the persistent 0.5 buffer ``Vth``.

    Args:
      channels: C.
      alpha: 1, or 1/√2 for the two summed branches of a block.
    """

    def __init__(self, channels: int, alpha: float = 1.0):
        super().__init__(channels, eps=1e-5, momentum=0.1)
        self.alpha = alpha
        self.register_buffer("Vth", torch.tensor(BN_VTH))
        self.update_stats = True  # off while a recomputed block runs again (ResNet19's remat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(T·B, C, H, W)`` normalised; in training, the running statistics updated."""
        y, updated = td_batch_norm(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            vth=self.Vth,
            alpha=self.alpha,
            training=self.training,
        )
        if updated and self.update_stats:
            self.running_mean.copy_(updated["running_mean"])
            self.running_var.copy_(updated["running_var"])
            self.num_batches_tracked.add_(1)
        return y


class SeqToANNContainer(nn.Sequential):
    """SpikingJelly's ``SeqToANNContainer`` (v0.0.0.0.10): its children on ``(T·B, ...)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The children on ``x`` ``(T, B, ...)`` folded to ``(T·B, ...)``, unfolded after."""
        steps, batch = x.shape[:2]
        y = super().forward(x.flatten(0, 1).contiguous())
        return y.view(steps, batch, *y.shape[1:])


# ------------------------------------------------------------------------------------------------
# The trainable ResNet-19


def _conv(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlockCW(nn.Module):
    """The reference's post-activation block ``BasicBlock_CW`` (§3.1).

    Args:
      c_in, c_out: channels.
      stride: of the first convolution (and of the shortcut's 1×1 convolution).
      time_steps: T.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, time_steps: int):
        super().__init__()
        self.body = nn.Sequential(
            SeqToANNContainer(_conv(c_in, c_out, 3, stride), TdBatchNorm(c_out)),
            LIFSpikeCW(c_out, time_steps),
            SeqToANNContainer(_conv(c_out, c_out, 3, 1), TdBatchNorm(c_out, SHORTCUT_ALPHA)),
        )
        if c_in == c_out and stride == 1:
            self.downsample = SeqToANNContainer(TdBatchNorm(c_out, SHORTCUT_ALPHA))
        else:
            self.downsample = nn.Sequential(
                SeqToANNContainer(_conv(c_in, c_out, 1, stride), TdBatchNorm(c_out, SHORTCUT_ALPHA))
            )
        self.lif = LIFSpikeCW(c_out, time_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's spikes ``(T, B, C_out, H/s, W/s)`` of input spikes ``x``."""
        return self.lif(self.body(x) + self.downsample(x))


@contextlib.contextmanager
def _statistics_frozen(module: nn.Module):
    norms = [m for m in module.modules() if isinstance(m, TdBatchNorm)]
    for m in norms:
        m.update_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.update_stats = True


def _recomputed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` whose activations are recomputed in the backward pass; the recomputation
    leaves the running statistics alone, so that they are updated once per step."""
    calls = []

    def run(y):
        context = _statistics_frozen(block) if calls else contextlib.nullcontext()
        calls.append(None)
        with context:
            return block(y)

    return checkpoint(run, x, use_reentrant=False)


class ResNet19(nn.Module):
    """The reference's ``ResNet_19_cifar_CW`` (§3.2), with configurable widths.

    Its parameter and buffer names are the reference's (``conv1.0.0.weight``,
    ``features.3.body.1.alpha``, ``lastave.0.weight``...), so that a reference state dict loads
    with ``load_state_dict``. Weights are initialised as the reference does (§3: Kaiming normal,
    fan-out, for convolutions; N(0, 0.01²) for linears; the GLIF gates U(−0.1, 0.1)).

    Args:
      num_classes: n.
      time_steps: T.
      blocks: ``(c_in, c_out, stride)`` of every residual block, in order (default: ResNet-19's
        3-3-2 blocks of 128, 256 and 512 channels).
      stem_channels: channels of the stem conv → tdBN → GLIF.
      head_widths: widths of the bias-free linears after the pool, the last being n (default:
        the reference's rule, 512→256→n for n ≤ 50, else 512→n).
      in_channels: C of the images.
      remat: recompute every residual block in the backward pass (``torch.utils.checkpoint``;
        not an option of the reference, here for the memory comparison).
    """

    def __init__(
        self,
        num_classes: int = 10,
        time_steps: int = 4,
        *,
        blocks: Sequence[tuple[int, int, int]] | None = None,
        stem_channels: int = 128,
        head_widths: Sequence[int] | None = None,
        in_channels: int = 3,
        remat: bool = False,
    ):
        super().__init__()
        if blocks is None:
            blocks = resnet19_blocks()
        self.time_steps = time_steps
        self.remat = remat
        self.conv1 = nn.Sequential(
            SeqToANNContainer(_conv(in_channels, stem_channels, 3, 1), TdBatchNorm(stem_channels)),
            LIFSpikeCW(stem_channels, time_steps),
        )
        self.features = nn.Sequential(
            *(BasicBlockCW(c_in, c_out, stride, time_steps) for c_in, c_out, stride in blocks)
        )
        self.avgpool = SeqToANNContainer(nn.AdaptiveAvgPool2d(1))
        width = blocks[-1][1] if blocks else stem_channels
        if head_widths is None:
            head_widths = (256, num_classes) if num_classes <= 50 else (num_classes,)
        widths = (width, *head_widths)
        self.lastave = SeqToANNContainer(
            *(nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of a batch.

        Args:
          images: normalised, ``(B, C, H, W)``, repeated over T (direct encoding).

        Returns:
          ``(B, n)``, the mean over T of every step's logits.
        """
        x = images.unsqueeze(0).repeat(self.time_steps, 1, 1, 1, 1)
        x = self.conv1(x)
        for block in self.features:
            x = _recomputed(block, x) if self.remat and self.training else block(x)
        x = self.avgpool(x)
        x = x.view(x.shape[0], x.shape[1], -1)
        return self.lastave(x).mean(0)


def resnet19_blocks(
    stem_channels: int = 128,
    stage_channels: Sequence[int] = (128, 256, 512),
    stage_repeats: Sequence[int] = (3, 3, 2),
    stage_strides: Sequence[int] = (1, 2, 2),
) -> list[tuple[int, int, int]]:
    """The blocks of a ResNet-19 with these stages (§3.2).

    Args:
      stem_channels: the stem's width, the first block's input.
      stage_channels, stage_repeats, stage_strides: per stage, the blocks' width, their number
        and the stride of the first.

    Returns:
      ``(c_in, c_out, stride)`` of every block, for :class:`ResNet19`.
    """
    blocks, c_in = [], stem_channels
    for c_out, repeats, stride in zip(stage_channels, stage_repeats, stage_strides, strict=True):
        for i in range(repeats):
            blocks.append((c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    return blocks


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return torch.from_numpy(np.array(value))


def resnet19_architecture(
    shapes: Mapping[str, Sequence[int]], block_strides: Sequence[int] | None = None
) -> dict[str, Any]:
    """The :class:`ResNet19` arguments of a reference state dict, from its tensors' shapes.

    Args:
      shapes: ``{name: shape}`` of the reference state dict (e.g. of
        ``glif_jax.interop.reference_layout``).
      block_strides: the stride of every block (the state dict does not hold them); default:
        ResNet-19's, 2 for every block after the first that has a 1×1 shortcut convolution.

    Returns:
      ``num_classes``, ``time_steps``, ``blocks``, ``stem_channels``, ``head_widths`` and
      ``in_channels``.
    """
    count = 1 + max(int(key.split(".")[1]) for key in shapes if key.startswith("features."))
    blocks = []
    for i in range(count):
        c_out, c_in = tuple(shapes[f"features.{i}.body.0.0.weight"])[:2]
        has_conv = f"features.{i}.downsample.0.0.weight" in shapes
        stride = block_strides[i] if block_strides is not None else (2 if has_conv and i else 1)
        blocks.append((int(c_in), int(c_out), stride))
    stem_channels, in_channels = tuple(shapes["conv1.0.0.weight"])[:2]
    head = []
    while f"lastave.{len(head)}.weight" in shapes:
        out_features, _ = shapes[f"lastave.{len(head)}.weight"]
        head.append(int(out_features))
    return {
        "num_classes": head[-1],
        "time_steps": int(tuple(shapes["conv1.1.conduct"])[-2]),
        "blocks": blocks,
        "stem_channels": int(stem_channels),
        "head_widths": head,
        "in_channels": int(in_channels),
    }


def resnet19_from_state_dict(
    state: Mapping[str, Any],
    *,
    block_strides: Sequence[int] | None = None,
    remat: bool = False,
    device: str | torch.device = "cpu",
) -> ResNet19:
    """A :class:`ResNet19` with the widths, T and values of a reference state dict.

    Args:
      state: the reference state dict (NumPy arrays or torch tensors), e.g.
        ``glif_jax.interop.export_reference_state_dict(model)``; it is copied.
      block_strides: see :func:`resnet19_architecture`.
      remat: see :class:`ResNet19`.
      device: where the network lives.

    Returns:
      The network, in training mode.
    """
    shapes = {key: tuple(np.shape(value)) for key, value in state.items()}
    model = ResNet19(**resnet19_architecture(shapes, block_strides), remat=remat)
    model.load_state_dict({key: _as_tensor(value) for key, value in state.items()})
    return model.to(device).train()


# ------------------------------------------------------------------------------------------------
# The recipe


def reference_optimizer(
    model: nn.Module,
    *,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    gate_lr_scale: float = 0.1,
    **sgd_options,
) -> torch.optim.SGD:
    """The reference's SGD over three parameter groups, by the last part of each name (§4.1).

    - conv, linear and BN weight/bias: ``learning_rate``, ``weight_decay``;
    - ``tau, Vth, leak, conduct, reVth``: ``learning_rate``, no weight decay;
    - the gates ``alpha, beta, gamma``: ``learning_rate · gate_lr_scale``, no weight decay.

    Args:
      model: the network.
      learning_rate, momentum, weight_decay, gate_lr_scale: the recipe (the reference's CIFAR
        values by default).
      **sgd_options: passed to ``torch.optim.SGD`` (e.g. ``foreach``).

    Returns:
      The optimizer (momentum in torch's convention, no dampening, not Nesterov).
    """
    groups: dict[str, list] = {"other": [], "neuron": [], "gates": []}
    for name, param in model.named_parameters():
        last = name.rsplit(".", 1)[-1]
        group = "gates" if last in GATE_KEYS else "neuron" if last in NEURON_KEYS else "other"
        groups[group].append(param)
    return torch.optim.SGD(
        [
            {"params": groups["other"], "weight_decay": weight_decay},
            {"params": groups["neuron"], "weight_decay": 0.0},
            {"params": groups["gates"], "weight_decay": 0.0, "lr": learning_rate * gate_lr_scale},
        ],
        lr=learning_rate,
        momentum=momentum,
        **sgd_options,
    )


def train_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One step of the reference's loop (§4.1): zero_grad, forward, cross-entropy on the
    mean-over-T logits, backward, SGD step.

    Args:
      model: the network (or its ``torch.compile``), in training mode.
      optimizer: e.g. :func:`reference_optimizer`.
      images: ``(B, C, H, W)`` normalised images.
      labels: ``(B,)`` int64.
      autocast_dtype: run the forward pass under ``torch.autocast`` in this dtype (the
        reference's ``--amp`` path; ``None``: float32 throughout).

    Returns:
      The loss, a scalar tensor (not synchronised).
    """
    optimizer.zero_grad()
    if autocast_dtype is None:
        context = contextlib.nullcontext()
    else:
        context = torch.autocast(images.device.type, dtype=autocast_dtype)
    with context:
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return loss
