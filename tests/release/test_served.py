"""The served repository's version files (release/served.py) and what publish refuses before it
writes anything: real configs of the default build, no Triton (a refusal is decided first)."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from release.served import BLOCK_MARK, ReleaseError, exclusive, read_models
from release.swap import Triton, publish, rollback, status
from service.model_info import CONTRACT_PARAMETER, SERVING_VERSION_PARAMETER, ModelMetadata
from tests.release.test_publish import copy_repository


class NoTriton(Triton):
    """Takes load requests (check_mode passes) but is never reached: a refusal comes first."""

    def __init__(self) -> None:
        self.urls, self.poll, self.clients = ["nowhere:1"], False, []

    def check_mode(self) -> None:
        pass

    def apply(self, *_args: object) -> None:
        raise AssertionError("publish reached Triton: it should have refused first")


def tree(path: Path) -> dict[str, bytes]:
    """Every file but the lock (release/served.exclusive), which no server reads."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".release.lock")
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


def test_the_block_names_the_versions_and_carries_a_model_json_the_gateway_reads(
    repository, tmp_path
):
    served = copy_repository(repository, tmp_path / "served")
    model = read_models(served / "cpu")[0]
    body = model.body
    contract = (served / "model.json").read_text()
    model.write_block([1, 2], 2, contract)
    text = (model.path / "config.pbtxt").read_text()
    assert text.startswith(body.rstrip()) and BLOCK_MARK in text  # the build's text kept
    config = text_format.Parse(text, model_config_pb2.ModelConfig())  # as Triton parses it
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert config.parameters[SERVING_VERSION_PARAMETER].string_value == "2"
    read = json.loads(config.parameters[CONTRACT_PARAMETER].string_value)
    assert ModelMetadata.from_dict(read) == ModelMetadata.from_dict(json.loads(contract))
    model.write_block([2], 2, contract)  # replaced, not appended
    again = (model.path / "config.pbtxt").read_text()
    assert again.count(BLOCK_MARK) == 1 and again.startswith(body.rstrip())
    assert read_models(served / "cpu")[0].serving() == 2


def test_labels_with_quotes_and_non_ascii_survive_the_config(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    raw = json.loads((served / "model.json").read_text())
    raw["labels"] = ['a "quoted" label', "back\\slash", "crème brûlée", "日本", *raw["labels"][4:]]
    model = read_models(served / "cpu")[0]
    model.write_block([1], 1, json.dumps(raw))
    config = read_models(served / "cpu")[0].config
    assert json.loads(config.parameters[CONTRACT_PARAMETER].string_value)["labels"] == raw["labels"]


def test_a_build_with_other_inputs_is_refused_before_anything_is_written(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    other = copy_repository(repository, tmp_path / "other")
    config = other / "cpu" / "vit_explain_fp32" / "config.pbtxt"
    text = config.read_text().replace("dims: [ 3, 32, 32 ]", "dims: [ 3, 224, 224 ]")
    assert text != config.read_text()
    config.unlink()  # a hard link: replaced, not written through
    config.write_text(text)
    before = tree(served)
    with pytest.raises(ReleaseError, match="vit_explain_fp32: the new build's inputs"):
        publish(served, other, "cpu", NoTriton(), drain_s=0)
    assert tree(served) == before


def test_a_build_with_another_model_set_is_refused(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    other = copy_repository(repository, tmp_path / "other")
    shutil.rmtree(other / "cpu" / "vit_explain_fp32")
    before = tree(served)
    with pytest.raises(ReleaseError, match=r"missing: \['vit_explain_fp32'\]"):
        publish(served, other, "cpu", NoTriton(), drain_s=0)
    assert tree(served) == before


def test_an_unfinished_build_or_a_bad_model_json_is_refused(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    other = copy_repository(repository, tmp_path / "other")
    (other / "model.json").unlink()
    with pytest.raises(ReleaseError, match=r"model\.json is missing: not a finished build"):
        publish(served, other, "cpu", NoTriton(), drain_s=0)
    (other / "model.json").write_text('{"model_name": "x"}')
    with pytest.raises(ReleaseError, match=r"not a valid model\.json"):
        publish(served, other, "cpu", NoTriton(), drain_s=0)
    assert not any(p.name == "2" for p in (served / "cpu").rglob("*"))


def test_a_config_with_its_own_version_policy_is_refused(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    config = served / "cpu" / "vit_classify_fp32" / "config.pbtxt"
    text = config.read_text() + "version_policy { latest { num_versions: 2 } }\n"
    config.unlink()
    config.write_text(text)
    with pytest.raises(ReleaseError, match="sets its own version_policy"):
        status(served, "cpu")


def test_status_of_a_repository_never_published_to(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    assert status(served, "cpu") == [
        "vit_classify_fp32: serving 1, loaded ['newest'], on disk [1]",
        "vit_explain_fp32: serving 1, loaded ['newest'], on disk [1]",
    ]
    assert filecmp.cmp(
        served / "cpu" / "vit_classify_fp32" / "config.pbtxt",
        repository / "cpu" / "vit_classify_fp32" / "config.pbtxt",
        shallow=False,
    )


def test_no_triton_at_the_address_is_one_line(tmp_path):
    with pytest.raises(ReleaseError, match=r"Triton at 127\.0\.0\.1:1: ") as error:
        Triton("127.0.0.1:1").check_mode()
    assert "\n" not in str(error.value)
    assert isinstance(Triton("127.0.0.1:1").client, grpcclient.InferenceServerClient)


def test_one_publish_or_rollback_at_a_time(repository, tmp_path):
    served = copy_repository(repository, tmp_path / "served")
    other = copy_repository(repository, tmp_path / "other")
    with exclusive(served):  # another make publish, still running
        with pytest.raises(ReleaseError, match=r"already running on .*\(pid \d+\)"):
            publish(served, other, "cpu", NoTriton(), drain_s=0)
        with pytest.raises(ReleaseError, match="already running"):
            rollback(served, "cpu", NoTriton(), drain_s=0)
    with pytest.raises(ReleaseError, match="no version before 1"):  # free again
        rollback(served, "cpu", NoTriton(), drain_s=0)
    with pytest.raises(ReleaseError, match=r"is not a directory"):
        publish(tmp_path / "nowhere", other, "cpu", NoTriton(), drain_s=0)
