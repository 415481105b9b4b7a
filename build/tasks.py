"""The served tasks, described once. Every model is vit_<task>_<precision>, on both targets:

  task         inputs                 outputs                        held back by
  classify     image                  logits                         top-1 accuracy vs fp32 (gate)
  explain      image, discard_ratio   logits, rollout_<fusion> x 3   (heatmap agreement: report)
  attribution  image, target_class    logits, attribution            map agreement vs fp32: a
                                                                     precision that fails it is
                                                                     not served, the build goes on

Every task is made in every precision: fp32 for both targets, fp16 and int8 for OpenVINO (cpu)
and by Model Optimizer for TensorRT (gpu). Tensor names are build/names.py's. Imports nothing
else, so the TensorRT container (build/gpu_host) reads it without torch or numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from build import names

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("cpu", "gpu")
_MODEL_NAME = re.compile(r"vit_([a-z]+)_([a-z0-9]+)")


@dataclass(frozen=True)
class SecondInput:
    """A graph's per-image input besides the image: [N, 1] of one number."""

    name: str
    triton_type: str  # TYPE_FP32 / TYPE_INT32


@dataclass(frozen=True)
class Task:
    name: str
    second_input: SecondInput | None
    maps: tuple[str, ...]  # outputs besides the logits, each FP32 [N, grid_h, grid_w]
    # classify and explain: the attention-rollout pair, exported with torch.export and checked
    # against PyTorch together; attribution has its own exporter (make_fx) and reference.
    rollout: bool
    # Gated per precision by its maps' agreement with fp32's (no labels needed); a precision that
    # fails is left out of both targets (build/checks/gates.py served_attribution).
    map_gate: bool
    # Sharing one machine (build/repository/writer.py): a heavy task's instances also take an
    # explain slot, and Triton's rate limiter runs them after classify's (higher priority value).
    heavy: bool
    rate_limit_priority: int

    @property
    def outputs(self) -> tuple[str, ...]:
        return (names.LOGITS, *self.maps)

    def model_name(self, precision: str) -> str:
        return model_name(self.name, precision)


ALL = (
    Task("classify", None, (), rollout=True, map_gate=False, heavy=False, rate_limit_priority=1),
    Task(
        "explain",
        SecondInput(names.DISCARD_RATIO, "TYPE_FP32"),  # one vit-explain ratio per image, [0, 1)
        names.ROLLOUT_OUTPUTS,
        rollout=True,
        map_gate=False,
        heavy=True,
        rate_limit_priority=1000,
    ),
    Task(
        names.ATTRIBUTION_TASK,
        SecondInput(names.TARGET_CLASS, "TYPE_INT32"),  # the class to explain; -1 = top-1
        (names.ATTRIBUTION,),
        rollout=False,
        map_gate=True,
        heavy=True,
        rate_limit_priority=1000,
    ),
)
BY_NAME = {task.name: task for task in ALL}
ROLLOUT_TASKS = tuple(task.name for task in ALL if task.rollout)  # ("classify", "explain")
VARIANT_TASKS = tuple(task.name for task in ALL)  # the graphs that get fp16/int8 variants


def model_name(task: str, precision: str) -> str:
    return f"vit_{task}_{precision}"


def parse_model_name(name: str) -> tuple[str, str] | None:
    """(task, precision) of a model this build writes; None for any other name."""
    match = _MODEL_NAME.fullmatch(name)
    if match is None or match[1] not in BY_NAME or match[2] not in PRECISIONS:
        return None
    return match[1], match[2]
