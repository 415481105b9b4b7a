"""The serving floor of `make bench-e2e`: the stack in front of a model that costs nothing.

A temporary repository holds, for each measured variant, a python-backend model with the real
model's config (names, dtypes, shapes, max_batch_size, dynamic batching, instances) whose
execute() answers constant outputs without looking at the pixels. What the stack then spends per
request is its own cost: HTTP, decode, resize, gRPC, Triton's batching and python-backend IPC,
JSON. On a GPU host the model leaves the cores, so this is what the cores must pay for: core-ms
per request at the fixed rate, and cores per 1,000 images/s (= core-ms per image).

Both of /classify's paths are measured: each classify model also gets a null <model>_jpeg with
the DALI ensemble's interface (build/repository/jpeg_ensemble.py: the JPEG file's bytes in, the
model's outputs out), and model.json names the ensembles, so a gateway with JPEG_TO_TRITON on sends
its JPEG uploads there as bytes after the header checks (service/jpeg_path.py), and one with it off
decodes and resizes them. On a GPU host nvJPEG decodes; here nothing does, so the floor is the
gateway's share of that path.

The real configs come from the source repository where it has them (cpu/<model>/config.pbtxt);
a source with only model.json gets the configs `make repo` would write for it
(build/repository/writer.py), so a model's floor needs no build (bench_e2e writes model.json alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build.contract import JpegEnsembles, ModelContract
from build.names import JPEG_INPUT, JPEG_MODEL_SUFFIX, jpeg_model_name
from build.repository import writer

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
    """A repository at dest serving the null model under the real models' names and configs
    (warm-up and runtime parameters dropped): cpu/<model> per name in models, cpu/<model>_jpeg
    per classify model, and source's model.json naming those ensembles."""
    contract = ModelContract.read(source / "model.json")
    labels = "\n".join(contract.labels) + "\n"
    for name in models:
        _, task, precision = name.split("_", 2)  # vit_<task>_<precision>
        config = _served_config(source, contract, name, task, precision)
        config.backend = "python"
        config.ClearField("platform")
        config.ClearField("parameters")
        config.ClearField("model_warmup")
        _write_null(dest / "cpu", config, labels)
        if task == "classify":  # the only task the gateway sends JPEG bytes to
            _write_null(dest / "cpu", _jpeg_stand_in(config), None)
    ensembles = JpegEnsembles(
        JPEG_MODEL_SUFFIX, JPEG_INPUT, ["cpu"], "none: constant logits (loadtest/floor.py)"
    )
    dataclasses.replace(contract, jpeg_ensembles=ensembles).write(dest / "model.json")
    return dest


def _served_config(
    source: Path, contract: ModelContract, name: str, task: str, precision: str
) -> model_config_pb2.ModelConfig:
    """The source's config for name, or the one `make repo` would write from its model.json."""
    path = source / "cpu" / name / "config.pbtxt"
    if path.is_file():
        text = path.read_text()
    else:
        text = writer.config_text(contract, "cpu", task, precision)
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _jpeg_stand_in(model: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """<model>_jpeg as the gateway sees the DALI ensemble (build/repository/jpeg_ensemble.py): one
    JPEG file per request in (UINT8 [-1], ragged), the model's outputs out. Batching and instances
    stay the model's: the null model's cost, as on the tensor path."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(model)
    config.name = jpeg_model_name(model.name)
    del config.input[:]
    config.input.add(
        name=JPEG_INPUT, data_type=model_config_pb2.TYPE_UINT8, dims=[-1], allow_ragged_batch=True
    )
    for output in config.output:
        output.ClearField("label_filename")  # as the ensemble's outputs
    return config


def _write_null(folder: Path, config: model_config_pb2.ModelConfig, labels: str | None) -> None:
    target = folder / config.name
    (target / "1").mkdir(parents=True)
    (target / "config.pbtxt").write_text(text_format.MessageToString(config))
    (target / "1" / "model.py").write_text(NULL_MODEL)
    if labels is not None:  # the label file the config names
        (target / "labels.txt").write_text(labels)


def write_contract(model: str, dest: Path) -> Path:
    """dest/model.json for a timm model as `make repo --model <model> --random-weights` writes it
    (preprocessing, token layout, labels), without the build: all the floor needs of a model.
    Creates the model (torch, timm: seconds, offline)."""
    from build.contract import preprocessing, token_layout
    from build.model.source import timm_model

    loaded = timm_model(model, False, None, None, None)
    contract = ModelContract(
        model_name=loaded.name,
        origin=loaded.origin,
        preprocessing=preprocessing(loaded.model),
        layout=token_layout(loaded.model),
        labels=loaded.labels,
    )
    dest.mkdir(parents=True, exist_ok=True)
    contract.write(dest / "model.json")
    return dest / "model.json"


def main(argv: list[str] | None = None) -> int:
    """python -m loadtest.floor --model <timm name> --out <folder>: write_contract()."""
    p = argparse.ArgumentParser(description=write_contract.__doc__)
    p.add_argument("--model", required=True, help="timm model name")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from build.model.source import SourceError  # torch: only for this command

    try:
        print(f"wrote {write_contract(args.model, args.out)}")
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
