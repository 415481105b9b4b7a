"""service.triton.TritonBackend's own logic (catalog, chunking, cancellation), unit-tested with a
fake tritonclient.grpc.aio client that implements the calls the backend makes. The end-to-end
behaviour against a real Triton is in test_triton_overload.py and test_model_set_changes.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from service import triton as triton_module
from service.errors import InvalidParameter, TritonFailed, TritonUnavailable
from service.triton import TritonBackend


class FakeClient:
    """Answers like tritonclient.grpc.aio.InferenceServerClient for the models in `models`
    (vit_classify_fp32 unless a test says otherwise)."""

    def __init__(self) -> None:
        self.max_batch_size: int | None = 4  # None: the key is absent, as protobuf JSON omits 0
        self.index_calls = 0
        self.index_delay_s = 0.0
        self.index_error: Exception | None = None
        self.infer_calls: list[int] = []
        self.versions: list[str] = []  # model_version of each infer call
        self.fail_first_chunk = False
        self.cancelled: list[int] = []
        self.models = ["vit_classify_fp32"]
        self.sent: list[list] = []  # the inputs of each infer call
        self.asked_outputs: list[object] = []  # the outputs= of each infer call
        self.answered = {"logits"}  # the outputs each answer carries
        self.loaded = ["1"]  # READY versions of each model
        self.parameters: dict = {}  # the config's parameters (make publish writes some)

    # Triton's answers as tritonclient gives them without as_json: protobuf messages
    async def get_model_repository_index(self, client_timeout):
        self.index_calls += 1
        await asyncio.sleep(self.index_delay_s)
        if self.index_error is not None:
            raise self.index_error
        ready = [(m, v) for m in self.models for v in self.loaded]
        index = {"models": [{"name": m, "version": v, "state": "READY"} for m, v in ready]}
        return json_format.ParseDict(index, service_pb2.RepositoryIndexResponse())

    async def get_model_config(self, name, client_timeout):
        config = {"name": name}
        if self.max_batch_size is not None:
            config["max_batch_size"] = self.max_batch_size
        if self.parameters:
            config["parameters"] = self.parameters
        return json_format.ParseDict({"config": config}, service_pb2.ModelConfigResponse())

    async def infer(
        self, model, inputs, model_version="", client_timeout=None, timeout=None, outputs=None,
        headers=None,
    ):  # fmt: skip
        n = int(inputs[0].shape()[0])
        self.versions.append(model_version)
        call = len(self.infer_calls)
        self.infer_calls.append(n)
        self.sent.append(inputs)
        assert headers is None  # no request trace here: no traceparent for Triton
        self.asked_outputs.append(outputs)
        if self.fail_first_chunk and call == 0:
            raise InferenceServerException(msg="secret internal text", status="StatusCode.INTERNAL")
        try:
            await asyncio.sleep(0.5 if self.fail_first_chunk else 0)
        except asyncio.CancelledError:
            self.cancelled.append(call)
            raise
        return FakeResult(n, call, self.answered)

    async def close(self):
        pass


class FakeResult:
    def __init__(self, n: int, call: int, answered: set[str]) -> None:
        self.logits = np.full((n, 10), call, dtype=np.float32)
        self.answered = answered

    def as_numpy(self, name):  # tritonclient's InferResult: None for an output not in the answer
        return self.logits if name in self.answered else None


@pytest.fixture
def backend():
    async def make() -> tuple[TritonBackend, FakeClient]:
        b = TritonBackend("127.0.0.1:1", "vit", retry_after_s=1)
        await b._client.close()
        fake = FakeClient()
        b._client = fake
        return b, fake

    return make


def test_a_reloaded_models_new_max_batch_size_is_seen(backend, monkeypatch):
    monkeypatch.setattr(triton_module, "CATALOG_REFRESH_S", 0.05)

    async def scenario():
        b, fake = await backend()
        assert (await b.variant("classify", "fp32", 1.0)).max_batch_size == 4
        fake.max_batch_size = 2  # Triton reloaded the model with another config
        await asyncio.sleep(0.1)
        await b.variant("classify", "fp32", 1.0)  # stale: answered at once, refreshed behind
        await asyncio.sleep(0.01)
        assert (await b.variant("classify", "fp32", 1.0)).max_batch_size == 2

    asyncio.run(scenario())


def test_waiters_share_one_refresh_while_triton_hangs(backend):
    async def scenario():
        b, fake = await backend()
        fake.index_delay_s = 0.3
        fake.index_error = InferenceServerException(msg="Deadline Exceeded", status="UNAVAILABLE")
        results = await asyncio.gather(
            *(b.variant("classify", "fp32", 0.3) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, TritonUnavailable) for r in results), results
        assert fake.index_calls == 1  # not 5 refreshes one after another

    asyncio.run(scenario())


def test_a_slow_refresh_never_holds_up_the_fast_path(backend, monkeypatch):
    monkeypatch.setattr(triton_module, "CATALOG_REFRESH_S", 0.05)

    async def scenario():
        b, fake = await backend()
        await b.variants(1.0)
        await asyncio.sleep(0.1)  # the cache is stale now
        fake.index_delay_s = 1.0  # and Triton hangs
        unknown = asyncio.ensure_future(b.variant("classify", "bf16", 1.0))  # forces a refresh
        await asyncio.sleep(0.01)
        known = await asyncio.wait_for(b.variant("classify", "fp32", 1.0), timeout=0.2)
        assert known.max_batch_size == 4
        unknown.cancel()

    asyncio.run(scenario())


def test_a_model_without_batching_gets_one_image_per_call(backend):
    async def scenario():
        b, fake = await backend()
        fake.max_batch_size = None  # max_batch_size: 0
        variant = await b.variant("classify", "fp32", 1.0)
        assert variant.max_batch_size == 0
        out = await b.infer(variant, np.zeros((3, 3, 8, 8), np.uint8), ["logits"], 1.0)
        assert fake.infer_calls == [1, 1, 1]
        assert out["logits"][:, 0].tolist() == [0, 1, 2]  # in order

    asyncio.run(scenario())


def test_a_failed_call_makes_the_next_one_look_again_first(backend):
    async def scenario():
        b, fake = await backend()
        variant = await b.variant("classify", "fp32", 1.0)
        fake.max_batch_size, fake.fail_first_chunk = 2, True
        with pytest.raises(TritonFailed):
            await b.infer(variant, np.zeros((4, 3, 8, 8), np.uint8), ["logits"], 1.0)
        assert (await b.variant("classify", "fp32", 1.0)).max_batch_size == 2

    asyncio.run(scenario())


def test_chunks_keep_their_order(backend):
    async def scenario():
        b, fake = await backend()
        variant = await b.variant("classify", "fp32", 1.0)
        out = await b.infer(variant, np.zeros((10, 3, 8, 8), np.uint8), ["logits"], 1.0)
        assert fake.infer_calls == [4, 4, 2]
        assert out["logits"][:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 2

    asyncio.run(scenario())


def test_when_one_chunk_fails_its_siblings_are_cancelled(backend):
    async def scenario():
        b, fake = await backend()
        fake.fail_first_chunk = True
        variant = await b.variant("classify", "fp32", 1.0)
        with pytest.raises(TritonFailed) as failed:
            await b.infer(variant, np.zeros((12, 3, 8, 8), np.uint8), ["logits"], 5.0)
        assert sorted(fake.cancelled) == [1, 2]  # not left running on Triton
        assert "secret internal text" not in failed.value.message

    asyncio.run(scenario())


def test_attribution_models_join_the_catalog_and_a_missing_one_is_named(backend):
    async def scenario():
        b, fake = await backend()
        with pytest.raises(TritonUnavailable, match="no attribution model is ready"):
            await b.variant("attribution", "fp32", 1.0)
        fake.models = ["vit_classify_fp32", "vit_explain_fp16", "vit_attribution_fp32"]
        b._invalid = True  # as after a failed call: look again
        assert (await b.variant("attribution", "fp32", 1.0)).name == "vit_attribution_fp32"
        with pytest.raises(InvalidParameter, match="'fp16' is not served for attribution; avail"):
            await b.variant("attribution", "fp16", 1.0)

    asyncio.run(scenario())


def test_extra_inputs_are_sent_with_their_numpy_type_per_image(backend):
    async def scenario():
        b, fake = await backend()
        variant = await b.variant("classify", "fp32", 1.0)
        scalars = {"target_class": np.int32(-1), "discard_ratio": np.float32(0.5)}
        await b.infer(variant, np.zeros((6, 3, 8, 8), np.uint8), ["logits"], 1.0, scalars)
        for inputs, n in zip(fake.sent, [4, 2], strict=True):  # max_batch_size 4: two chunks
            sent = {i.name(): i for i in inputs[1:]}
            assert sent["target_class"].datatype() == "INT32"
            assert sent["discard_ratio"].datatype() == "FP32"
            assert sent["target_class"].shape() == [n, 1]

    asyncio.run(scenario())


def test_triton_is_asked_for_every_output_and_an_answer_without_one_is_a_502(backend):
    """Triton's response cache keys a request by its inputs only and answers a hit with the
    outputs the first request asked for: asking for subsets (rollout_mean, then rollout_max of the
    same image) would be answered without the map. So no call names outputs; an answer that
    lacks one anyway (a cache another client filled) is Triton's fault, not a 500."""

    async def scenario():
        b, fake = await backend()
        fake.answered = {"logits", "rollout_mean", "rollout_max"}
        variant = await b.variant("classify", "fp32", 1.0)
        out = await b.infer(
            variant, np.zeros((6, 3, 8, 8), np.uint8), ["logits", "rollout_max"], 1.0
        )
        assert sorted(out) == ["logits", "rollout_max"] and len(out["rollout_max"]) == 6
        assert fake.asked_outputs == [None, None]  # two chunks of max_batch_size 4
        fake.answered = {"logits"}
        with pytest.raises(TritonFailed):
            await b.infer(variant, np.zeros((1, 3, 8, 8), np.uint8), ["logits", "rollout_max"], 1.0)

    asyncio.run(scenario())


