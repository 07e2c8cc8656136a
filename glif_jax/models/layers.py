"""The layers every network of the paper is made of, and how they are built.

Axes: time-major and channel-last, ``(T, B, H, W, C)`` for feature maps and ``(T, B, F)`` for
vectors. Every stateless layer runs on each frame (time folded into the batch, as the reference's
``SeqToANNContainer``); only the GLIF neurons loop over time.

One :class:`Builder` holds what is shared by all layers of a network (its T, its neuron, BN or
tdBN, the compute dtype and the initialisers), so that a ResNet block needs only its channels and
stride. The neuron is built by :func:`glif_factory` from flat options, so that the ablations of
the paper's Tables 4-6 are one option away (``channel_wise=False``, ``mode="fused"``,
``simplex="101"``...).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glif_jax import kernels, neuron, surrogates
from glif_jax import nn as gnn

__all__ = [
    "GLIF_OPTIONS",
    "AvgPool",
    "Builder",
    "ConvBN",
    "ConvBNGLIF",
    "check_input",
    "flatten_channel_major",
    "glif_factory",
    "global_average_pool",
    "kaiming_normal_fan_out",
    "make_builder",
    "readout",
    "run_layers",
    "torch_default_bias",
    "torch_default_kernel",
]

SHORTCUT_ALPHA = 1 / math.sqrt(2)
"""The tdBN factor of the two branches summed in a residual block (docs/reference.md §2.1)."""

kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""The reference's conv init: untruncated N(0, 2/(C_out·k·k)) (``kaiming_normal_``, fan-out,
ReLU gain)."""

torch_default_kernel = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
"""PyTorch's default conv and linear weight init, ``kaiming_uniform_(a=√5)``:
U(−1/√fan_in, 1/√fan_in)."""

reference_linear_kernel = jax.nn.initializers.normal(0.01)
"""The reference's linear init, N(0, 0.01²)."""


