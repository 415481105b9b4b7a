"""docker-compose.yml beyond the schema: every profile resolves (docker-compose v1 `config`), the
cpu profile starts no GPU service, and monitoring mounts what exists in the checkout."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.helpers import ROOT

PROFILES = ("", "cpu", "loadtest", "engines")
# The documented way to run without a GPU (docs/deploy.md "CPU containers").
CPU_STACK = ("gateway-cpu", "prometheus", "grafana")


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves(profile):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose not found: run scripts/system-deps.sh (make install does)")
    args = [binary, "-f", "docker-compose.yml", *(["--profile", profile] if profile else [])]
    proc = subprocess.run([*args, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def closure(names: tuple[str, ...]) -> set[str]:
    """The services `docker compose up NAMES` starts: the names and what they depend on."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += list(services()[name].get("depends_on", {}))
    return seen


def uses_gpu(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return bool(devices.get("devices"))


def test_cpu_stack_starts_no_gpu_service_and_keeps_the_gpu_names():
    started = closure(CPU_STACK)
    assert started == {"triton-cpu", "gateway-cpu", "prometheus", "grafana"}
    assert not [name for name in started if uses_gpu(services()[name])]
    # Prometheus, the load test and the gateway find them under the GPU services' names.
    cpu = services()
    assert "triton" in cpu["triton-cpu"]["networks"]["default"]["aliases"]
    assert "gateway" in cpu["gateway-cpu"]["networks"]["default"]["aliases"]
    assert (
        cpu["gateway-cpu"]["environment"]["TRITON_URL"]
        == cpu["gateway"]["environment"]["TRITON_URL"]
    )
    assert cpu["gateway-cpu"]["depends_on"]["triton-cpu"]["condition"] == "service_healthy"


def test_gpu_services_are_in_no_profile_and_cpu_ones_only_in_cpu():
    s = services()
    assert "profiles" not in s["triton"] and "profiles" not in s["gateway"]
    assert s["triton-cpu"]["profiles"] == ["cpu"] and s["gateway-cpu"]["profiles"] == ["cpu"]
    assert s["loadtest"]["profiles"] == ["loadtest"]
    assert s["perf-analyzer"]["profiles"] == ["loadtest"]


def test_monitoring_mounts_exist_in_the_checkout():
    for name in ("prometheus", "grafana", "triton-cpu", "gateway-cpu", "loadtest"):
        for volume in services()[name].get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./model_repository") or source.startswith("./loadtest/results"):
                continue  # build outputs
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"
    prometheus = services()["prometheus"]
    assert "./monitoring/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # Only rule files live there (the unit tests are elsewhere): Prometheus loads every *.yml.
    assert [p.name for p in (ROOT / "monitoring" / "rules").glob("*.yml")] == ["vit-alerts.yml"]


def test_monitoring_ports_stay_on_the_host():
    """Prometheus and Grafana have no authentication in front: bound to loopback only."""
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services()[name]["ports"])
