"""The naive baseline server answers like a classifier should: it is a fair baseline only if it
does the same work (decode, the model's own preprocessing, the model) and gets it right."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from loadtest.naive_server import create_app
from tests.helpers import ROOT


def test_naive_server_classifies_the_samples(repository: Path, monkeypatch):
    monkeypatch.setenv("NAIVE_REPOSITORY", str(repository))
    with TestClient(create_app()) as client:
        for sample, label in (("digit-7.png", "7"), ("digit-3.jpg", "3")):
            data = (ROOT / "samples" / sample).read_bytes()
            answer = client.post("/classify", content=data, headers={"content-type": "image/jpeg"})
            assert answer.status_code == 200
            top = answer.json()["predictions"]
            assert top[0]["label"] == label and len(top) == 5
            assert top[0]["probability"] > 0.5
