"""The CPU runners Triton's python backend uses (build/repository/runtimes.py), on the default
repository's real ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest

from build.repository import runtimes


@pytest.fixture(scope="module")
def openvino_classify(repository):
    return runtimes.create_runner(
        "openvino", str(repository / "onnx" / "classify_fp32.onnx"), 2, "f32", 16
    )


@pytest.mark.parametrize("n", [7, 16])
def test_one_dynamic_batch_model_answers_each_image_as_if_alone(
    openvino_classify, heldout, contract, n
):
    """Any batch up to max_batch_size runs as it comes (no padding, no buckets) and each image's
    answer is its own."""
    images = heldout.images[:n]
    batch = openvino_classify.run(images)["logits"]
    alone = np.concatenate([openvino_classify.run(images[i : i + 1])["logits"] for i in range(n)])
    assert batch.shape == (n, len(contract.labels))
    np.testing.assert_allclose(batch, alone, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batch[0], batch[1])  # seven different answers, not one repeated


def test_a_batch_over_max_batch_size_is_refused(openvino_classify):
    with pytest.raises(ValueError, match="exceeds max_batch_size 16"):
        openvino_classify.run(np.zeros((17, 3, 32, 32), np.uint8))


def test_the_openvino_cache_is_written_once_and_gives_the_same_answers(
    repository, heldout, tmp_path
):
    """make serve's cache (local_triton: OPENVINO_CACHE_DIR): the first runner compiles and saves
    its model, the second imports it (no new file) and answers the same."""
    path = str(repository / "onnx" / "classify_int8.onnx")
    images = heldout.images[:3]
    uncached = runtimes.create_runner("openvino", path, 1, "", 4).run(images)["logits"]
    cache = tmp_path / "cache"
    first = runtimes.create_runner("openvino", path, 1, "", 4, cache_dir=str(cache))
    assert first.run(images)["logits"].tolist() == uncached.tolist()
    blobs = sorted(cache.glob("*.blob"))
    assert len(blobs) == 1
    stamps = [b.stat().st_mtime_ns for b in blobs]
    second = runtimes.create_runner("openvino", path, 1, "", 4, cache_dir=str(cache))
    assert second.run(images)["logits"].tolist() == uncached.tolist()
    assert sorted(cache.glob("*.blob")) == blobs
    assert [b.stat().st_mtime_ns for b in blobs] == stamps


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
