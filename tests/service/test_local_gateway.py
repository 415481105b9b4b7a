"""local_triton.gateway.LocalGateway, the one way the gateway is started (make serve, benches,
scripts, fuzzing, tests): ready when /healthz answers, a one-line error with its log's tail when
it dies first, stopped by SIGTERM, niced for benches. No Triton is needed for these."""

from __future__ import annotations

import os
import re
import signal
import socket

import httpx
import pytest

from local_triton.gateway import GatewayLaunchError, LocalGateway
from local_triton.procfs import free_port


def test_started_gateway_answers_runs_niced_and_stops_on_sigterm(repository, tmp_path):
    with (tmp_path / "gateway.log").open("w") as log:
        gateway = LocalGateway(
            f"127.0.0.1:{free_port()}",  # no Triton there: /healthz needs none
            repository / "model.json",
            settings={"ACCESS_LOG": "false"},
            log=log,
            niceness=15,
        )
        with gateway:
            assert gateway.process is not None
            assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
            assert os.getpriority(os.PRIO_PROCESS, gateway.process.pid) == 15
            assert gateway.cpu_seconds() > 0
            assert (gateway.metrics_dir is not None) and gateway.metrics_dir.is_dir()
        # uvicorn re-raises the SIGTERM it was stopped with once its shutdown ran (not killed)
        assert gateway.process.returncode in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.url}/healthz", timeout=1)


def test_a_gateway_that_dies_before_ready_says_why_in_one_line_and_its_log_tail(
    repository, tmp_path
):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with (tmp_path / "gateway.log").open("w") as log:
            gateway = LocalGateway(
                f"127.0.0.1:{free_port()}", repository / "model.json", port=taken, log=log
            )
            with pytest.raises(GatewayLaunchError) as raised:
                gateway.start()
    first, *tail = str(raised.value).splitlines()
    one_line = r"gateway exited with code \d+ before it was ready \(log: .*\); its last lines:"
    assert re.fullmatch(one_line, first), first
    assert any("address already in use" in line.lower() for line in tail), tail
    assert gateway.process is not None and gateway.process.poll() is not None
