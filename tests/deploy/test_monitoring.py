"""Prometheus config, alert rules (promtool, unit tests), the Grafana dashboard, and the
prometheus-adapter rule: every query parses (Prometheus' own parser through promtool, and
promql-parser), and every metric they name is exported by the live gateway and the local Triton."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.deploy.monitoring_files import (
    DASHBOARD,
    DATASOURCES,
    GPU_ONLY_METRICS,
    MONITORING,
    PROMETHEUS_SERIES,
    RULES,
    adapter_queries,
    all_queries,
    dashboard,
    dashboard_queries,
    exported_names,
    panels,
    recorded_names,
    rule_queries,
)
from tests.helpers import free_port, png_bytes

PROMTOOL_VERSION = "2.42.0"  # scripts/system-deps.sh installs it


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: run scripts/system-deps.sh (make install does)")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_promtool_is_the_pinned_version():
    assert f"version {PROMTOOL_VERSION}" in promtool("--version").stdout


def test_prometheus_config_is_valid():
    proc = promtool("check", "config", MONITORING / "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_are_valid():
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_their_unit_tests():
    """p99 over SLO for 5 min, error ratio, Triton down / not ready, queue rejections: each
    fires on its scenario, not before its `for`, and not on a neighbouring healthy series."""
    proc = promtool("test", "rules", "vit-alerts.test.yml", cwd=MONITORING / "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
              if "alert" in r}  # fmt: skip
    tests = yaml.safe_load((MONITORING / "tests" / "vit-alerts.test.yml").read_text())["tests"]
    fired = {
        t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t["exp_alerts"]
    }
    assert alerts == fired


def test_every_query_parses_with_prometheus_own_parser(tmp_path):
    """promtool parses each dashboard, rule and adapter query as a recording rule (Grafana's
    $__rate_interval and the adapter's <<.LabelMatchers>> substituted)."""
    queries = all_queries()
    records = [{"record": f"query:{i}", "expr": q.promql()} for i, q in enumerate(queries)]
    rules = {"groups": [{"name": "every-query", "rules": records}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_dashboard_is_well_formed():
    dash = dashboard()
    assert dash["uid"] == "vit-service" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid


def test_dashboard_covers_what_operators_watch():
    exprs = {q.where: q.expr for q in dashboard_queries()}
    text = "\n".join(exprs.values())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, endpoint) " in text
    named = set().union(*(q.metric_names() for q in dashboard_queries()))
    required = {
        "gateway_requests_total",  # request rate, errors by status
        "gateway_request_duration_seconds_bucket",  # p50/p95/p99 per endpoint
        "gateway_triton_errors_total",  # errors by Triton error kind
        "gateway_requests_in_flight",
        "gateway_images_per_request_bucket",
        "gateway_stage_duration_seconds_bucket",
        "nv_inference_queue_duration_us",  # queue vs compute per model
        "nv_inference_compute_infer_duration_us",
        "nv_inference_count",  # batch size = inferences / executions
        "nv_inference_exec_count",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
    }
    assert required <= named, required - named
    titles = " ".join(p["title"] for p in panels()).lower()
    for word in ("rate", "p99", "status", "kind", "in flight", "images per request", "stage",
                 "queue vs compute", "batch size", "gpu utilisation", "gpu memory"):  # fmt: skip
        assert word in titles, word


@pytest.fixture(scope="module")
def live_metrics(gateway, triton) -> tuple[set[str], set[str]]:
    """Sample names on the live gateway (after a classify and an explain, so every histogram has
    observations) and on the local Triton."""
    image = png_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    with gateway.client() as http:
        for path in ("/classify", "/explain"):
            r = http.post(path, files=[("file", ("a.png", image, "image/png"))])
            assert r.status_code == 200, r.text
        gateway_text = http.get("/metrics").text
    triton_text = httpx.get(f"http://127.0.0.1:{triton.ports.metrics}/metrics", timeout=10).text
    return exported_names(gateway_text), exported_names(triton_text)


def test_every_metric_named_is_exported_by_the_live_services(live_metrics):
    gateway_names, triton_names = live_metrics
    known = gateway_names | triton_names | recorded_names() | PROMETHEUS_SERIES | GPU_ONLY_METRICS
    named = [(q.where, name) for q in all_queries() for name in q.metric_names()]
    missing = {f"{where}: {name}" for where, name in named if name not in known}
    assert not missing, sorted(missing)


def test_gpu_only_allow_list_is_only_gpu_metrics(live_metrics):
    """The allow-list can hide nothing else: its names are Triton's nv_gpu_* family and really
    absent without a GPU, and the dashboard uses each of them."""
    _gateway_names, triton_names = live_metrics
    assert all(name.startswith("nv_gpu_") for name in GPU_ONLY_METRICS)
    assert not GPU_ONLY_METRICS & triton_names
    used = set().union(*(q.metric_names() for q in all_queries()))
    assert used >= GPU_ONLY_METRICS


def test_dashboard_file_is_what_grafana_provisioning_loads():
    provider = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "dashboards" / "vit.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD.parent.name == "dashboards"


@pytest.fixture(scope="module")
def prometheus(gateway, triton, tmp_path_factory) -> Iterator[str]:
    """A real Prometheus (Debian's 2.42 server) scraping the live gateway and Triton every
    second, with the alert rules loaded; the scrape jobs are monitoring/prometheus.yml's, with
    static targets in place of compose's DNS names."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run scripts/system-deps.sh (make install does)")
    work = tmp_path_factory.mktemp("prometheus")
    compose_config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {
        "gateway": gateway.url.removeprefix("http://"),
        "triton": f"127.0.0.1:{triton.ports.metrics}",
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": job["job_name"],
                "metrics_path": job["metrics_path"],
                "static_configs": [{"targets": [targets[job["job_name"]]]}],
            }
            for job in compose_config["scrape_configs"]
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        image = png_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
        with gateway.client() as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # Traffic across several scrapes: successes on both endpoints and one 4xx.
                for path in ("/classify", "/explain"):
                    assert http.post(path, files=[("file", ("a.png", image))]).is_success
                http.post("/classify", files=[("file", ("a.png", b"not an image"))])
                assert process.poll() is None, (work / "prometheus.log").read_text()[-3000:]
                try:
                    up = query(url, "sum(up)")
                    if up and float(up[0]["value"][1]) == 2 and scraped_for(url, 4):
                        break
                except httpx.TransportError:
                    pass  # Prometheus is still starting: not listening yet
                time.sleep(0.5)
            else:
                pytest.fail(f"Prometheus did not scrape both targets: {url}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(url: str, promql: str) -> list[dict]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    if reply.status_code == 503:  # still starting
        return []
    body = reply.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def scraped_for(url: str, seconds: int) -> bool:
    result = query(url, f'count_over_time(up{{job="triton"}}[{seconds * 2}s])')
    return bool(result) and float(result[0]["value"][1]) >= seconds


def test_every_dashboard_query_returns_series_from_live_scrapes(prometheus):
    """Prometheus evaluates each panel's query on real scrapes: a wrong label, a missing `le` or a
    metric renamed in code leaves a panel empty, which parsing alone cannot see. GPU-only
    metrics are the exception, and must be empty here."""
    empty = []
    for q in dashboard_queries():
        result = query(prometheus, q.expr.replace("$__rate_interval", "30s"))
        gpu_only = bool(q.metric_names() & GPU_ONLY_METRICS)
        if gpu_only:
            assert not result, q.where
        elif not result:
            empty.append(q.where)
    assert not empty, empty


def test_autoscaling_metric_has_a_value_per_triton_pod(prometheus):
    (q,) = [q for q in adapter_queries() if "metricsQuery" in q.where]
    promql = q.expr.replace("<<.LabelMatchers>>", 'job="triton"').replace(
        "<<.GroupBy>>", "instance"
    )
    (sample,) = query(prometheus, promql)
    assert float(sample["value"][1]) >= 0


def test_alert_rules_load_and_evaluate_in_prometheus(prometheus):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        time.sleep(0.5)
    names = {r["name"] for r in rules}
    assert names == {q.where.removeprefix("rules: ") for q in rule_queries()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # A healthy service under light load (one 4xx, no 5xx): no alert condition holds.
    alerts = [r for r in rules if r["type"] == "alerting"]
    assert [r["state"] for r in alerts] == ["inactive"] * len(alerts), alerts
