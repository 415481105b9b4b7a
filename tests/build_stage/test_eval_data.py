"""Evaluation and calibration folders as real data sets come: class folders named by index, label
or ImageNet synset id; capped by a seeded random sample; calibration in bounded batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from build.contract import Preprocessing
from build.model import source
from build.precision import cpu

PRE = Preprocessing((16, 16), "bicubic", 1.0, "center", (0.5,) * 3, (0.5,) * 3)
IMAGENET_LABELS = [f"label {i}" for i in range(1000)]  # descriptions; folders use synsets


def make_folder(root, classes: dict[str, int]) -> None:
    for folder, count in classes.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20, 20), (i, 0, 0)).save(root / folder / f"{i}.png")


def test_imagenet_synset_folders_resolve_to_class_indices(tmp_path):
    # n01440764 = tench (index 0), n01443537 = goldfish (1), n15075141 = toilet tissue (999)
    make_folder(tmp_path, {"n01440764": 2, "n01443537": 1, "n15075141": 1})
    images = source.image_folder(tmp_path, PRE, True, IMAGENET_LABELS)
    assert images.labels.tolist() == [0, 0, 1, 999]


def test_index_and_label_folders_still_resolve(tmp_path):
    make_folder(tmp_path, {"3": 1, "seven": 1})
    labels = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
    assert source.image_folder(tmp_path, PRE, True, labels).labels.tolist() == [3, 7]


def test_an_unknown_folder_is_named_in_the_error(tmp_path):
    make_folder(tmp_path, {"n99999999": 1})
    with pytest.raises(source.SourceError, match="'n99999999' is neither a class index"):
        source.image_folder(tmp_path, PRE, True, IMAGENET_LABELS)


def test_limit_samples_across_classes_reproducibly(tmp_path):
    make_folder(tmp_path, {str(c): 20 for c in range(5)})
    first = source.image_folder(tmp_path, PRE, True, [str(c) for c in range(5)], limit=25)
    again = source.image_folder(tmp_path, PRE, True, [str(c) for c in range(5)], limit=25)
    assert len(first.images) == 25 and "random 25 of 100" in first.description
    assert set(first.labels.tolist()) == set(range(5))  # not just the first sorted classes
    assert np.array_equal(first.labels, again.labels)


def test_calibration_reader_hands_out_one_bounded_batch_per_range():
    """quantize_static (CalibStridedMinMax=1) calls collect_data once per batch range."""
    images = np.zeros((40, 3, 4, 4), dtype=np.uint8)
    for second in (set(), {"discard_ratio"}, {"target_class"}):
        reader = cpu._Calibration(images, second, batch=16)
        assert len(reader) == 3
        sizes = []
        for start in range(len(reader)):
            reader.set_range(start, start + 1)
            while (batch := reader.get_next()) is not None:
                n = len(batch["image"])
                sizes.append(n)
                assert set(batch) == {"image", *second}
                if second == {"discard_ratio"}:  # explain: calibrate the plain rollout (0)
                    assert batch["discard_ratio"].shape == (n, 1)
                    assert not batch["discard_ratio"].any()
                if second == {"target_class"}:  # attribution: each image's top-1 class (-1)
                    assert batch["target_class"].dtype == np.int32
                    assert (batch["target_class"] == -1).all() and batch["target_class"].shape == (
                        n,
                        1,
                    )
        assert sizes == [16, 16, 8]
