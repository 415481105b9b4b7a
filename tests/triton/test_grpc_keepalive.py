"""gRPC keepalive between the gateway's client and Triton, against a real tritonserver (empty
repository, so it starts in a second). The gateway pings every 30 s; to see the effect in seconds
the client here pings every second and the server's minimum interval is scaled the same way
(launcher.GrpcKeepalive with a smaller interval): the flags are the launcher's, only the numbers
are smaller. tests/deploy/test_single_source.py checks the real numbers agree everywhere."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from local_triton.launcher import GrpcKeepalive, LocalTriton
from service.triton import channel_args
from tests.helpers import free_ports

CLIENT_PING_MS = 1_000
IDLE_S = 6.0  # long enough for Triton's default policy to send GOAWAY (3rd bad ping at ~3 s)


def states_while_idle(grpc_port: int) -> list[grpc.ChannelConnectivity]:
    """Open a channel with the gateway's channel arguments (pinging every second), make one
    call, stay idle, and record every connectivity change."""
    seen: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()

    def record(state: grpc.ChannelConnectivity) -> None:
        with lock:
            seen.append(state)

    channel = grpc.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=channel_args(keepalive_ms=CLIENT_PING_MS)
    )
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        channel.subscribe(record, try_to_connect=False)
        time.sleep(IDLE_S)
        with lock:
            return list(seen)
    finally:
        channel.close()


@pytest.fixture
def empty_repository(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    return repo


def test_triton_defaults_drop_an_idle_pinging_client(empty_repository, tmp_path):
    """Why the flags exist: with Triton's defaults the connection is closed (too_many_pings)."""
    with (
        (tmp_path / "triton.log").open("w") as log,
        LocalTriton(empty_repository, free_ports(), log=log, keepalive=None) as server,
    ):
        seen = states_while_idle(server.ports.grpc)
    assert grpc.ChannelConnectivity.READY in seen
    assert seen[-1] != grpc.ChannelConnectivity.READY, seen


def test_launcher_flags_keep_an_idle_pinging_connection(empty_repository, tmp_path):
    scaled = GrpcKeepalive(min_recv_ping_interval_ms=CLIENT_PING_MS // 2)
    with (
        (tmp_path / "triton.log").open("w") as log,
        LocalTriton(empty_repository, free_ports(), log=log, keepalive=scaled) as server,
    ):
        assert "--grpc-keepalive-permit-without-calls=1" in server.command()
        seen = states_while_idle(server.ports.grpc)
    assert seen and set(seen) == {grpc.ChannelConnectivity.READY}, seen
