"""The serving floor's repository: the real models' names and configs, a model that computes
nothing (served end to end by tests/loadtest/test_bench_e2e.py)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from loadtest import floor


def read(folder: Path) -> model_config_pb2.ModelConfig:
    text = (folder / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_null_models_keep_the_served_interface(repository: Path, tmp_path: Path):
    names = ["vit_classify_int8", "vit_explain_fp32"]
    out = floor.write_repository(repository, tmp_path / "floor", names)
    assert (out / "model.json").read_text() == (repository / "model.json").read_text()
    assert sorted(p.name for p in (out / "cpu").iterdir()) == names
    for name in names:
        real, null = read(repository / "cpu" / name), read(out / "cpu" / name)
        assert (null.name, null.backend) == (name, "python")
        assert null.input == real.input and null.output == real.output
        assert null.max_batch_size == real.max_batch_size
        assert null.instance_group == real.instance_group
        assert null.dynamic_batching == real.dynamic_batching
        assert not null.model_warmup and not null.parameters  # nothing to load or warm
        assert (out / "cpu" / name / "1" / "model.py").read_text() == floor.NULL_MODEL
        assert (out / "cpu" / name / "labels.txt").is_file()