def torch_default_bias(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default linear bias init for ``fan_in`` inputs: U(−1/√fan_in, 1/√fan_in)."""
    bound = 1 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ------------------------------------------------------------------------------------------------
# The neuron


def glif_factory(
    time_steps: int,
    *,
    channel_wise: bool = True,
    mode: neuron.Mode = "soft",
    simplex: str | None = None,
    surrogate: surrogates.Surrogate | str = "rectangle",
    gates: Literal["random"] | Sequence[float] = "random",
    tau: float = neuron.InitialValues.tau,
    v_th: float = neuron.InitialValues.v_th,
    leak: float | Literal["scaled"] = neuron.InitialValues.leak,
    v_reset: float | None = None,
    conduct: float = neuron.InitialValues.conduct,
    detach_reset: bool = False,
    implementation: neuron.Implementation | kernels.Kernel = "auto",
) -> Callable[..., gnn.GLIF]:
    """A function ``make(channels, *, rngs) -> glif_jax.nn.GLIF`` for every GLIF layer of a network.

    The defaults are the reference's training setup (docs/reference.md §1.2, §1.6): channel-wise
    soft gates drawn raw from U(−0.1, 0.1), τ = 0.25, V_th = R = 0.5, ℓ = 0.0625 for every T,
    gᵗ = 0.5 and the rectangle surrogate.

    Args:
      time_steps: T.
      channel_wise: one parameter set per channel; ``False`` for the layer-wise GLIF (Table 6).
      mode: a gate mode of :data:`glif_jax.neuron.MODES` (``"fused"`` is GLIF_f, Table 5).
      simplex: a simplex LIF code of Table 4 such as ``"101"``: binary gates (α, β, γ) from the
        code and ``mode="static_hard"``.
      surrogate: the spike's surrogate derivative, or its name.
      gates: ``"random"`` (raw U(−0.1, 0.1), the reference's ``--randomgate``) or explicit
        (α, β, γ) ∈ (0, 1)³ through the reference's mapping ``(g − 0.5)/2 + 0.5``.
      tau, v_th, leak, conduct: initial τ, V_th, ℓ (or ``"scaled"`` for V_th/(2T)) and gᵗ, as
        :class:`glif_jax.neuron.InitialValues`.
      v_reset: initial soft-reset voltage R; ``None`` for V_th, as the reference.
      detach_reset: stop the gradient through the reset path.
      implementation: the time loop, see :func:`glif_jax.neuron.glif`.

    Returns:
      ``make(channels, *, rngs)``.

    Raises:
      ValueError: an unknown mode, surrogate or implementation, a malformed ``gates`` or
        ``simplex``, ``simplex`` with a mode other than ``"static_hard"``, an initial value
        outside (0, 1), or a non-positive ``time_steps``.
      TypeError: ``channel_wise`` is not a bool, or an initial value is not a number.
    """
    fn = "GLIF options"
    neuron.check_sizes(None, time_steps, fn)
    neuron.check_mode(mode, fn)
    neuron.check_implementation(implementation, fn)
    surrogate = surrogates.get(surrogate)
    if not isinstance(channel_wise, bool):
        raise TypeError(f"{fn}: channel_wise must be True or False, got {channel_wise!r}.")
    if simplex is not None:
        # Validates the code before any layer is built.
        neuron.simplex_params(simplex, None, time_steps)
        if mode not in ("soft", "static_hard"):
            raise ValueError(
                f"{fn}: simplex={simplex!r} fixes the gates and uses mode='static_hard'; "
                f"do not combine it with mode={mode!r}."
            )
        mode = "static_hard"
    random_gates = isinstance(gates, str)
    if random_gates and gates != "random":
        raise ValueError(f"{fn}: gates must be 'random' or three values (α, β, γ), got {gates!r}.")
    # Checked here, so that a bad value fails before any layer is built.
    checked = neuron.InitialValues(
        tau=tau,
        v_th=v_th,
        leak=leak,
        v_reset=v_th if v_reset is None else v_reset,
        conduct=conduct,
        gates=None if random_gates else gates,
    ).checked(time_steps, fn)
    init = {name: getattr(checked, name) for name in ("tau", "v_th", "leak", "v_reset", "conduct")}
    # Random gates are drawn by each layer, which then reads no gate values.
    given_gates = {} if random_gates else {"gates": checked.gates}

    def make(channels: int, *, rngs: nnx.Rngs) -> gnn.GLIF:
        layer = gnn.GLIF(
            channels,
            time_steps,
            channel_wise=channel_wise,
            mode=mode,
            surrogate=surrogate,
            random_gates=random_gates and simplex is None,
            detach_reset=detach_reset,
            implementation=implementation,
            rngs=rngs,
            **init,
            **given_gates,
        )
        if simplex is not None:
            params = neuron.simplex_params(
                simplex, channels if channel_wise else None, time_steps, **init
            )
            for name in neuron.GATE_NAMES:
                getattr(layer, name).set_value(getattr(params, name))
        return layer

    return make


GLIF_OPTIONS: tuple[str, ...] = tuple(
    name
    for name, p in inspect.signature(glif_factory).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)
"""The GLIF options every network accepts (the keyword arguments of :func:`glif_factory`)."""


# ------------------------------------------------------------------------------------------------
# Layers


class ConvBN(nnx.Module):
    """Convolution then (td)BN on every frame: the reference's ``SeqToANNContainer(conv, BN)``.

    ``(T, B, H, W, C_in)`` → ``(T, B, H', W', C_out)``.
    """

    def __init__(self, conv: nnx.Conv, bn: gnn.TDBatchNorm):
        self.conv = conv
        self.bn = bn

    def __call__(self, x: jax.Array) -> jax.Array:
        return gnn.per_frame(lambda frames: self.bn(self.conv(frames)), x)


class ConvBNGLIF(nnx.Module):
    """Convolution, (td)BN and a GLIF layer: ``(T, B, H, W, C_in)`` → spikes ``(T, B, H', W',
    C_out)``. The stem of the ResNets and the "cba" unit of the SEW networks."""

    def __init__(self, conv_bn: ConvBN, lif: gnn.GLIF):
        self.conv_bn = conv_bn
        self.lif = lif

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lif(self.conv_bn(x))


class AvgPool(nnx.Module):
    """2×2 average pooling with stride 2 on every frame (torch's ``AvgPool2d(2, 2)``: odd sizes
    are floored). ``(T, B, H, W, C)`` → ``(T, B, ⌊H/2⌋, ⌊W/2⌋, C)``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return gnn.per_frame(lambda frames: nnx.avg_pool(frames, (2, 2), strides=(2, 2)), x)


@dataclasses.dataclass(frozen=True)
class Builder:
    """Builds the layers of one network with its shared settings.

    Attributes:
      time_steps: T.
      make_glif: from :func:`glif_factory`.
      plain_bn: plain BatchNorm (torch conventions) instead of tdBN: the DVS networks, and the
        released ImageNet checkpoint, whose tdBN layers were trained as plain BN
        (docs/reference.md §5.5).
      dtype: the compute dtype of convolutions and linears; parameters stay float32.
      init: ``"reference"`` (conv kaiming-normal fan-out, linear N(0, 0.01²)) or ``"torch"``
        (PyTorch's default inits, as the CIFAR10-DVS network).
    """

    time_steps: int
    make_glif: Callable[..., gnn.GLIF]
    plain_bn: bool = False
    dtype: Any = jnp.float32
    init: Literal["reference", "torch"] = "reference"

    def conv(self, c_in, c_out, kernel, stride=1, padding=None, *, rngs) -> nnx.Conv:
        """A bias-free ``kernel×kernel`` convolution with torch's symmetric padding (default
        ``kernel // 2``)."""
        pad = kernel // 2 if padding is None else padding
        return nnx.Conv(
            c_in,
            c_out,
            (kernel, kernel),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=kaiming_normal_fan_out
            if self.init == "reference"
            else torch_default_kernel,
            rngs=rngs,
        )

    def norm(self, channels: int, alpha: float = 1.0) -> gnn.TDBatchNorm:
        """tdBN with factor ``alpha`` (or plain BN)."""
        return gnn.TDBatchNorm(channels, alpha=alpha, plain=self.plain_bn)

    def conv_bn(self, c_in, c_out, kernel, stride=1, *, alpha=1.0, padding=None, rngs) -> ConvBN:
        return ConvBN(
            self.conv(c_in, c_out, kernel, stride, padding, rngs=rngs), self.norm(c_out, alpha)
        )

    def glif(self, channels: int, *, rngs: nnx.Rngs) -> gnn.GLIF:
        return self.make_glif(channels, rngs=rngs)

    def conv_bn_glif(self, c_in, c_out, kernel, stride=1, *, padding=None, rngs) -> ConvBNGLIF:
        conv_bn = self.conv_bn(c_in, c_out, kernel, stride, padding=padding, rngs=rngs)
        return ConvBNGLIF(conv_bn, self.glif(c_out, rngs=rngs))

    def linear(self, c_in: int, c_out: int, *, use_bias: bool = False, rngs) -> nnx.Linear:
        reference = self.init == "reference"
        return nnx.Linear(
            c_in,
            c_out,
            use_bias=use_bias,
            dtype=self.dtype,
            kernel_init=reference_linear_kernel if reference else torch_default_kernel,
            bias_init=jax.nn.initializers.zeros if reference else torch_default_bias(c_in),
            rngs=rngs,
        )

    def linears(self, widths: Sequence[int], *, rngs: nnx.Rngs) -> nnx.List:
        """Bias-free linears ``widths[0] → widths[1] → …`` with nothing between them."""
        return nnx.List([self.linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])


def _check_positive_int(model: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{model}: {name} must be a positive int, got {value!r}.")


def make_builder(
    model: str,
    *,
    num_classes: int,
    time_steps: int,
    glif_options: dict[str, Any],
    plain_bn: bool = False,
    dtype: Any = jnp.float32,
    init: Literal["reference", "torch"] = "reference",
) -> Builder:
    """Check a network's shared settings and return its :class:`Builder`.

    Raises:
      ValueError: a non-positive ``num_classes`` or ``time_steps``, a neuron option that does not
        exist (the message lists those that do) or an invalid one, or a non-floating ``dtype``.
      TypeError: a ``time_steps`` that is not an int (:func:`glif_jax.neuron.check_sizes`).
    """
    _check_positive_int(model, "num_classes", num_classes)
    neuron.check_sizes(None, time_steps, model)
    unknown = sorted(set(glif_options) - set(GLIF_OPTIONS))
    if unknown:
        raise ValueError(
            f"{model}: unknown option(s) {unknown}; the GLIF options are {list(GLIF_OPTIONS)}."
        )
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"{model}: dtype must be a floating dtype, got {dtype!r}.")
    make_glif = glif_factory(int(time_steps), **glif_options)
    return Builder(int(time_steps), make_glif, plain_bn=bool(plain_bn), dtype=dtype, init=init)


# ------------------------------------------------------------------------------------------------
# Forward-pass helpers


def run_layers(layers: Sequence[Callable], x: jax.Array, *, remat: bool = False) -> jax.Array:
    """Apply ``layers`` in order; with ``remat``, each one is recomputed in the backward pass
    (:func:`glif_jax.nn.recompute`) instead of keeping its activations. The results are the same.
    """
    for layer in layers:
        x = gnn.recompute(layer, x) if remat and isinstance(layer, nnx.Module) else layer(x)
    return x


def global_average_pool(x: jax.Array) -> jax.Array:
    """``(T, B, H, W, C)`` → ``(T, B, C)``: the mean over space of every frame."""
    return jnp.mean(x, axis=(2, 3))


def flatten_channel_major(x: jax.Array) -> jax.Array:
    """``(T, B, H, W, C)`` → ``(T, B, C·H·W)`` in (C, H, W) order, as torch's ``flatten(2)`` of
    channel-first maps, so that a linear layer's input rows are the reference's."""
    return jnp.transpose(x, (0, 1, 4, 2, 3)).reshape(*x.shape[:2], -1)


def readout(logits: jax.Array, per_step: bool) -> jax.Array:
    """Per-step logits ``(T, B, n)`` → their mean over T, ``(B, n)`` (or all of them), float32."""
    logits = logits.astype(jnp.float32)
    return logits if per_step else jnp.mean(logits, axis=0)


def check_input(
    model: str,
    x,
    *,
    layout: str,
    channels: int,
    size: int | None = None,
    time_steps: int | None = None,
) -> None:
    """Raise a clear error unless ``x`` is a floating array ``layout`` (``"(B, H, W, C)"`` or
    ``"(B, T, H, W, C)"``) with ``channels`` channels, square ``size`` and ``time_steps``."""
    rank = layout.count(",") + 1
    shape = tuple(np.shape(x))
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{model}: expected floating-point inputs {layout}, got dtype {dtype}; normalise "
            "images or cast event counts with x.astype(jnp.float32)."
        )
    if len(shape) != rank or shape[-1] != channels:
        raise ValueError(
            f"{model}: expected inputs {layout} with C={channels} (batch-major, channel-last), "
            f"got shape {shape}."
        )
    if time_steps is not None and shape[1] != time_steps:
        raise ValueError(
            f"{model}: expected T={time_steps} frames on axis 1 of {layout}, got shape {shape}; "
            "the network was built for that T."
        )
    if size is not None and shape[-3:-1] != (size, size):
        raise ValueError(
            f"{model}: expected {size}×{size} inputs (its linear layer's size depends on it), "
            f"got shape {shape}; build the model with input_size={shape[-3]} for other sizes."
        )
