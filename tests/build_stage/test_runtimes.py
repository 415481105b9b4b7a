"""The CPU runners Triton's python backend uses (build/runtimes.py), on the default repository's
real ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest

from build import runtimes


@pytest.fixture(scope="module")
def openvino_classify(repository):
    return runtimes.create_runner(
        "openvino", str(repository / "onnx" / "classify_fp32.onnx"), 2, "f32", 16
    )


@pytest.mark.parametrize(
    ("n", "parts"),
    [(1, [1]), (3, [2, 1]), (5, [4, 1]), (7, [4, 2, 1]), (8, [8]), (15, [8, 4, 2, 1]), (16, [16])],
)
def test_a_batch_runs_as_the_largest_buckets_that_fit_never_padded(openvino_classify, n, parts):
    assert openvino_classify.split(n) == parts


def test_a_split_batch_answers_each_image_as_if_alone(openvino_classify, heldout, contract):
    images = heldout.images[:7]
    batch = openvino_classify.run(images)["logits"]
    alone = np.concatenate([openvino_classify.run(images[i : i + 1])["logits"] for i in range(7)])
    assert batch.shape == (7, len(contract.labels))
    np.testing.assert_allclose(batch, alone, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batch[0], batch[1])  # seven different answers, not one repeated


def test_a_batch_over_max_batch_size_is_refused(openvino_classify):
    with pytest.raises(ValueError, match="exceeds max_batch_size 16"):
        openvino_classify.run(np.zeros((17, 3, 32, 32), np.uint8))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, a 2-CPU limit
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files: not in a container
    ],
)
def test_a_containers_cpu_quota_caps_the_default_threads(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtimes.cgroup_cpu_limit(str(tmp_path)) == expected
