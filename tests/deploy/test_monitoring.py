"""Prometheus config, alert rules (promtool, unit tests), the Grafana dashboard, and the
prometheus-adapter rule: every query parses (Prometheus' own parser through promtool, and
promql-parser), and every metric they name is exported by the live gateway and the local Triton."""

from __future__ import annotations

import shutil
import subprocess
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
    all_queries,
    dashboard,
    dashboard_queries,
    exported_names,
    panels,
    recorded_names,
)
from tests.helpers import png_bytes

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
