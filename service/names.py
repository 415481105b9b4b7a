"""The Triton name contract, as the gateway reads it: models vit_<task>_<precision>, their inputs
and outputs. build/names.py is the source (the graphs, the Triton configs and the engine builder
use it); the gateway image does not contain build/, so the names the gateway uses are here, once,
and tests/service/test_names.py checks that both agree."""

from __future__ import annotations

# Tasks: one Triton model per task and precision, <prefix>_<task>_<precision> (MODEL_PREFIX: vit)
CLASSIFY_TASK = "classify"
EXPLAIN_TASK = "explain"  # attention rollout
ATTRIBUTION_TASK = "attribution"  # Chefer et al. transformer attribution
TASKS = (CLASSIFY_TASK, EXPLAIN_TASK, ATTRIBUTION_TASK)

INPUT_NAME = "image"  # UINT8 [N, 3, H, W]
LOGITS = "logits"  # every model
HEAD_FUSIONS = ("mean", "max", "min")  # explain models: one output rollout_<fusion> each
ROLLOUT_OUTPUTS = tuple(f"rollout_{fusion}" for fusion in HEAD_FUSIONS)
DISCARD_RATIO = "discard_ratio"  # explain models: FP32 [N, 1], vit-explain's ratio in [0, 1)
TARGET_CLASS = "target_class"  # attribution models: INT32 [N, 1], the class per image
ATTRIBUTION = "attribution"  # attribution models: FP32 [N, grid_h, grid_w], raw relevance
TOP1 = -1  # target_class for each image's top-1 class


def model_name(prefix: str, task: str, precision: str) -> str:
    return f"{prefix}_{task}_{precision}"


def rollout_output(head_fusion: str) -> str:
    return f"rollout_{head_fusion}"
