"""Kubernetes manifests (deploy/kubernetes): both overlays render, validate strictly against the
Kubernetes schemas (unknown fields, and unknown kinds other than the allow-listed CRDs, fail), lint
clean, and wire up: selectors, ports, probes, GPU resources, PDBs, HPAs, monitoring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from local_triton.launcher import GrpcKeepalive
from service import gunicorn_conf, tracing
from tests.deploy.kube import KUBERNETES, OVERLAYS, container, find, rendered, rendered_text
from tests.deploy.monitoring_files import ADAPTER_VALUES, PROMETHEUS_RULE, prometheus_rule_manifest
from tests.helpers import ROOT

# Oldest and newest Kubernetes the manifests are checked against (kubernetes-validate 1.37.0
# ships schemas for 1.25-1.37): a removed API version fails on the newer one.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources of the Prometheus Operator: no schema in kubernetes-validate; checked by hand
# below (test_service_monitors_select_the_services_and_their_ports).
ALLOWED_CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(overlay, version):
    unknown = []
    for doc in rendered(overlay):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if (doc["apiVersion"], doc["kind"]) not in ALLOWED_CRDS:
                unknown.append(f"{doc['apiVersion']} {doc['kind']}")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")
    assert not unknown, f"no schema (unknown kind or removed API): {unknown}"


def test_strict_validation_rejects_an_unknown_field():
    """The check above can fail: a typo in a Deployment is an error, not a warning."""
    deployment = find(rendered("gpu"), "Deployment", "vit-gateway")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    hpa = find(rendered("gpu"), "HorizontalPodAutoscaler", "vit-triton")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**hpa, "apiVersion": "autoscaling/v2beta2"}, "1.37.0", True)


def test_yaml_lints_clean(tmp_path):
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(rendered_text(overlay))
    paths = [KUBERNETES, ROOT / "monitoring", ROOT / "docker-compose.yml", tmp_path]
    proc = subprocess.run(
        [BIN / "yamllint", "-c", ROOT / ".yamllint.yaml", "-f", "parsable", *paths],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_ports_and_probes_line_up(overlay):
    docs = rendered(overlay)
    for name, container_name in (("vit-triton", "triton"), ("vit-gateway", "gateway")):
        deployment = find(docs, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for kind in ("Service", "PodDisruptionBudget"):
            obj = find(docs, kind, name)
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert selector.items() <= labels.items(), f"{kind}/{name} selects no pod"
        c = container(docs, name, container_name)
        port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["port"] in port_names, probe
        for port in find(docs, "Service", name)["spec"]["ports"]:
            assert port["targetPort"] in port_names
            assert port["port"] == port_names[port["targetPort"]]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) in port_names.values()
        hpa = find(docs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
        }  # fmt: skip
    triton = container(docs, "vit-triton", "triton")
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    gateway = container(docs, "vit-gateway", "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in gateway["env"]}
    host, port = env["TRITON_URL"].split(":")
    service = find(docs, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
    grace = find(docs, "Deployment", "vit-gateway")["spec"]["template"]["spec"]
    flush = tracing.SHUTDOWN_FLUSH_S  # the spans still queued, after the in-flight requests
    assert grace["terminationGracePeriodSeconds"] > gunicorn_conf.graceful_timeout + flush


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_comes_from_the_claim(overlay):
    docs = rendered(overlay)
    claim = find(docs, "PersistentVolumeClaim", "vit-model-repository")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # many pods on many nodes
    for name in ("vit-triton", "vit-gateway"):
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        claims = [v for v in volumes.values() if "persistentVolumeClaim" in v]
        assert [v["persistentVolumeClaim"]["claimName"] for v in claims] == ["vit-model-repository"]
        mounts = [m for c in spec["containers"] for m in c["volumeMounts"]]
        assert all(m.get("readOnly") for m in mounts if m["name"] == claims[0]["name"])


def test_gpu_overlay_asks_for_a_gpu_and_agrees_on_keepalive():
    docs = rendered("gpu")
    triton = container(docs, "vit-triton", "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert set(GrpcKeepalive().flags()) <= set(triton["args"])
    assert "--model-repository=/models/gpu" in triton["args"]
    assert "--strict-readiness=true" in triton["args"]


def test_cpu_overlay_runs_the_launcher_which_adds_keepalive_itself():
    triton = container(rendered("cpu"), "vit-triton", "triton")
    assert triton["command"] == ["python", "-m", "local_triton"]
    assert triton["args"][0] == "--repository=/models/cpu"
    assert "nvidia.com/gpu" not in triton["resources"].get("limits", {})
    # The launcher parses these args exactly like this (the image's CMD is replaced).
    import argparse

    from local_triton.launcher import add_server_arguments

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(triton["args"])
    assert str(args.repository) == "/models/cpu"
    assert "--grpc-max-connection-age=60000" in args.triton_args


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_scale_triton_on_queue_time_and_the_gateway_on_cpu(overlay):
    docs = rendered(overlay)
    triton_hpa = find(docs, "HorizontalPodAutoscaler", "vit-triton")
    assert triton_hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = triton_hpa["spec"]["metrics"]
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] in {rule["name"]["as"] for rule in adapter}
    rule = next(r for r in adapter if r["name"]["as"] == metric["pods"]["metric"]["name"])
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    gateway_hpa = find(docs, "HorizontalPodAutoscaler", "vit-gateway")
    (cpu,) = gateway_hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu" and cpu["resource"]["target"]["type"] == "Utilization"
    gateway = container(docs, "vit-gateway", "gateway")
    assert "cpu" in gateway["resources"]["requests"]  # Utilization needs a request


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_select_the_services_and_their_ports(overlay):
    docs = rendered(overlay)
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"vit-triton", "vit-gateway"}
    jobs = set()
    for monitor in monitors:
        service = find(docs, "Service", monitor["metadata"]["name"])
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        jobs |= {r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"}
    compose_jobs = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert jobs == {job["job_name"] for job in compose_jobs["scrape_configs"]}


def test_prometheus_rule_is_the_compose_rules_file():
    """deploy/kubernetes/base/monitoring.yaml is generated from monitoring/rules/vit-alerts.yml:
    regenerate with `python -m tests.deploy.monitoring_files` after changing the rules."""
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_manifest()
