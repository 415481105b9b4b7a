"""One error envelope: every JSON error body is service.errors.envelope()'s, whoever answers (a
route, the exception handlers, the body-size limit before any route runs, /readyz)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from service.config import Settings
from service.errors import envelope
from service.main import create_app


class NotReadyTriton:
    async def ready(self, models, timeout_s):
        return False, "model vit_explain_fp32 is not ready"

    async def close(self) -> None:
        pass


def test_every_error_body_is_the_envelope(repository):
    app = create_app(Settings(model_metadata=repository / "model.json", max_body_bytes=1000))
    with TestClient(app) as client:
        app.state.services.triton = NotReadyTriton()
        answers = {
            "not_ready": client.get("/readyz"),  # raised, mapped once
            "payload_too_large": client.post(  # the body-size limit, before any route
                "/classify", content=b"x" * 2000, headers={"Content-Type": "image/png"}
            ),
            "bad_request": client.post(
                "/classify",
                content=b"x",
                headers={"Content-Type": "image/png", "Content-Length": "many"},
            ),
            "not_found": client.get("/nope"),
            "invalid_parameter": client.post("/classify", params={"top_k": "0"}, content=b"x"),
        }
    for code, answer in answers.items():
        assert answer.headers["content-type"] == "application/json", code
        assert answer.json() == envelope(code, answer.json()["error"]["message"]), code
    assert json.loads(answers["not_ready"].content) == envelope(
        "not_ready", "model vit_explain_fp32 is not ready"
    )
    assert answers["not_ready"].status_code == 503
    assert answers["not_ready"].headers["retry-after"] == "1"
    assert answers["payload_too_large"].status_code == 413
    assert answers["payload_too_large"].headers["connection"] == "close"
    assert answers["bad_request"].status_code == 400
