"""Shared fixtures: the built default repository, held-out digits, and a real local Triton."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from build.contract import ModelContract
from local_triton.gateway import LocalGateway
from local_triton.launcher import LocalTriton
from tests.helpers import ROOT, free_ports, local_gateway

REPOSITORY = Path(os.environ.get("VIT_TEST_REPOSITORY", ROOT / "model_repository"))


@pytest.fixture(scope="session")
def repository() -> Path:
    """The default (offline digits) repository that `make test` builds when it is absent."""
    marker = REPOSITORY / "model.json"
    if not marker.is_file():
        pytest.fail(f"{marker} missing: build it with `make repo` (make test does this)")
    if ModelContract.read(marker).origin != "offline-digits":
        pytest.fail(
            f"{REPOSITORY} holds another model; the suite checks the offline default: "
            "rebuild it with `make repo` or point VIT_TEST_REPOSITORY at a default build"
        )
    return REPOSITORY


@pytest.fixture(scope="session")
def contract(repository: Path) -> ModelContract:
    return ModelContract.read(repository / "model.json")


@pytest.fixture(scope="session")
def heldout():
    from build.model import digits

    return digits.load_splits()[1]


@pytest.fixture(scope="session")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """One real tritonserver for the session, on free ports, logging to a file."""
    log_path = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with (
        log_path.open("w") as log,
        LocalTriton(repository / "cpu", free_ports(), log=log) as server,
    ):
        yield server


@pytest.fixture(scope="session")
def gateway(triton: LocalTriton, repository: Path) -> Iterator[LocalGateway]:
    with local_gateway(triton.ports.grpc, repository) as gw:
        yield gw


@pytest.fixture(scope="session")
def http(gateway: LocalGateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client
