"""The reference's released checkpoint files: reading them, and the network each one needs.

Reading ``.pth`` files needs PyTorch, an optional dependency (``pip install 'glif_jax[torch]'``).
Files are read with ``torch.load(..., weights_only=True)``: a checkpoint never runs code.

Example:
  A file in the released format (here written from a network of glif_jax, as the released
  files are read: ``{"state_dict": {name: tensor}}``), loaded into the network its name says:

  >>> import pathlib, tempfile, torch
  >>> from flax import nnx
  >>> from glif_jax import interop, models
  >>> net = models.create("resnet19", num_classes=10, time_steps=4, rngs=nnx.Rngs(0))
  >>> state_dict = interop.export_reference_state_dict(net)
  >>> tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "resCifar19-CIFAR10-step4-CW.pth.tar"
  >>> torch.save({"state_dict": tensors}, path)
  >>> model = interop.load_reference_checkpoint(path)
  >>> type(model).__name__, model.time_steps
  ('SpikingResNet', 4)
  >>> model.eval()  # then model(images), images (B, 32, 32, 3) normalised as in training
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from glif_jax import models
from glif_jax.interop.state_dict import load_reference_state_dict

__all__ = [
    "create_reference_model",
    "load_reference_checkpoint",
    "read_reference_checkpoint",
    "reference_model_config",
]

# Released file name → (network, classes, T). Group 1 is T (or the dataset, then T).
_RELEASED = (
    (re.compile(r"resCifar19-CIFAR(10|100)-step(\d+)-CW"), "resnet19"),
    (re.compile(r"resCifar18stand-CIFAR(10|100)-step(\d+)-CW"), "resnet18"),
    (re.compile(r"resnet18MS-ImageNet-step(\d+)"), "ms_resnet18"),
    (re.compile(r"(?:^|/)cifar10dvs/|checkpoint_(?:max|latest)\.pth$"), "sew_7b_widenet"),
)
_CONTAINERS = ("state_dict", "net")


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading the reference's PyTorch checkpoints needs torch: "
            "pip install 'glif_jax[torch]' (the CPU build is enough)."
        ) from error
    return torch


def reference_model_config(
    name: str | os.PathLike, state_dict: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The network a released checkpoint needs, from its file name.

    ``resCifar19-CIFAR10-step4-CW.pth.tar`` → ``("resnet19", {num_classes: 10, time_steps: 4})``;
    ``resCifar18stand-CIFAR100-step2-CW.pth.tar`` → ResNet-18 for CIFAR-100 at T = 2;
    ``resnet18MS-ImageNet-step6.pth.tar`` → MS-ResNet-18, 1000 classes, T = 6, ``plain_bn=True``
    (its tdBN layers were saved as plain BN, docs/reference.md §5.5);
    ``cifar10dvs/checkpoint_max.pth`` → the 7B-wideNet at T = 16.

    Args:
      name: the file name or path.
      state_dict: if given, a ResNet whose tdBN ``Vth`` buffers are missing (any checkpoint saved
        after ``convert_sync_batchnorm``) gets ``plain_bn=True``.

    Returns:
      ``(model name, create options)`` for :func:`glif_jax.models.create`.

    Raises:
      ValueError: the name is not one of the released files.
    """
    path = os.fspath(name).replace(os.sep, "/")
    for pattern, model in _RELEASED:
        match = pattern.search(path)
        if match is None:
            continue
        if model == "sew_7b_widenet":
            return model, {"num_classes": 10, "time_steps": 16}
        if model == "ms_resnet18":
            return model, {"num_classes": 1000, "time_steps": int(match[1]), "plain_bn": True}
        config = {"num_classes": int(match[1]), "time_steps": int(match[2])}
        if state_dict is not None and not any(
            key.endswith(".Vth") and np.ndim(value) == 0 for key, value in state_dict.items()
        ):
            config["plain_bn"] = True
        return model, config
    raise ValueError(
        f"reference_model_config: {path!r} is not a released reference checkpoint name "
        "(resCifar19-CIFAR{10,100}-step{T}-CW.pth.tar, resCifar18stand-CIFAR{10,100}-step{T}-CW"
        ".pth.tar, resnet18MS-ImageNet-step{T}.pth.tar, cifar10dvs/checkpoint_max.pth); build the "
        "model with glif_jax.models.create and use load_reference_state_dict."
    )


def create_reference_model(
    name: str | os.PathLike,
    *,
    rngs: nnx.Rngs | None = None,
    state_dict: Mapping[str, Any] | None = None,
    **options,
) -> nnx.Module:
    """Build the network for a released checkpoint (see :func:`reference_model_config`).

    Args:
      name: the checkpoint's file name or path.
      rngs: random streams for the initial values (overwritten by a load); default
        ``nnx.Rngs(0)``.
      state_dict: as :func:`reference_model_config`.
      **options: further options of :func:`glif_jax.models.create` (e.g. ``remat=True``).
    """
    model, config = reference_model_config(name, state_dict)
    return models.create(model, rngs=rngs or nnx.Rngs(0), **{**config, **options})


def read_reference_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict of a reference checkpoint file, as NumPy arrays in the reference's layout.

    Reads the static-image checkpoints (``.pth.tar``: ``{"state_dict": ...}``), the CIFAR10-DVS
    ones (``.pth``: ``{"net": ..., "optimizer": ..., ...}``) and bare state dicts, with
    ``torch.load(weights_only=True)``.

    Raises:
      ImportError: torch is not installed.
      ValueError: the file holds none of these.
    """
    torch = _import_torch()
    content = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(content, Mapping):
        for container in _CONTAINERS:
            if isinstance(content.get(container), Mapping):
                content = content[container]
                break
    if not isinstance(content, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in content.values()
    ):
        found = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"read_reference_checkpoint: {os.fspath(path)!r} holds no state dict (expected a "
            f"mapping of names to tensors, or one under {list(_CONTAINERS)}); found {found}."
        )
    return {key: value.detach().cpu().numpy() for key, value in content.items()}


def load_reference_checkpoint(
    path: str | os.PathLike,
    model: nnx.Module | None = None,
    *,
    rngs: nnx.Rngs | None = None,
    **options,
) -> nnx.Module:
    """Load a released reference checkpoint into ``model``, or into the network it needs.

    Args:
      path: the ``.pth.tar`` / ``.pth`` file.
      model: the network to load into; ``None`` builds it from the file name
        (:func:`create_reference_model`, with ``plain_bn=True`` when the file's tdBN layers were
        saved as plain BN).
      rngs, options: for :func:`create_reference_model` when ``model`` is ``None``.

    Returns:
      The loaded network. Call ``model.eval()`` before evaluating it.

    Raises:
      ImportError: torch is not installed.
      ValueError: see :func:`glif_jax.interop.load_reference_state_dict` and
        :func:`reference_model_config`.
    """
    state_dict = read_reference_checkpoint(path)
    if model is None:
        model = create_reference_model(path, rngs=rngs, state_dict=state_dict, **options)
    return load_reference_state_dict(model, state_dict)
