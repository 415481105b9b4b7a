"""JPEG bytes in, on the gpu target (make repo --preprocess dali): Triton configs and model.dali.

  gpu/vit_preprocess_jpeg/      backend "dali": 1/model.dali (build/repository/dali_pipeline.py,
                                mixed decoder), JPEG bytes in (UINT8 [-1], ragged), uint8 [3, H, W]
                                out
  gpu/<model>_jpeg/             platform "ensemble": vit_preprocess_jpeg, then <model> (its other
                                inputs, discard_ratio or target_class, passed through)

One DALI model serves every ensemble: the preprocessing is the repository's, not the precision's,
and one instance keeps one set of nvJPEG buffers (dali_backend's README advises against several).
Each image is its own request ([1, file length]): the dynamic batcher batches them although their
lengths differ (allow_ragged_batch), so no client pads files to a common length.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from build.contract import ModelContract
from build.names import INPUT_NAME, JPEG_INPUT, PREPROCESS_MODEL, jpeg_model_name
from build.repository import dali_pipeline
from build.repository.writer import TARGET_SETTINGS, model_name, tensor_blocks

WARMUP_FILE = "warmup_jpeg"  # <model>/warmup/<file>: a real JPEG, so warm-up runs the decoder
WARMUP_SIZE = (640, 480)  # a typical upload; the first nvJPEG call allocates its buffers
DALI_THREADS = 4  # CPU threads per DALI instance (header parsing, Huffman decode off the HW path)


def warmup_jpeg() -> bytes:
    """A smooth 640x480 gradient as JPEG (Pillow's encoder is deterministic, so the config that
    names its length is too)."""
    w, h = WARMUP_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _queue(max_queue_delay_us: int, max_queue_size: int, queue_timeout_us: int) -> str:
    return (
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {queue_timeout_us}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {max_queue_size}\n"
        "  }\n"
        "}"
    )


def preprocess_config(contract: ModelContract, backend: str = "dali") -> str:
    """The DALI model's config. backend "python" is the local test's stand-in (Triton 2.51 from
    the pytriton wheel has no DALI backend): the same tensors, on CPU instances."""
    s = TARGET_SETTINGS["gpu"]
    h, w = contract.preprocessing.input_size
    kind = "KIND_GPU" if backend == "dali" else "KIND_CPU"
    warm = len(warmup_jpeg())
    lines = [
        f'name: "{PREPROCESS_MODEL}"',
        f'backend: "{backend}"',
        f"max_batch_size: {s.max_batch_size}",
        "input [\n"
        f'  {{ name: "{JPEG_INPUT}" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true }}'
        "\n]",
        f'output [\n  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: [ 3, {h}, {w} ] }}\n]',
        f"instance_group [ {{ kind: {kind} count: 1 }} ]",
        _queue(s.max_queue_delay_us, s.max_queue_size, s.queue_timeout_us),
        f'parameters {{ key: "num_threads" value {{ string_value: "{DALI_THREADS}" }} }}',
    ]
    for batch in sorted({1, s.max_batch_size}):
        lines.append(
            "model_warmup [ {\n"
            f'  name: "jpeg_batch_{batch}" batch_size: {batch}\n'
            f'  inputs {{ key: "{JPEG_INPUT}" value {{ data_type: TYPE_UINT8 dims: [ {warm} ] '
            f'input_data_file: "{WARMUP_FILE}" }} }}\n'
            "} ]"
        )
    return "\n".join(lines) + "\n"


def ensemble_config(contract: ModelContract, task: str, precision: str, target: str = "gpu") -> str:
    """<model>_jpeg: the DALI model's image feeds the model; its other inputs pass through.
    target: whose model is the second step (Triton refuses an ensemble whose max_batch_size
    exceeds a step's; "cpu" is for the local test).
    Triton's response cache works at the ensemble, keyed by the JPEG bytes (a hit runs neither
    step): the model's own cache cannot hash the image DALI leaves in GPU memory (Triton hashes
    CPU inputs only), so the gpu classify models behind these ensembles have theirs off
    (repository.response_cache). Triton exports no nv_cache_* metrics for ensembles: their hits
    show in the statistics API (cache_hit) only."""
    model = model_name(task, precision)
    model_inputs, outputs = tensor_blocks(contract, task)
    inputs = [
        f'  {{ name: "{JPEG_INPUT}" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true }}'
    ]
    passed = [line for line in model_inputs.split(",\n") if f'name: "{INPUT_NAME}"' not in line]
    inputs += passed
    outputs = outputs.replace(' label_filename: "labels.txt"', "")
    extra_maps = "".join(
        f'      input_map {{ key: "{name}" value: "{name}" }}\n' for name in _names(passed)
    )
    output_maps = "".join(
        f'      output_map {{ key: "{name}" value: "{name}" }}\n'
        for name in _names(outputs.split(",\n"))
    )
    return (
        f'name: "{jpeg_model_name(model)}"\n'
        'platform: "ensemble"\n'
        f"max_batch_size: {TARGET_SETTINGS[target].max_batch_size}\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        f"output [\n{outputs}\n]\n"
        "ensemble_scheduling {\n"
        "  step [\n"
        "    {\n"
        f'      model_name: "{PREPROCESS_MODEL}"\n'
        "      model_version: -1\n"
        f'      input_map {{ key: "{JPEG_INPUT}" value: "{JPEG_INPUT}" }}\n'
        f'      output_map {{ key: "{INPUT_NAME}" value: "{INPUT_NAME}" }}\n'
        "    },\n"
        "    {\n"
        f'      model_name: "{model}"\n'
        "      model_version: -1\n"
        f'      input_map {{ key: "{INPUT_NAME}" value: "{INPUT_NAME}" }}\n'
        f"{extra_maps}{output_maps}"
        "    }\n"
        "  ]\n"
        "}\n"
        "response_cache { enable: true }\n"
    )


def _names(blocks: list[str]) -> list[str]:
    return [block.split('name: "', 1)[1].split('"', 1)[0] for block in blocks]


def write_preprocess_model(
    target_dir: Path, contract: ModelContract, pipeline_device: str, backend: str = "dali"
) -> Path:
    """<target_dir>/vit_preprocess_jpeg with its config, warm-up JPEG and 1/model.dali
    (pipeline_device "gpu" for the repository, "cpu" for the local test's python stand-in)."""

    model_dir = target_dir / PREPROCESS_MODEL
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "warmup").mkdir(parents=True)
    (model_dir / "warmup" / WARMUP_FILE).write_bytes(warmup_jpeg())
    (model_dir / "config.pbtxt").write_text(preprocess_config(contract, backend))
    batch = TARGET_SETTINGS["gpu"].max_batch_size
    dali_pipeline.serialize(
        contract.preprocessing, pipeline_device, batch, model_dir / "1" / "model.dali"
    )
    return model_dir


def write_ensemble(
    target_dir: Path, contract: ModelContract, task: str, precision: str, target: str = "gpu"
) -> str:
    """<target_dir>/<model>_jpeg: config.pbtxt and the empty version folder Triton requires."""
    name = jpeg_model_name(model_name(task, precision))
    model_dir = target_dir / name
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(ensemble_config(contract, task, precision, target))
    return name
