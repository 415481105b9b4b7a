"""A model repository at ViT-B/16's input spec (224 px, bicubic, crop_pct 0.9, 14x14 grid) whose
models are tiny python-backend "probes", served by a real Triton.

Why not a real 224-px ViT: `python -m build.cli --model vit_tiny_patch16_224 --random-weights
--precisions fp32` took 64 s wall and 1.5 GB peak RSS here (2 cores, shared), before Triton warms
every OpenVINO batch bucket of it: too slow for every CI run. What the hardening tests exercise
is the gateway's bounded work per request, which depends on the model's *input spec*
(model.json), not on its weights: the gateway decodes, resizes and crops to 224 px exactly as for
a real ViT-B/16 and sends real uint8 [N, 3, 224, 224] tensors over gRPC to a real Triton with the
real dynamic batcher. The probe repository loads in a few seconds.

The probe answers from the pixels it received, so tests can check what the model saw:
logits[0..3] = how red the top-left, top-right, bottom-left, bottom-right quadrant is; the rollout
grids are the redness per 16x16 patch. An optional delay makes a slow variant for fault tests.
"""

from __future__ import annotations

from pathlib import Path

from build.contract import ModelContract, Preprocessing, TokenLayout

SIZE = 224
PATCH = 16
LABELS = ["red_top_left", "red_top_right", "red_bottom_left", "red_bottom_right"] + [
    f"class_{i}" for i in range(4, 10)
]
QUADRANT = {"top_left": 0, "top_right": 1, "bottom_left": 2, "bottom_right": 3}

MODEL_PY = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

DELAY_S = {delay}
PATCH = {patch}
NUM_CLASSES = {num_classes}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.outputs = [output["name"] for output in config["output"]]

    def execute(self, requests):
        if DELAY_S:
            time.sleep(DELAY_S)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().astype(np.float32)
            red = x[:, 0] - x[:, 1:].mean(axis=1)  # [N, H, W]: red minus the other channels
            n, h, w = red.shape
            quadrants = [
                red[:, : h // 2, : w // 2], red[:, : h // 2, w // 2 :],
                red[:, h // 2 :, : w // 2], red[:, h // 2 :, w // 2 :],
            ]
            logits = np.zeros((n, NUM_CLASSES), dtype=np.float32)
            logits[:, :4] = np.stack([q.mean(axis=(1, 2)) for q in quadrants], axis=1) / 25.5
            grid = red.reshape(n, h // PATCH, PATCH, w // PATCH, PATCH).mean(axis=(2, 4))
            tensors = [
                pb_utils.Tensor(name, logits if name == "logits" else grid.astype(np.float32))
                for name in self.outputs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "image" data_type: TYPE_UINT8 dims: [ 3, {size}, {size} ] }} ]
output [
{outputs}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{
  max_queue_delay_microseconds: 1000
  default_queue_policy {{
    timeout_action: REJECT
    default_timeout_microseconds: 10000000
    allow_timeout_override: true
    max_queue_size: 64
  }}
}}
"""


def write(root: Path, variants: dict[str, float] | None = None, max_batch_size: int = 8) -> Path:
    """Writes root/model.json and root/cpu/vit_{classify,explain}_<precision>/; variants maps a
    precision name to the probe's delay per execution (s). Returns root."""
    variants = variants if variants is not None else {"fp32": 0.0}
    grid = SIZE // PATCH
    ModelContract(
        model_name="probe at vit_base_patch16_224's input spec",
        origin="test-probe",
        preprocessing=Preprocessing(
            input_size=(SIZE, SIZE),
            interpolation="bicubic",
            crop_pct=0.9,
            crop_mode="center",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        layout=TokenLayout(
            num_prefix_tokens=1, grid=(grid, grid), patch_size=(PATCH, PATCH), query="cls"
        ),
        labels=LABELS,
    ).write(root / "model.json")
    logits = f'  {{ name: "logits" data_type: TYPE_FP32 dims: [ {len(LABELS)} ] }}'
    rollouts = [
        f'  {{ name: "rollout_{fusion}" data_type: TYPE_FP32 dims: [ {grid}, {grid} ] }}'
        for fusion in ("mean", "max", "min")
    ]
    for precision, delay in variants.items():
        for task, outputs in (("classify", [logits]), ("explain", [logits, *rollouts])):
            name = f"vit_{task}_{precision}"
            model = root / "cpu" / name
            (model / "1").mkdir(parents=True, exist_ok=True)
            (model / "config.pbtxt").write_text(
                CONFIG.format(
                    name=name,
                    max_batch_size=max_batch_size,
                    size=SIZE,
                    outputs=",\n".join(outputs),
                )
            )
            (model / "1" / "model.py").write_text(
                MODEL_PY.format(delay=delay, patch=PATCH, num_classes=len(LABELS))
            )
    return root
