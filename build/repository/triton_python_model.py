"""Triton python-backend model for the CPU target: runs the model's ONNX with OpenVINO or ONNX
Runtime. Copied by the build to <model>/1/model.py beside runtimes.py and model.onnx.

Everything model-specific comes from config.pbtxt: tensor names and dtypes, max_batch_size, and the
parameters runtime, precision_hint and num_threads ("0" = an equal share of the cores this process
may use among the model's instances: one thread each when there is an instance per core). Explain
models have a second input, discard_ratio (FP32 [1] per image), passed on to the graph; attribution
models have target_class (INT32 [1] per image, -1 = top-1), passed on as it is (the graph maps
negatives to the top-1 class and clamps classes past the last one).
"""

from __future__ import annotations  # pb_utils' types are named, never evaluated

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# runtimes.py is found beside this file, after the path insert
from runtimes import (
    DISCARD_RATIO,
    OPENVINO_CACHE_ENV,
    TARGET_CLASS,
    create_runner,
    default_threads,
)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.input_name = config["input"][0]["name"]
        inputs = {i["name"] for i in config["input"]}
        self.takes_ratio = DISCARD_RATIO in inputs
        self.takes_class = TARGET_CLASS in inputs
        self.outputs = [
            (out["name"], pb_utils.triton_string_to_numpy(out["data_type"]))
            for out in config["output"]
        ]
        self.runner = create_runner(
            params.get("runtime", "openvino"),
            os.path.join(version_dir, "model.onnx"),
            threads=int(params.get("num_threads", "0")) or self._share_of_cores(config),
            precision=params.get("precision_hint", ""),
            max_batch=int(config["max_batch_size"]),
            # Set by the launcher (local_triton): compiled batch buckets are kept there, so a
            # restart imports them instead of compiling again (about half of a load's CPU).
            cache_dir=os.environ.get(OPENVINO_CACHE_ENV, ""),
        )

    @staticmethod
    def _share_of_cores(config: dict[str, Any]) -> int:
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        return max(1, default_threads() // instances)

    def _ratios(self, request: pb_utils.InferenceRequest) -> np.ndarray | str:
        """The request's discard ratios, or an error message when one is outside [0, 1)."""
        ratios = pb_utils.get_input_tensor_by_name(request, DISCARD_RATIO).as_numpy()
        bad = ratios[~((ratios >= 0) & (ratios < 1))]  # NaN is bad too
        if bad.size:
            return f"{DISCARD_RATIO} must be in [0, 1); got {float(bad[0])}"
        return ratios.reshape(-1, 1)

    def execute(
        self, requests: list[pb_utils.InferenceRequest]
    ) -> list[pb_utils.InferenceResponse | None]:
        # The dynamic batcher hands over several requests: run them as one batch, split after.
        # A request with an invalid discard_ratio gets its own error; the others still run.
        responses: list[pb_utils.InferenceResponse | None] = [None] * len(requests)
        arrays: list[np.ndarray] = []
        ratios: list[np.ndarray] = []
        classes: list[np.ndarray] = []
        valid: list[int] = []
        for i, request in enumerate(requests):
            if self.takes_ratio:
                ratio = self._ratios(request)
                if isinstance(ratio, str):  # the error message
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(ratio))
                    continue
                ratios.append(ratio)
            if self.takes_class:
                target = pb_utils.get_input_tensor_by_name(request, TARGET_CLASS).as_numpy()
                classes.append(target.reshape(-1, 1))
            arrays.append(pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy())
            valid.append(i)
        if not valid:
            return responses
        try:
            results = self.runner.run(
                np.concatenate(arrays),
                np.concatenate(ratios) if ratios else None,
                np.concatenate(classes) if classes else None,
            )
        except Exception as exc:  # a runtime failure answers every request, never hangs them
            error = pb_utils.TritonError(f"inference failed: {exc}")
            for i in valid:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return responses
        start = 0
        for i, array in zip(valid, arrays, strict=True):
            end = start + array.shape[0]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:end], dtype=dtype))
                for name, dtype in self.outputs
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = end
        return responses
