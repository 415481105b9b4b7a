"""One source of truth: ports, model names, repository paths, metric names, image versions and
keepalive settings agree between the build stage, the gateway's settings, the local launcher,
docker-compose.yml, the Dockerfiles, Kubernetes, Prometheus, Grafana and the docs (README.md,
docs/). Each test names the owner of a value (build/, service/, local_triton/) and checks every
copy of it."""

from __future__ import annotations

import argparse
import re
import subprocess
import tomllib

import pytest
import yaml
from prometheus_client import REGISTRY

from build.names import PREPROCESS_MODEL, jpeg_model_name
from build.repository.writer import (
    ATTRIBUTION_PRECISIONS,
    ATTRIBUTION_TASK,
    EXPLAIN_RESOURCE,
    PRECISIONS,
    RATE_LIMIT_RESOURCE,
    TARGETS,
    TASKS,
    model_name,
)
from local_triton.launcher import (
    EXECUTION_SLOT,
    EXPLAIN_SLOT,
    GrpcKeepalive,
    OpenTelemetryTrace,
    Ports,
    RateLimit,
    ResponseCache,
    add_server_arguments,
    opentelemetry_trace,
)
from service import gunicorn_conf, tracing
from service.config import Settings
from service.triton import KEEPALIVE_TIME_MS, channel_args
from tests.deploy.kube import KUBERNETES, container, find, rendered
from tests.deploy.monitoring_files import all_queries, dashboard, panels, recorded_names
from tests.helpers import ROOT

DOCKERFILES = {
    "gateway": ROOT / "Dockerfile",
    "triton-cpu": ROOT / "deploy" / "docker" / "triton-cpu.Dockerfile",
    "loadtest": ROOT / "deploy" / "docker" / "loadtest.Dockerfile",
}
ENGINES_DOCKERFILE = ROOT / "deploy" / "docker" / "engines.Dockerfile"  # FROM TensorRT, not python
# Every document that states versions: the README and docs/ (docs/*.md, docs/*/*.md).
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GATEWAY_PORT = int(gunicorn_conf.bind.rsplit(":", 1)[1])


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def container_port(mapping: str) -> int:
    return int(mapping.rsplit(":", 1)[1])


def named_ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def kustomize_image(overlay: str, name: str) -> str:
    path = KUBERNETES / ("base" if overlay == "base" else f"overlays/{overlay}")
    images = yaml.safe_load((path / "kustomization.yaml").read_text())["images"]
    image = next(i for i in images if i["name"] == name)
    return f"{image.get('newName', name)}:{image['newTag']}"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def scrape_ports() -> dict[str, int]:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    return {j["job_name"]: j["dns_sd_configs"][0]["port"] for j in config["scrape_configs"]}


# --- ports ------------------------------------------------------------------------------------


def test_triton_ports_agree_everywhere():
    http, grpc, metrics = Ports().http, Ports().grpc, Ports().metrics  # the launcher's defaults
    assert {container_port(p) for p in compose()["triton"]["ports"]} == {http, grpc, metrics}
    healthcheck = " ".join(compose()["triton"]["healthcheck"]["test"])
    assert f"localhost:{http}/v2/health/ready" in healthcheck
    for overlay in ("gpu", "cpu"):
        docs = rendered(overlay)
        triton = container(docs, "vit-triton", "triton")
        assert named_ports(triton) == {"http": http, "grpc": grpc, "metrics": metrics}
        annotations = find(docs, "Deployment", "vit-triton")["spec"]["template"]["metadata"]
        assert annotations["annotations"]["prometheus.io/port"] == str(metrics)
        gateway = container(docs, "vit-gateway", "gateway")
        assert env(gateway)["TRITON_URL"] == f"vit-triton:{grpc}"
    cpu_image = DOCKERFILES["triton-cpu"].read_text()
    for var, port in (("HTTP", http), ("GRPC", grpc), ("METRICS", metrics)):
        assert f"TRITON_{var}_PORT={port}" in cpu_image
    assert f"EXPOSE {http} {grpc} {metrics}" in cpu_image
    assert f"127.0.0.1:{http}/v2/health/ready" in cpu_image
    assert scrape_ports()["triton"] == metrics
    assert compose()["gateway"]["environment"]["TRITON_URL"] == f"triton:{grpc}"
    assert Settings().triton_url.endswith(f":{grpc}")
    assert f"triton:{grpc}" in compose()["perf-analyzer"]["command"]


