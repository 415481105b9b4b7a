"""A worker that dies while serving (SIGKILL, OOM) must not leave its in-flight requests counted
forever: with PROMETHEUS_MULTIPROC_DIR, /metrics forgets the live gauges of workers that are gone,
and keeps their counters. Real processes writing real multiprocess files."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT

DIES_SERVING = """
import os
from service import metrics
metrics.IN_FLIGHT.inc()
metrics.REQUESTS.labels("classify", "200").inc()
os._exit(0)  # no clean-up: as if killed mid-request
"""

STILL_SERVING = """
import sys, time
from service import metrics
metrics.IN_FLIGHT.inc()
print("ready", flush=True)
sys.stdin.readline()
"""

SCRAPE = """
from service.metrics import render_latest
print(render_latest()[0].decode())
"""


def run(program: str, metrics_dir: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def value(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_a_dead_workers_in_flight_requests_are_forgotten_and_its_counts_kept(tmp_path):
    metrics_dir = str(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    alive = subprocess.Popen(
        [sys.executable, "-c", STILL_SERVING], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "ready"
        run(DIES_SERVING, metrics_dir)
        text = run(SCRAPE, metrics_dir)
    finally:
        alive.communicate("\n", timeout=10)
    assert value(text, "gateway_requests_in_flight") == 1.0  # the live worker's, not the dead one's
    assert value(text, 'gateway_requests_total{endpoint="classify",status="200"}') == 1.0
