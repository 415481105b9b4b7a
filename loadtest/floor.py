"""The serving floor of `make bench-e2e`: the stack in front of a model that costs nothing.

A temporary repository holds, for each measured variant, a python-backend model with the real
model's config (names, dtypes, shapes, max_batch_size, dynamic batching, instances) whose
execute() answers constant outputs without looking at the pixels. What the stack then spends per
request is its own cost: HTTP, decode, resize, gRPC, Triton's batching and python-backend IPC,
JSON. On a GPU host the model leaves the cores, so this is what the cores must pay for: core-ms
per request at the fixed rate, and cores per 1,000 images/s (= core-ms per image).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

# The model Triton runs instead of the real one: every output, right shape and dtype, constant.
# Outputs are built once per batch size and reused (the cost stays out of the measurement).
NULL_MODEL = '''"""Serving-floor model (loadtest/floor.py): constant outputs, no computation."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"]), o["dims"])
            for o in config["output"]
        ]
        self.cache = {}

    def _constant(self, batch):
        if batch not in self.cache:
            # A fixed descending ramp: top-k and softmax see distinct values, as with real logits.
            self.cache[batch] = []
            for name, dtype, dims in self.outputs:
                shape = [int(d) for d in dims]
                ramp = np.linspace(1.0, 0.0, int(np.prod(shape))).reshape(shape).astype(dtype)
                self.cache[batch].append((name, np.ascontiguousarray(np.stack([ramp] * batch))))
        return self.cache[batch]

    def execute(self, requests):
        responses = []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().shape[0]
            tensors = [pb_utils.Tensor(n, a) for n, a in self._constant(batch)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def write_repository(source: Path, dest: Path, models: list[str]) -> Path:
    """A repository at dest (cpu/<model> per name in models, and model.json) serving the null
    model under the real models' names and configs (warm-up and runtime parameters dropped)."""
    for name in models:
        folder = source / "cpu" / name
        config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        config.backend = "python"
        config.ClearField("parameters")
        config.ClearField("model_warmup")
        target = dest / "cpu" / name
        (target / "1").mkdir(parents=True)
        (target / "config.pbtxt").write_text(text_format.MessageToString(config))
        (target / "1" / "model.py").write_text(NULL_MODEL)
        for extra in folder.glob("*.txt"):  # label files the config names
            shutil.copy2(extra, target / extra.name)
    shutil.copy2(source / "model.json", dest / "model.json")
    return dest
