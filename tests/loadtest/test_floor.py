"""The serving floor's repository: the real models' names and configs, a model that computes
nothing, and for each classify model a null <model>_jpeg with the DALI ensemble's interface
(served end to end by tests/loadtest/test_bench_e2e.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build.contract import ModelContract
from build.names import JPEG_INPUT, JPEG_MODEL_SUFFIX
from loadtest import floor
from service.model_info import ModelMetadata


def read(folder: Path) -> model_config_pb2.ModelConfig:
    text = (folder / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_null_models_keep_the_served_interface(repository: Path, tmp_path: Path):
    names = ["vit_classify_int8", "vit_explain_fp32"]
    out = floor.write_repository(repository, tmp_path / "floor", names)
    assert sorted(p.name for p in (out / "cpu").iterdir()) == sorted(
        [*names, "vit_classify_int8_jpeg"]
    )
    for name in names:
        real, null = read(repository / "cpu" / name), read(out / "cpu" / name)
        assert (null.name, null.backend, null.platform) == (name, "python", "")
        assert null.input == real.input and null.output == real.output
        assert null.max_batch_size == real.max_batch_size
        assert null.instance_group == real.instance_group
        assert null.dynamic_batching == real.dynamic_batching
        assert not null.model_warmup and not null.parameters  # nothing to load or warm
        assert (out / "cpu" / name / "1" / "model.py").read_text() == floor.NULL_MODEL
        assert (out / "cpu" / name / "labels.txt").is_file()


def test_classify_models_get_a_null_jpeg_ensemble_the_gateway_is_told_of(
    repository: Path, tmp_path: Path
):
    out = floor.write_repository(repository, tmp_path / "floor", ["vit_classify_int8"])
    model, jpeg = (
        read(out / "cpu" / "vit_classify_int8"),
        read(out / "cpu" / "vit_classify_int8_jpeg"),
    )
    # the gpu target's <model>_jpeg as the gateway calls it: one file's bytes per request
    assert jpeg.name == "vit_classify_int8" + JPEG_MODEL_SUFFIX and jpeg.backend == "python"
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch) for i in jpeg.input] == [
        (JPEG_INPUT, model_config_pb2.TYPE_UINT8, [-1], True)
    ]
    assert [(o.name, o.data_type, o.dims) for o in jpeg.output] == [
        (o.name, o.data_type, o.dims) for o in model.output
    ]
    assert not any(o.label_filename for o in jpeg.output)
    assert jpeg.max_batch_size == model.max_batch_size
    assert jpeg.dynamic_batching == model.dynamic_batching
    assert (out / "cpu" / jpeg.name / "1" / "model.py").read_text() == floor.NULL_MODEL
    # model.json: the source's, naming the ensembles so that JPEG_TO_TRITON sends bytes there
    written, source = (
        ModelContract.read(out / "model.json"),
        ModelContract.read(repository / "model.json"),
    )
    assert written.jpeg_ensembles is not None
    assert (written.jpeg_ensembles.suffix, written.jpeg_ensembles.input) == (
        JPEG_MODEL_SUFFIX,
        JPEG_INPUT,
    )
    assert (written.preprocessing, written.layout, written.labels) == (
        source.preprocessing,
        source.layout,
        source.labels,
    )
    gateway_view = ModelMetadata.load(out / "model.json").jpeg_ensembles
    assert gateway_view is not None and gateway_view.suffix == JPEG_MODEL_SUFFIX


def test_a_model_json_alone_is_enough(repository: Path, tmp_path: Path):
    """bench_e2e's floor for a model it has not built: the configs `make repo` would write."""
    source = tmp_path / "contract"
    source.mkdir()
    shutil.copy2(repository / "model.json", source / "model.json")
    names = ["vit_classify_fp32", "vit_explain_fp32"]
    out = floor.write_repository(source, tmp_path / "floor", names)
    for name in names:
        real, null = read(repository / "cpu" / name), read(out / "cpu" / name)
        assert null.input == real.input and null.output == real.output
        assert null.max_batch_size == real.max_batch_size
    assert (out / "cpu" / "vit_classify_fp32_jpeg" / "config.pbtxt").is_file()


def test_write_contract_makes_a_timm_models_model_json_without_a_build(tmp_path: Path):
    assert floor.main(["--model", "vit_tiny_patch16_224", "--out", str(tmp_path)]) == 0
    raw = json.loads((tmp_path / "model.json").read_text())
    contract = ModelContract.read(tmp_path / "model.json")
    assert contract.preprocessing.input_size == (224, 224) and contract.layout.grid == (14, 14)
    assert len(contract.labels) == 1000 and raw["jpeg_ensembles"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]