def test_the_served_version_and_its_model_json_come_from_the_config_and_pin_each_call(
    backend, repository
):
    """make publish names the version to serve and its model.json in the config; the variant
    carries both, is marked not-newest while a newer version is still loaded (a rollback), and
    every call of the request names its version. Without them: the newest loaded version."""
    from service.model_info import CONTRACT_PARAMETER, SERVING_VERSION_PARAMETER

    raw = json.loads((repository / "model.json").read_text())
    raw["labels"] = [f"v1-{label}" for label in raw["labels"]]

    async def scenario():
        b, fake = await backend()
        fake.loaded = ["1", "3"]
        plain = await b.variant("classify", "fp32", 1.0)
        assert (plain.version, plain.latest, plain.contract) == ("3", True, None)
        fake.parameters = {
            SERVING_VERSION_PARAMETER: {"string_value": "1"},
            CONTRACT_PARAMETER: {"string_value": json.dumps(raw)},
        }
        await asyncio.sleep(triton_module.FORCED_REFRESH_MIN_S + 0.1)
        pinned = (await b.variants(1.0, force=True))[("classify", "fp32")]
        assert (pinned.version, pinned.latest) == ("1", False)
        assert pinned.contract is not None and pinned.contract.labels[0] == "v1-0"
        await b.infer(pinned, np.zeros((6, 3, 32, 32), np.uint8), ["logits"], 1.0)
        assert fake.versions == ["1", "1"]  # both chunks of the request

    asyncio.run(scenario())


def test_a_config_whose_model_json_is_unreadable_is_not_served(backend):
    from service.model_info import CONTRACT_PARAMETER

    async def scenario():
        b, fake = await backend()
        fake.parameters = {CONTRACT_PARAMETER: {"string_value": '{"model_name": "x"}'}}
        with pytest.raises(TritonUnavailable, match="no classify model is ready"):
            await b.variant("classify", "fp32", 1.0)

    asyncio.run(scenario())