def test_gateway_port_agrees_everywhere():
    port = GATEWAY_PORT  # service/gunicorn_conf.py binds it
    gateway_image = DOCKERFILES["gateway"].read_text()
    assert f"EXPOSE {port}" in gateway_image and f"127.0.0.1:{port}/healthz" in gateway_image
    for name in ("gateway", "gateway-cpu"):
        assert [container_port(p) for p in compose()[name]["ports"]] == [port]
    for overlay in ("gpu", "cpu"):
        docs = rendered(overlay)
        assert named_ports(container(docs, "vit-gateway", "gateway")) == {"http": port}
        deployment = find(docs, "Deployment", "vit-gateway")
        assert deployment["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/port"
        ] == str(port)
    assert scrape_ports()["gateway"] == port
    assert f"http://gateway:{port}" in compose()["loadtest"]["command"]
    assert f"http://gateway:{port}" in DOCKERFILES["loadtest"].read_text()


# --- model names --------------------------------------------------------------------------------


def test_model_names_agree_with_the_build_stage():
    names = {model_name(t, p) for t in TASKS for p in PRECISIONS}
    names |= {model_name(ATTRIBUTION_TASK, p) for p in ATTRIBUTION_PRECISIONS}
    tracked = subprocess.run(
        ["git", "ls-files", "model_repository", "deploy/triton/gpu-jpeg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    for target in TARGETS:
        configs = {p.split("/")[2] for p in tracked if p.startswith(f"model_repository/{target}/")}
        assert configs == names, target
    # the gpu target's JPEG ensembles (make repo --preprocess dali) are reviewed code too
    jpeg = {p.split("/")[3] for p in tracked if p.startswith("deploy/triton/gpu-jpeg/")}
    assert jpeg - {"README.md"} == {jpeg_model_name(n) for n in names} | {PREPROCESS_MODEL}
    assert all(n.startswith(f"{Settings().model_prefix}_") for n in names)
    precisions = {
        "compose gateway": compose()["gateway"]["environment"]["DEFAULT_PRECISION"],
        "compose gateway-cpu": compose()["gateway-cpu"]["environment"].get(
            "DEFAULT_PRECISION", Settings().default_precision
        ),
        "kubernetes gpu": env(container(rendered("gpu"), "vit-gateway", "gateway"))[
            "DEFAULT_PRECISION"
        ],
        "kubernetes cpu": env(container(rendered("cpu"), "vit-gateway", "gateway"))[
            "DEFAULT_PRECISION"
        ],
    }
    assert set(precisions.values()) <= set(PRECISIONS), precisions
    assert precisions["compose gateway"] == precisions["kubernetes gpu"]
    assert precisions["compose gateway-cpu"] == precisions["kubernetes cpu"]
    perf_model = re.fullmatch(r"\$\{PERF_MODEL:-(\w+)\}", compose()["perf-analyzer"]["command"][2])
    assert perf_model and perf_model[1] in names


# --- repository paths ---------------------------------------------------------------------------


def mounted(volumes: list[str], path: str) -> str:
    """The checkout path behind a container path, from compose bind mounts."""
    for volume in volumes:
        source, target = volume.split(":")[:2]
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source.removeprefix("./") + path[len(target) :]
    raise AssertionError(f"{path} is not mounted")


def claim_mount(c: dict) -> str:
    return next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "model-repository")


def test_repository_paths_agree():
    assert set(TARGETS) == {"cpu", "gpu"}
    # GPU Triton serves model_repository/gpu: compose bind mount, Kubernetes claim at /models.
    triton = compose()["triton"]
    flag = next(a for a in triton["command"] if a.startswith("--model-repository="))
    assert mounted(triton["volumes"], flag.split("=", 1)[1]) == "model_repository/gpu"
    gpu = container(rendered("gpu"), "vit-triton", "triton")
    flag = next(a for a in gpu["args"] if a.startswith("--model-repository="))
    claim_root = claim_mount(gpu)
    assert flag.split("=", 1)[1] == f"{claim_root}/gpu"
    # CPU Triton serves model_repository/cpu: the image's CMD, compose, Kubernetes, make serve.
    cpu_image = DOCKERFILES["triton-cpu"].read_text()
    cmd = re.search(r'^CMD \[.*"--repository", "([^"]+)"\]', cpu_image, re.M)
    assert mounted(compose()["triton-cpu"]["volumes"], cmd[1]) == "model_repository/cpu"
    cpu = container(rendered("cpu"), "vit-triton", "triton")
    claim_root = claim_mount(cpu)
    assert cpu["args"][0] == f"--repository={claim_root}/cpu" == f"--repository={cmd[1]}"
    parser = argparse.ArgumentParser()  # make serve / make triton: the launcher's default
    add_server_arguments(parser)
    assert parser.parse_args([]).repository.as_posix() == "model_repository/cpu"
    # The gateway reads the build's model.json at MODEL_METADATA.
    metadata = re.search(r"MODEL_METADATA=(\S+)", DOCKERFILES["gateway"].read_text())[1]
    for name in ("gateway", "gateway-cpu"):
        service = compose()[name]
        assert service["environment"]["MODEL_METADATA"] == metadata
        assert mounted(service["volumes"], metadata) == "model_repository/model.json"
    for overlay in ("gpu", "cpu"):
        gateway = container(rendered(overlay), "vit-gateway", "gateway")
        assert env(gateway)["MODEL_METADATA"] == metadata
        mount = next(m for m in gateway["volumeMounts"] if m["name"] == "model-repository")
        assert mount["mountPath"] == metadata and mount["subPath"] == "model.json"
    assert Settings().model_metadata.as_posix() == "model_repository/model.json"


# --- metric names -------------------------------------------------------------------------------


def gateway_metric_names() -> set[str]:
    """Sample names service/metrics.py can export, from its metric definitions."""
    import service.metrics  # noqa: F401  (registers the metrics)

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("gateway_")
        for suffix in suffixes[family.type]
    }


