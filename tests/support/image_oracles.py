"""Independent NumPy transcriptions of the reference's image pipelines (docs/reference.md
§4.2), in float64, for the data tests."""

import numpy as np

# Normalize(mean, std) of the reference's data_builder.py (docs/reference.md §4.2).
REFERENCE_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": (
        tuple(np.array([129.3, 124.1, 112.4]) / 255),
        tuple(np.array([68.2, 65.4, 70.4]) / 255),
    ),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CIFAR10_MEAN, CIFAR10_STD = REFERENCE_NORMALIZATION["cifar10"]
IMAGENET_MEAN, IMAGENET_STD = REFERENCE_NORMALIZATION["imagenet2012"]


def reference_normalize(pixels, mean, std, pixel_max=255.0):
    return (pixels.astype(np.float64) / pixel_max - np.array(mean)) / np.array(std)


def triangle_weights(in_size, out_size):
    """Bilinear resampling weights, widened by the shrink factor (antialiasing), rows sum to 1."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    taps = np.arange(in_size) + 0.5
    weights = np.clip(1 - np.abs(taps[None, :] - centres[:, None]) / support, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def reference_resize(image, height, width):
    rows = np.einsum("oh,hwc->owc", triangle_weights(image.shape[0], height), image.astype(float))
    return np.einsum("pw,owc->opc", triangle_weights(image.shape[1], width), rows)


def windows_of_padded(image, padding):
    """Every H×W window of the zero-padded image, keyed by its (top, left) offset."""
    height, width = image.shape[-3:-1]
    pad = [(0, 0)] * (image.ndim - 3) + [(padding, padding)] * 2 + [(0, 0)]
    padded = np.pad(image, pad)
    return {
        (top, left): padded[..., top : top + height, left : left + width, :]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    }


def ks_statistic(a, b):
    """Two-sample Kolmogorov–Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return np.abs(cdf_a - cdf_b).max()


def reference_resized_crop_boxes(height, width, rng, count, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop boxes, vectorised: the first of 10 draws that fits.

    Returns:
      (box_h, box_w, top, left), each of length `count`.
    """
    area = rng.uniform(*scale, size=(count, 10)) * height * width
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), size=(count, 10)))
    box_w = np.round(np.sqrt(area * aspect))
    box_h = np.round(np.sqrt(area / aspect))
    fits = (box_w <= width) & (box_h <= height)
    assert fits.any(axis=1).all()  # the fallback has negligible probability at these sizes
    first = fits.argmax(axis=1)
    box_h, box_w = box_h[np.arange(count), first], box_w[np.arange(count), first]
    top = rng.integers(0, height - box_h + 1)
    left = rng.integers(0, width - box_w + 1)
    return box_h, box_w, top, left
