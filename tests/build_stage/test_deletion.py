"""The deletion test's own logic on a synthetic model whose answer is known: class 0's logit
depends on one patch only, so the map that points at that patch must show the steepest drop."""

from __future__ import annotations

import numpy as np
import pytest

from build.bench import deletion
from build.bench.faithfulness import cosine_distance, rank_correlation

PATCH = (4, 4)
GRID = (8, 6)  # non-square on purpose: rows and columns must not be swapped anywhere
KEY = (5, 2)  # the one patch class 0 depends on


def key_patch_model(images: np.ndarray) -> np.ndarray:
    """Two classes; class 0's logit grows with the key patch's brightness, nothing else counts."""
    r, c = KEY
    patch = images[:, :, r * PATCH[0] : (r + 1) * PATCH[0], c * PATCH[1] : (c + 1) * PATCH[1]]
    logit = 20.0 * (patch.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0 - 0.5)
    return deletion.softmax(np.stack([logit, np.zeros_like(logit)], axis=1))


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, GRID[0] * PATCH[0], GRID[1] * PATCH[1]), dtype=np.uint8)
    r, c = KEY
    x[:, :, r * PATCH[0] : (r + 1) * PATCH[0], c * PATCH[1] : (c + 1) * PATCH[1]] = 255
    return x


BLACK = np.zeros((1, 3, 1, 1), np.uint8)


def auc(images: np.ndarray, maps: np.ndarray, seed: int = 0) -> np.ndarray:
    targets = np.zeros(len(images), dtype=int)
    fractions, curves = deletion.deletion_curves(
        key_patch_model, images, maps, targets, BLACK, PATCH, steps=16, seed=seed
    )
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert np.all(curves[:, 0] > 0.99)  # nothing masked yet: the key patch is bright
    assert np.all(curves[:, -1] < 0.01)  # everything masked: the key patch is black
    return deletion.area_under(fractions, curves)


def test_masked_images_replace_exactly_the_first_patches_of_the_order():
    images = np.full((2, 3, GRID[0] * PATCH[0], GRID[1] * PATCH[1]), 200, np.uint8)
    order = np.array([[7, 0, *range(1, 7), *range(8, 48)], [47, *range(47)]])
    out = deletion.masked_images(images, BLACK, order, 2, PATCH)
    masked = out[:, 0].reshape(2, GRID[0], PATCH[0], GRID[1], PATCH[1]).max(axis=(2, 4)) == 0
    assert sorted(np.flatnonzero(masked[0])) == [0, 7]  # (0, 0) and (1, 1): row-major, 6 columns
    assert sorted(np.flatnonzero(masked[1])) == [0, 47]
    assert (out[0, :, 4:8, 4:8] == 0).all() and (out[1, :, -4:, -4:] == 0).all()
    assert (deletion.masked_images(images, BLACK, order, 0, PATCH) == images).all()


def test_the_right_map_drops_first_the_inverted_map_last_and_random_in_between(images):
    right = np.zeros((len(images), *GRID))
    right[:, KEY[0], KEY[1]] = 1.0
    right += np.random.default_rng(1).random(right.shape) * 0.1  # noise below the key patch
    inverted = -right
    noise = np.random.default_rng(2).random(right.shape)
    auc_right = auc(images, right)
    auc_inverted = auc(images, inverted)
    auc_random = auc(images, noise)
    # The key patch goes in the first step (3 of 48 patches): only the k=0 point is high.
    step = 1 / 16
    assert np.allclose(auc_right, step / 2, atol=0.01)
    # ... or in the last step: high until the end.
    assert np.allclose(auc_inverted, 1 - step / 2, atol=0.01)
    assert 0.3 < auc_random.mean() < 0.7


def test_ties_are_broken_at_random_not_in_patch_order(images):
    """A flat map must score like a random one; a stable sort would delete patch 0 first."""
    flat = np.zeros((len(images), *GRID))
    first_patch = images.copy()
    first_patch[:, :, : PATCH[0], : PATCH[1]] = 0  # a dark top-left patch changes nothing here
    assert 0.3 < auc(first_patch, flat).mean() < 0.7
    assert not np.array_equal(auc(images, flat, seed=0), auc(images, flat, seed=1))


def test_patch_counts_run_from_none_to_all():
    assert deletion.patch_counts(64, 16).tolist() == list(range(0, 65, 4))
    assert deletion.patch_counts(3, 16).tolist() == [0, 1, 2, 3]


def test_map_agreement_measures():
    a = np.random.default_rng(0).random((5, *GRID))
    assert np.allclose(rank_correlation(a, a), 1.0)
    assert np.allclose(rank_correlation(a, -a), -1.0)
    assert np.allclose(cosine_distance(a, 3 * a), 0.0)
    b = np.zeros_like(a)
    b[:, 0, 0], a[:, 0, 0] = 1.0, 0.0
    assert np.allclose(cosine_distance(a, b), 1.0)  # orthogonal maps
