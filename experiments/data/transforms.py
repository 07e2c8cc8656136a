"""Transforms of one example, channel-last, NumPy in and out: the reference's torchvision pipelines.

Augmentation and normalisation follow the reference (docs/reference.md §4.2), with images
channel-last ``(H, W, C)``:

- CIFAR train: RandomCrop(32, padding=4) with black padding, RandomHorizontalFlip, ToTensor,
  Normalize. CIFAR eval: ToTensor, Normalize.
- ImageNet train: RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(3/4, 4/3), bilinear),
  RandomHorizontalFlip, ToTensor, Normalize. ImageNet eval: Resize(256), CenterCrop(224),
  ToTensor, Normalize.

Every random transform takes the example's own ``np.random.Generator``, so that an example's
augmentation depends only on its seed (:mod:`experiments.data.pipeline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], pixel_max: float = 255.0
) -> np.ndarray:
    """ToTensor then Normalize: `(image / pixel_max − mean) / std`, in float32 as torchvision.

    Args:
      image: `(..., C)` integer pixels in `[0, pixel_max]`.
      mean: per-channel mean of the scaled pixels, length C.
      std: per-channel standard deviation of the scaled pixels, length C.
      pixel_max: the value that maps to 1.0 (255 for 8-bit images, 16 for digits).

    Returns:
      `(..., C)` float32.
    """
    scaled = image.astype(np.float32) / np.float32(pixel_max)
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_and_random_crop(image: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """RandomCrop(size=(H, W), padding): zero-pad H and W, take an H×W window at a random offset.

    The offsets along H and W are independent and uniform in `0..2·padding`. Leading axes (e.g.
    the frames of an event clip) all get the same window.

    Args:
      image: `(..., H, W, C)`.
      rng: the example's random generator.
      padding: pixels of zeros added on every side.

    Returns:
      `(..., H, W, C)`, same dtype.
    """
    height, width = image.shape[-3:-1]
    padded_shape = list(image.shape)
    padded_shape[-3] += 2 * padding
    padded_shape[-2] += 2 * padding
    # A zero canvas and one copy: several times faster than np.pad on small images.
    padded = np.zeros(padded_shape, image.dtype)
    padded[..., padding : padding + height, padding : padding + width, :] = image
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[..., top : top + height, left : left + width, :]


def random_horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RandomHorizontalFlip(p=0.5): reverse the W axis of `(..., H, W, C)` with probability 1/2."""
    return image[..., ::-1, :] if rng.random() < 0.5 else image


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """The crop box of torchvision's RandomResizedCrop (`get_params`).

    Up to `attempts` times, draw an area fraction uniform in `scale` and an aspect ratio w/h
    log-uniform in `ratio`; keep the first box that fits, at a uniform position. If none fits,
    fall back to the largest centred box whose aspect ratio is clipped to `ratio`.

    Args:
      height: image height in pixels.
      width: image width in pixels.
      rng: the example's random generator.
      scale: (min, max) fraction of the image area.
      ratio: (min, max) aspect ratio w/h.
      attempts: draws before the fallback.

    Returns:
      (top, left, box_height, box_width) in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_width = round(math.sqrt(target_area * aspect))
        box_height = round(math.sqrt(target_area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(rng.integers(0, height - box_height + 1))
            left = int(rng.integers(0, width - box_width + 1))
            return top, left, box_height, box_width
    in_ratio = width / height
    if in_ratio < min(ratio):
        box_width, box_height = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        box_width, box_height = round(height * max(ratio)), height
    else:
        box_width, box_height = width, height
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL's bilinear resize, as torchvision's Resize on PIL images (antialiased when shrinking).

    Args:
      image: `(H, W, C)` uint8.
      height: output height.
      width: output width.

    Returns:
      `(height, width, C)` uint8.
    """

    def resize(pixels: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        return np.asarray(resized)

    if image.shape[-1] == 3:
        return resize(image)
    return np.stack([resize(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """RandomResizedCrop(size, scale, ratio, bilinear) on a `(H, W, C)` uint8 image.

    Args:
      image: `(H, W, C)` uint8.
      rng: the example's random generator.
      size: side of the square output.
      scale: (min, max) fraction of the image area covered by the crop.
      ratio: (min, max) aspect ratio w/h of the crop.

    Returns:
      `(size, size, C)` uint8.
    """
    top, left, box_height, box_width = random_resized_crop_box(*image.shape[:2], rng, scale, ratio)
    crop = image[top : top + box_height, left : left + box_width]
    return resize_bilinear(crop, size, size)


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize(size) with an int size: the shorter side becomes `size`, the aspect ratio is kept.

    The longer side is `int(size · long / short)`, truncated, as torchvision computes it.

    Args:
      image: `(H, W, C)` uint8.
      size: the new length of the shorter side.

    Returns:
      `(H', W', C)` uint8 with `min(H', W') == size`.
    """
    height, width = image.shape[:2]
    if height <= width:
        return resize_bilinear(image, size, int(size * width / height))
    return resize_bilinear(image, int(size * height / width), size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """CenterCrop(size) on an image at least `size` on each side.

    Offsets are `round((H − size) / 2)` with Python's round-half-to-even, as torchvision.

    Args:
      image: `(H, W, C)`.
      size: side of the square crop.

    Returns:
      `(size, size, C)`, a view of `image`.
    """
    height, width = image.shape[:2]
    top = round((height - size) / 2)
    left = round((width - size) / 2)
    return image[top : top + size, left : left + size]


def cifar_train_transform(
    image: np.ndarray, rng: np.random.Generator, *, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize: (32, 32, 3) float32."""
    image = pad_and_random_crop(image, rng, padding=4)
    image = random_horizontal_flip(image, rng)
    return normalize(image, mean, std)


def imagenet_train_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(224, scale=(0.2, 1)), RandomHorizontalFlip, ToTensor, Normalize.

    Args:
      image: `(H, W, 3)` uint8, any size.
      rng: the example's random generator.

    Returns:
      `(224, 224, 3)` float32.
    """
    image = random_resized_crop(image, rng, 224, scale=(0.2, 1.0))
    image = random_horizontal_flip(image, rng)
    return normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_eval_transform(image: np.ndarray) -> np.ndarray:
    """Resize(256), CenterCrop(224), ToTensor, Normalize: `(H, W, 3)` uint8 → (224, 224, 3)."""
    image = center_crop(resize_shorter_side(image, 256), 224)
    return normalize(image, IMAGENET_MEAN, IMAGENET_STD)
