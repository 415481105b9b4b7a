"""The deletion test of a saliency map (Petsiuk et al. 2018, RISE): mask the k% most relevant
patches by the map, k = 0..100%, and record the target class's probability; the area under that
curve (x = fraction of patches masked, 0..1) is low when the map finds what the class depends on.

Numpy only: the classifier is any function from uint8 NCHW images to class probabilities, so the
same code measures an ONNX graph, a PyTorch model or a synthetic model in a unit test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Probabilities = Callable[[np.ndarray], np.ndarray]  # uint8 (N, 3, H, W) -> (N, C) probabilities


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def patch_counts(patches: int, steps: int) -> np.ndarray:
    """How many patches are masked at each of steps + 1 points from 0 to all of them."""
    return np.unique(np.round(np.linspace(0, patches, steps + 1)).astype(int))


def deletion_order(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, P) patch indices, most relevant first. Ties are broken at random (a stable sort would
    delete the top-left patch of a flat map first, a bias that would favour or hurt the map)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    tiebreak = rng.random(flat.shape)
    # lexsort sorts by the last key first: relevance descending, then the random key.
    return np.stack([np.lexsort((t, -m)) for m, t in zip(flat, tiebreak, strict=True)])


def masked_images(
    images: np.ndarray,
    baseline: np.ndarray,
    order: np.ndarray,
    count: int,
    patch_size: tuple[int, int],
) -> np.ndarray:
    """images with the first `count` patches of each image's order replaced by the baseline's
    pixels (baseline broadcasts against images: one neutral image, or one per image)."""
    n, _, height, width = images.shape
    grid_h, grid_w = height // patch_size[0], width // patch_size[1]
    mask = np.zeros((n, grid_h * grid_w), dtype=bool)
    np.put_along_axis(mask, order[:, :count], True, axis=1)
    pixels = mask.reshape(n, grid_h, grid_w)
    pixels = pixels.repeat(patch_size[0], axis=1).repeat(patch_size[1], axis=2)[:, None]
    return np.where(pixels, np.broadcast_to(baseline, images.shape), images).astype(np.uint8)


def deletion_curves(
    probabilities: Probabilities,
    images: np.ndarray,
    maps: np.ndarray,
    targets: np.ndarray,
    baseline: np.ndarray,
    patch_size: tuple[int, int],
    steps: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(fractions (S,), curves (N, S)): the target class's probability for each image after
    masking each fraction of its patches, most relevant (by its map) first."""
    patches = maps[0].size
    counts = patch_counts(patches, steps)
    order = deletion_order(maps, np.random.default_rng(seed))
    rows = np.arange(len(images))
    curves = np.empty((len(images), len(counts)), dtype=np.float64)
    for j, count in enumerate(counts):
        probs = probabilities(masked_images(images, baseline, order, int(count), patch_size))
        curves[:, j] = probs[rows, targets]
    return counts / patches, curves


def area_under(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """(N,) trapezoidal area under each curve over the masked fraction 0..1."""
    return np.trapz(curves, fractions, axis=-1)
