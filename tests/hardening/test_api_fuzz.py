"""Schemathesis against the live gateway with a real Triton behind it, time-boxed for every run:
the config of the full run (`python -m fuzz.api`, >= 1,000 cases), fewer cases per operation."""

from __future__ import annotations

from pathlib import Path

from fuzz.api import run_schemathesis
from tests.helpers import start_gateway, stop_gateway

CASES_PER_OPERATION = 30
MAX_TIME_S = 20  # the time box: schemathesis keeps fuzzing until it is spent
TIMEOUT_S = 120  # a stop in case it never ends


def test_schemathesis_finds_no_5xx_and_no_schema_violation(triton, repository, tmp_path: Path):
    gateway = start_gateway(triton.ports.grpc, repository)
    try:
        summary = run_schemathesis(
            gateway.url, tmp_path, CASES_PER_OPERATION, MAX_TIME_S, timeout_s=TIMEOUT_S
        )
    finally:
        stop_gateway(gateway)
    log = (tmp_path / "schemathesis.log").read_text()
    print(f"\nschemathesis: {summary.cases} cases in {summary.seconds} s")
    assert summary.exit_code == 0 and summary.failures == 0 and summary.errors == 0, log[-6000:]
    assert summary.cases >= 200, f"only {summary.cases} cases ran\n{log[-3000:]}"
