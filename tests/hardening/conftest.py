"""Real stacks for the hardening tests: a Triton + gateway over the default repository, and one
over a 224-px model spec (tests/hardening/probe_repository.py explains why a probe model)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from local_triton.gateway import LocalGateway
from local_triton.launcher import LocalTriton
from tests.hardening import probe_repository
from tests.helpers import free_ports, local_gateway

# What the hardening stacks change from the gateway defaults: a short body timeout, so that the
# slow-upload kind of the corpus is answered within the corpus time bound.
CORPUS_GATEWAY_ENV = {"BODY_TIMEOUT_S": "1.0"}  # service/config.py body_timeout_s


@dataclass
class Stack:
    spec: str  # "default" (32 px) or "224"
    repository: Path
    triton: LocalTriton
    gateway: LocalGateway
    ran: set[str] = field(default_factory=set)  # corpus kinds already sent
    baseline_rss: int = 0  # gateway RSS after warm-up, before the corpus


@pytest.fixture(scope="session")
def repository_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return probe_repository.write(tmp_path_factory.mktemp("repo224"))


@pytest.fixture(scope="session")
def triton_224(
    repository_224: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalTriton]:
    log_path = tmp_path_factory.mktemp("triton224") / "tritonserver.log"
    with (
        log_path.open("w") as log,
        LocalTriton(repository_224 / "cpu", free_ports(), log=log) as server,
    ):
        yield server


@pytest.fixture(scope="module", params=["default", "224"])
def corpus_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway of the module's own (its memory is measured) over the default or 224 spec."""
    if request.param == "default":
        repo, triton = request.getfixturevalue("repository"), request.getfixturevalue("triton")
    else:
        repo, triton = (
            request.getfixturevalue("repository_224"),
            request.getfixturevalue("triton_224"),
        )
    with local_gateway(triton.ports.grpc, repo, **CORPUS_GATEWAY_ENV) as gateway:
        yield Stack(request.param, repo, triton, gateway)
