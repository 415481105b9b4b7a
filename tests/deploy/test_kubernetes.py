"""Kubernetes manifests (deploy/kubernetes): both overlays render, validate strictly against the
Kubernetes schemas (unknown fields, and unknown kinds other than the allow-listed CRDs, fail), lint
clean, and wire up: selectors, ports, probes, GPU resources, PDBs, HPAs, monitoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from build.gpu_host import gpu_product
from local_triton.launcher import GrpcKeepalive, LocalTriton
from service import gunicorn_conf, tracing
from tests.deploy.kube import (
    KUBERNETES,
    LOADERS,
    OVERLAYS,
    RELEASES,
    container,
    find,
    pod_specs,
    rendered,
    rendered_text,
)
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


@pytest.mark.parametrize("overlay", [*OVERLAYS, *LOADERS, *RELEASES])
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
    for overlay in (*OVERLAYS, *LOADERS, *RELEASES):
        (tmp_path / f"{overlay.replace('/', '-')}.yaml").write_text(rendered_text(overlay))
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


GPU_PRODUCT_ENV = KUBERNETES / "components" / "gpu-product" / "gpu-product.env"


def documented_gpu_product() -> str:
    (line,) = [x for x in GPU_PRODUCT_ENV.read_text().splitlines() if x.startswith("GPU_PRODUCT=")]
    return line.split("=", 1)[1]


@pytest.mark.parametrize("rendering", ["gpu", "loader/gpu"])
def test_pods_running_plans_are_pinned_to_the_documented_gpu_product(rendering):
    """A plan loads only on the GPU model that built it: Triton (overlays/gpu) and the loader
    that builds plans in the cluster (loader/gpu) select nodes by GPU Feature Discovery's
    nvidia.com/gpu.product label, with the value set in one place (gpu-product.env)."""
    product = documented_gpu_product()
    assert product == gpu_product.node_label(product.replace("-", " "))  # a GFD label value
    name = "Deployment/vit-triton" if rendering == "gpu" else "Job/vit-model-loader"
    spec = pod_specs(rendered(rendering))[name]
    assert spec["nodeSelector"] == {gpu_product.LABEL: product}
    configs = [d["metadata"]["name"] for d in rendered(rendering) if d["kind"] == "ConfigMap"]
    assert not any(n.startswith("vit-gpu-product") for n in configs)  # read, never applied
    steps = (ROOT / "docs" / "deploy.md").read_text()  # Kubernetes: GPU product
    assert "deploy/kubernetes/components/gpu-product/gpu-product.env" in steps
    assert "python -m build.gpu_host.gpu_product" in steps


def test_pods_without_tensorrt_are_not_pinned():
    for rendering in ("cpu", "loader/copy"):
        for name, spec in pod_specs(rendered(rendering)).items():
            assert gpu_product.LABEL not in spec.get("nodeSelector", {}), (rendering, name)
    gateway = pod_specs(rendered("gpu"))["Deployment/vit-gateway"]
    assert gpu_product.LABEL not in gateway.get("nodeSelector", {})


def writable_claim_mounts(docs: list[dict]) -> dict[str, list[str]]:
    """{workload: [mount paths]} of every mount of the repository's claim that may write."""
    found: dict[str, list[str]] = {}
    for name, spec in pod_specs(docs).items():
        volumes = {
            v["name"]: v["persistentVolumeClaim"]
            for v in spec.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for mount in c.get("volumeMounts", []):
                claim = volumes.get(mount["name"])
                if claim and not (mount.get("readOnly") or claim.get("readOnly")):
                    found.setdefault(name, []).append(mount["mountPath"])
    return found


def test_exactly_the_loader_mounts_the_repository_writable():
    """kubectl cp needs a writable target: the loader Job is the only pod that has one; Triton
    and the gateway read the claim, never write it."""
    for overlay in OVERLAYS:
        assert writable_claim_mounts(rendered(overlay)) == {}, overlay
    for loader in LOADERS:
        docs = rendered(loader)
        assert writable_claim_mounts(docs) == {"Job/vit-model-loader": ["/models"]}, loader
        claim = find(docs, "PersistentVolumeClaim", "vit-model-repository")
        assert claim == find(rendered("gpu"), "PersistentVolumeClaim", "vit-model-repository")
        job = find(docs, "Job", "vit-model-loader")["spec"]
        assert job["backoffLimit"] == 0 and job["activeDeadlineSeconds"] > 0
        (loader_container,) = job["template"]["spec"]["containers"]
        script = loader_container["command"][-1]
        assert "until [ -f /models/.loaded ]" in script and "kubectl cp" in script
    copy = find(rendered("loader/copy"), "Job", "vit-model-loader")["spec"]["template"]["spec"]
    assert copy["containers"][0]["image"].startswith("busybox:")  # tar, for kubectl cp
    assert "nvidia.com/gpu" not in copy["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("release", RELEASES)
def test_the_release_jobs_swap_versions_on_every_triton_pod(release):
    """Each Job writes the claim (its one writable mount besides the loader's), runs the release
    CLI from the gateway image with arguments it parses, reaches every Triton pod through the
    headless Service, and drains at least as long as a gateway request may take."""
    import shlex

    from release.__main__ import parser

    docs = rendered(release)
    ((name, spec),) = pod_specs(docs).items()
    assert writable_claim_mounts(docs) == {name: ["/models"]}
    (c,) = spec["containers"]
    gateway = container(rendered("gpu"), "vit-gateway", "gateway")
    assert c["image"] == gateway["image"]  # holds release/ (Dockerfile)
    assert "COPY release/ release/" in (ROOT / "Dockerfile").read_text()
    script = c["command"][-1].replace("\\\n", " ")
    words = shlex.split(script[script.index("python -m release") :].split("&&")[0])
    assert words[:3] == ["python", "-m", "release"]
    args = parser().parse_args([w.replace("$TARGET", "gpu") for w in words[3:]])
    assert args.every_address and str(args.repository) == "/models"
    host, port = args.triton.split(":")
    pods = find(rendered("gpu"), "Service", host)
    assert pods["spec"]["clusterIP"] == "None"
    triton = find(rendered("gpu"), "Deployment", "vit-triton")["spec"]["template"]["metadata"]
    assert pods["spec"]["selector"].items() <= triton["labels"].items()
    assert [p["port"] for p in pods["spec"]["ports"]] == [int(port)]
    timeout = float(next(e["value"] for e in gateway["env"] if e["name"] == "REQUEST_TIMEOUT_S"))
    assert args.drain_s >= timeout + 2
    assert {e["name"]: e["value"] for e in c["env"]}["TARGET"] == "gpu"
    # Triton takes load requests in both overlays (cpu: the launcher's own flags)
    assert (
        "--model-control-mode=explicit"
        in container(rendered("gpu"), "vit-triton", "triton")["args"]
    )
    assert "--model-control-mode=explicit" in LocalTriton(Path("/models/cpu")).command()


def test_the_gpu_loader_builds_engines_with_the_engines_image():
    docs = rendered("loader/gpu")
    (c,) = find(docs, "Job", "vit-model-loader")["spec"]["template"]["spec"]["containers"]
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert c["image"] == services["engines"]["image"]  # vit-engines:<project version>
    assert (
        c["command"][-1]
        .rstrip()
        .endswith("exec python3 -m build.gpu_host.tensorrt_engine --repository /models")
    )
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_gpu_product_helper_prints_gpu_feature_discoverys_label(tmp_path, capsys):
    """GFD's nvidia.com/gpu.product: the NVML name, each space replaced by '-'."""
    assert gpu_product.node_label("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert gpu_product.node_label("Tesla V100-SXM2-16GB") == "Tesla-V100-SXM2-16GB"
    assert gpu_product.node_label("NVIDIA A100-SXM4-40GB") == "NVIDIA-A100-SXM4-40GB"
    with pytest.raises(gpu_product.GpuProductError):
        gpu_product.node_label("GPU (engineering sample)")  # not a label value
    repository = tmp_path / "model_repository"
    repository.mkdir()
    assert gpu_product.main(["--repository", str(repository)]) == 2  # no engines yet
    assert capsys.readouterr().err.startswith("error: ")
    engines = {"gpu": {"name": "NVIDIA L40S", "compute_capability": "8.9"}}
    (repository / "build_report.json").write_text(json.dumps({"engines": engines}))
    env = tmp_path / "gpu-product.env"
    env.write_text(GPU_PRODUCT_ENV.read_text())
    assert gpu_product.main(["--repository", str(repository), "--write", str(env)]) == 0
    assert capsys.readouterr().out == "NVIDIA-L40S\n"
    lines = env.read_text().splitlines()
    assert lines[-1] == "GPU_PRODUCT=NVIDIA-L40S" and sum("GPU_PRODUCT=" in x for x in lines) == 1
    assert [x for x in lines if x.startswith("#")] == [
        x for x in GPU_PRODUCT_ENV.read_text().splitlines() if x.startswith("#")
    ]
