"""Shared fixtures: the built default repository, held-out digits, and a real local Triton."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from build.contract import ModelContract
from local_triton.launcher import LocalTriton, Ports

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = Path(os.environ.get("VIT_TEST_REPOSITORY", ROOT / "model_repository"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


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
    from build import digits

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