def test_metric_names_in_rules_dashboard_and_adapter_are_defined():
    """Offline half of the check (the live half is test_monitoring.py): every gateway_* name in
    a query is defined in service/metrics.py, every other one is Triton's nv_* or a recording."""
    defined = gateway_metric_names()
    for query in all_queries():
        for name in query.metric_names():
            if name.startswith("gateway_"):
                assert name in defined, f"{query.where}: {name}"
            else:
                assert name.startswith("nv_") or name in recorded_names() | {"up"}, query.where


def test_scrape_jobs_are_the_jobs_the_rules_name():
    jobs = set(scrape_ports())
    for query in all_queries():
        for job in re.findall(r'job="(\w+)"', query.expr):
            assert job in jobs, query.where


# --- image versions -----------------------------------------------------------------------------


def test_image_versions_agree():
    triton = compose()["triton"]["image"]
    assert kustomize_image("gpu", "triton") == triton
    release = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", triton)[1]
    engines_base = re.search(r"^FROM (\S+)", ENGINES_DOCKERFILE.read_text(), re.M)[1]
    assert engines_base == f"nvcr.io/nvidia/tensorrt:{release}-py3"
    releases = {
        doc.relative_to(ROOT).as_posix(): set(
            re.findall(r"nvcr\.io/nvidia/\w+:(\d\d\.\d\d)", doc.read_text())
        )
        for doc in DOCS
    }
    for doc, named in releases.items():
        assert named <= {release}, f"{doc} names another YY.MM: {named}"
    for doc in ("docs/gpu.md", "docs/deploy.md"):  # the GPU host and Kubernetes steps
        assert releases[doc] == {release}, doc
    assert compose()["perf-analyzer"]["image"] == f"nvcr.io/nvidia/tritonserver:{release}-py3-sdk"
    bases = {n: re.search(r"^FROM (\S+)", p.read_text(), re.M)[1] for n, p in DOCKERFILES.items()}
    assert len(set(bases.values())) == 1, bases
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r"python:(3\.\d+)\.", bases["gateway"])[1]
    assert f">={minor}" in python
    version = project_version()
    assert compose()["triton-cpu"]["image"] == kustomize_image("cpu", "triton")
    assert compose()["triton-cpu"]["image"] == f"vit-triton-cpu:{version}"
    assert compose()["gateway-cpu"]["image"] == f"vit-gateway:{version}"
    assert kustomize_image("base", "vit-gateway") == f"vit-gateway:{version}"
    assert compose()["loadtest"]["image"] == f"vit-loadtest:{version}"
    assert compose()["engines"]["image"] == f"vit-engines:{version}"
    assert compose()["gpu-tests"]["image"] == f"vit-engines-tests:{version}"


