"""Stand-in for Triton's DALI backend on the local Triton (the pytriton wheel's Triton 2.51 has the
python backend only): copied as <vit_preprocess_jpeg>/1/model.py beside model.dali, the cpu
variant of build/repository/dali_pipeline.py's one definition, serialized by the build's own writer.

It behaves as dali_backend does (src/dali_model_instance.cc, src/dali_executor/dali_executor.cc):
the dynamic batcher's requests run as one DALI batch, rows are JPEG files (zero padding after the
file is harmless), max_batch_size and num_threads come from config.pbtxt, and an error fails every
request of the batch, after which the pipeline is created anew.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from nvidia.dali.pipeline import Pipeline


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "model.dali"), "rb") as f:
            self.serialized = f.read()
        self.batch_size = int(config["max_batch_size"])
        self.threads = int(params.get("num_threads", "1"))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.pipe = self._create()

    def _create(self):
        pipe = Pipeline.deserialize(
            serialized_pipeline=self.serialized,
            batch_size=self.batch_size,
            num_threads=self.threads,
            device_id=None,
            prefetch_queue_depth=1,
        )
        pipe.build()
        return pipe

    def execute(self, requests):
        files, counts = [], []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            files.extend(np.ascontiguousarray(row) for row in rows)
            counts.append(len(rows))
        try:
            self.pipe.feed_input(self.input_name, files)
            (images,) = self.pipe.run()
            batch = images.as_array()
        except Exception as exc:  # the whole batch fails; a failed pipeline is not reusable
            self.pipe = self._create()
            error = pb_utils.TritonError("DALI: " + " ".join(str(exc).split())[:300])
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for count in counts:
            tensor = pb_utils.Tensor(self.output_name, batch[start : start + count])
            responses.append(pb_utils.InferenceResponse([tensor]))
            start += count
        return responses
