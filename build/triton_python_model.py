"""Triton python-backend model for the CPU target: runs the model's ONNX with OpenVINO or ONNX
Runtime. Copied by the build to <model>/1/model.py beside runtimes.py and model.onnx.

Everything model-specific comes from config.pbtxt: tensor names and dtypes, max_batch_size, and the
parameters runtime, precision_hint and num_threads ("0" = every core this process may use).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from runtimes import create_runner  # found beside this file, after the path insert


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [
            (out["name"], pb_utils.triton_string_to_numpy(out["data_type"]))
            for out in config["output"]
        ]
        self.runner = create_runner(
            params.get("runtime", "openvino"),
            os.path.join(version_dir, "model.onnx"),
            threads=int(params.get("num_threads", "0")),
            precision=params.get("precision_hint", ""),
            max_batch=int(config["max_batch_size"]),
        )

    def execute(self, requests):
        # The dynamic batcher hands over several requests: run them as one batch, split after.
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        try:
            results = self.runner.run(np.concatenate(arrays))
        except Exception as exc:  # a runtime failure answers every request, never hangs them
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            end = start + array.shape[0]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:end], dtype=dtype))
                for name, dtype in self.outputs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
