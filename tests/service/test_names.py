"""The gateway's copy of the Triton name contract (service/names.py) agrees with the build's
(build/names.py, build/tasks.py), which the gateway image does not contain."""

from __future__ import annotations

from build import names as build_names
from build import tasks
from service import names


def test_the_gateways_names_are_the_builds():
    for name in (
        "HEAD_FUSIONS", "INPUT_NAME", "LOGITS", "ROLLOUT_OUTPUTS", "DISCARD_RATIO",
        "ATTRIBUTION_TASK", "TARGET_CLASS", "ATTRIBUTION", "TOP1",
    ):  # fmt: skip
        assert getattr(names, name) == getattr(build_names, name), name
    assert tuple(map(names.rollout_output, names.HEAD_FUSIONS)) == names.ROLLOUT_OUTPUTS


def test_model_names_are_prefix_task_precision():
    for task in names.TASKS:
        assert names.model_name("vit", task, "fp16") == tasks.model_name(task, "fp16")
    assert names.TASKS == tasks.VARIANT_TASKS