def test_docs_state_the_versions_that_must_match():
    """Each image is named where its steps are: the GPU host (docs/gpu.md), Kubernetes' versions
    that must match (docs/deploy.md), monitoring (docs/operations.md)."""
    gpu, deploy, operations = (
        (ROOT / "docs" / name).read_text() for name in ("gpu.md", "deploy.md", "operations.md")
    )
    engines_base = re.search(r"^FROM (\S+)", ENGINES_DOCKERFILE.read_text(), re.M)[1]
    for image in (compose()["triton"]["image"], compose()["engines"]["image"], engines_base):
        assert image in gpu, image
    for image in (compose()["triton"]["image"], engines_base):
        assert image in deploy, image
    for image in (compose()["prometheus"]["image"], compose()["grafana"]["image"]):
        assert image in operations, image


# --- keepalive and shutdown ---------------------------------------------------------------------


def test_keepalive_agrees_between_client_and_every_triton():
    server = GrpcKeepalive()
    args = dict(channel_args())
    assert args["grpc.keepalive_time_ms"] == KEEPALIVE_TIME_MS
    assert args["grpc.keepalive_permit_without_calls"] == 1
    # The client's interval must not be shorter than the server's minimum, or pings are strikes.
    assert server.min_recv_ping_interval_ms <= KEEPALIVE_TIME_MS
    assert "--grpc-keepalive-permit-without-calls=1" in server.flags()
    assert set(server.flags()) <= set(compose()["triton"]["command"])
    assert set(server.flags()) <= set(container(rendered("gpu"), "vit-triton", "triton")["args"])


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_shutdown_grace_outlasts_the_servers_own(overlay):
    triton = compose()["triton"]
    exit_timeout = int(
        next(a for a in triton["command"] if a.startswith("--exit-timeout-secs=")).split("=")[1]
    )
    assert int(triton["stop_grace_period"].rstrip("s")) > exit_timeout
    spec = find(rendered(overlay), "Deployment", "vit-triton")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > exit_timeout


# --- tracing --------------------------------------------------------------------------------------

OFF_BY_DEFAULT = (
    "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"  # compose: empty unless the shell or .env sets it
)


