"""Reads the monitoring files (Prometheus rules, Grafana dashboard, prometheus-adapter rule) and
the PromQL in them; shared by the monitoring and single-source-of-truth tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

from tests.helpers import ROOT

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "rules" / "vit-alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "vit-service.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
ADAPTER_VALUES = ROOT / "deploy" / "kubernetes" / "prometheus-adapter" / "values.yaml"

# Metrics Triton exports only where it sees a GPU (tritonserver's GPU metrics through DCGM/NVML):
# the local and cpu-profile Triton never has them, so the live check cannot see them. Nothing
# else may be missing from a live /metrics.
GPU_ONLY_METRICS = frozenset(
    {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
)
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})

# Grafana and prometheus-adapter placeholders -> something PromQL parsers accept.
PLACEHOLDERS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "<<.LabelMatchers>>": 'namespace="ns",pod="p"',
    "<<.GroupBy>>": "namespace, pod",
    "<<.Series>>": "placeholder_series",
}


@dataclass(frozen=True)
class Query:
    where: str
    expr: str

    def promql(self) -> str:
        text = self.expr
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        return text

    def metric_names(self) -> set[str]:
        names: set[str] = set()

        def visit(node: object) -> bool:
            if isinstance(node, promql_parser.VectorSelector):
                name = node.name or next(
                    (m.value for m in node.matchers.matchers if m.name == "__name__"), None
                )
                if name:
                    names.add(name)
            return True

        promql_parser.walk(promql_parser.parse(self.promql()), visit)
        return names


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def rule_queries() -> list[Query]:
    return [
        Query(f"rules: {r.get('alert') or r.get('record')}", r["expr"])
        for g in rule_groups()
        for r in g["rules"]
    ]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[Query]:
    return [
        Query(f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in panels()
        for t in p["targets"]
    ]


def adapter_queries() -> list[Query]:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    queries = []
    for rule in rules:
        queries.append(Query(f"adapter seriesQuery {rule['name']['as']}", rule["seriesQuery"]))
        queries.append(Query(f"adapter metricsQuery {rule['name']['as']}", rule["metricsQuery"]))
    return queries


def all_queries() -> list[Query]:
    return rule_queries() + dashboard_queries() + adapter_queries()


def exported_names(exposition: str) -> set[str]:
    """Sample names in a Prometheus text exposition (histograms give _bucket/_sum/_count)."""
    return {
        re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def read(path: Path) -> str:
    return path.read_text()


PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "monitoring.yaml"
_PROMETHEUS_RULE_HEAD = """\
# For the Prometheus Operator (kube-prometheus-stack): scrape both Services, and load the alert
# rules. The rule groups are a copy of monitoring/rules/vit-alerts.yml (compose), written by
# `python -m tests.deploy.monitoring_files`; a test fails if they differ. `job` is set to the
# names compose uses, so the rules and the dashboard work unchanged.
# Without the operator, the pod annotations prometheus.io/{scrape,port,path} serve the same end.
"""


def prometheus_rule_manifest() -> str:
    """deploy/kubernetes/base/monitoring.yaml: ServiceMonitors + PrometheusRule (rules copied)."""

    def monitor(name: str, port: str, job: str) -> dict:
        return {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "endpoints": [
                    {
                        "port": port,
                        "path": "/metrics",
                        "interval": "15s",
                        "relabelings": [{"targetLabel": "job", "replacement": job}],
                    }
                ],
            },
        }

    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "vit-service"},
        "spec": {"groups": rule_groups()},
    }
    docs = [monitor("vit-triton", "metrics", "triton"), monitor("vit-gateway", "http", "gateway")]
    return _PROMETHEUS_RULE_HEAD + "---\n".join(
        yaml.safe_dump(d, sort_keys=False, width=100) for d in [*docs, rule]
    )


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(prometheus_rule_manifest())
    print(f"wrote {PROMETHEUS_RULE}")