def test_tracing_is_off_by_default_and_one_setting_turns_it_on():
    """compose passes the collector's address to both gateways and the cpu Triton's launcher;
    Kubernetes gives them the vit-tracing ConfigMap (base/tracing.env), empty: tracing off."""
    services = compose()
    for name in ("gateway", "gateway-cpu", "triton-cpu"):
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == OFF_BY_DEFAULT
    assert tracing.exporters_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) == []
    for overlay in ("gpu", "cpu"):
        docs = rendered(overlay)
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        assert config["metadata"]["name"].startswith("vit-tracing") and not config.get("data")
        reads = [{"configMapRef": {"name": config["metadata"]["name"]}}]
        assert container(docs, "vit-gateway", "gateway")["envFrom"] == reads
        if overlay == "cpu":
            assert container(docs, "vit-triton", "triton")["envFrom"] == reads
    # Uncommented, tracing.env's example turns on the gateway's spans and the launcher's Triton.
    example = dict(
        line.removeprefix("# ").split("=", 1)
        for line in (KUBERNETES / "base" / "tracing.env").read_text().splitlines()
        if re.match(r"# OTEL_\w+=", line)
    )
    assert [type(e).__name__ for e in tracing.exporters_from_env(example)] == ["OTLPSpanExporter"]
    triton = opentelemetry_trace(example)
    assert triton is not None and triton.url.endswith(":4318/v1/traces")


def test_gpu_tritons_carry_the_launchers_trace_flags_off():
    """The NGC Triton reads no OTEL_* variable: compose's and the gpu overlay's carry the flags the
    launcher gives the cpu one, at level OFF (nothing traced) until switched on."""
    command = compose()["triton"]["command"]
    compose_trace = OpenTelemetryTrace(
        "${TRITON_TRACE_URL:-http://localhost:4318/v1/traces}", level="${TRITON_TRACE_LEVEL:-OFF}"
    )
    assert set(compose_trace.flags()) <= set(command)
    args = container(rendered("gpu"), "vit-triton", "triton")["args"]
    assert set(OpenTelemetryTrace.FIXED) <= set(args)
    assert [a for a in args if a.startswith("--trace-config=level=")] == [
        "--trace-config=level=OFF"
    ]


def test_trace_links_search_the_gateways_traces():
    """The dashboard's links to the tracing UI (a textbox variable) name the gateway's service."""
    dash = dashboard()
    (variable,) = [v for v in dash["templating"]["list"] if v["name"] == "tracing_ui"]
    assert variable["type"] == "textbox" and variable["query"].startswith("http")
    urls = [link["url"] for link in dash["links"]]
    urls += [link["url"] for panel in panels() for link in panel.get("links", [])]
    assert len(urls) == 2
    for url in urls:
        assert url.startswith("${tracing_ui}/search?"), url
        assert f"service={tracing.SERVICE_NAME}&" in url, url


# --- sharing one GPU: rate limiter and response cache ------------------------------------------


def test_rate_limit_and_response_cache_flags_agree_with_the_launcher_and_the_configs():
    """The launcher owns both (RateLimit reads the resources from the model configs; make serve
    and the cpu image run it); compose and the gpu overlay give the NGC Triton the same flags,
    for the reviewed gpu configs: two execution slots per GPU, one of them for /explain and
    attribution, the same cache size."""
    assert (EXECUTION_SLOT, EXPLAIN_SLOT) == (RATE_LIMIT_RESOURCE, EXPLAIN_RESOURCE)
    gpu = RateLimit.for_repository(ROOT / "model_repository" / "gpu")
    assert gpu is not None and gpu.resources == ((EXECUTION_SLOT, 2), (EXPLAIN_SLOT, 1))
    flags = {*gpu.flags(), *ResponseCache().flags()}  # no --cache-directory: the image's default
    assert flags <= set(compose()["triton"]["command"])
    assert flags <= set(container(rendered("gpu"), "vit-triton", "triton")["args"])
    # the reviewed cpu configs (2 instances per model): as many slots as one model's instances
    cpu = RateLimit.for_repository(ROOT / "model_repository" / "cpu")
    assert cpu is not None and cpu.resources == ((EXECUTION_SLOT, 2), (EXPLAIN_SLOT, 1))
    args = argparse.ArgumentParser()
    add_server_arguments(args)
    defaults = args.parse_args([])
    assert defaults.response_cache_size == ResponseCache().size_bytes
    assert defaults.rate_limit == "auto"
