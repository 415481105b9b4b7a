"""Renders the Kustomize overlays (kubectl kustomize) into lists of manifests."""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("gpu", "cpu")
# The loader Jobs (the only writable mount of the claim): copy only, and copy + engines on a GPU.
LOADERS = ("loader/copy", "loader/gpu")
# The release Jobs (make publish / make rollback on the cluster, docs/versions.md).
RELEASES = ("release/publish", "release/rollback")


@functools.cache
def rendered_text(overlay: str) -> str:
    """An overlay ("gpu", "cpu") or another kustomization under deploy/kubernetes ("loader/gpu")."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with kustomize) not found")
    path = KUBERNETES / (overlay if "/" in overlay else f"overlays/{overlay}")
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def rendered(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """{kind/name: pod spec} of every workload (Deployment, Job, Pod) in the documents."""
    specs = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            specs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            specs[f"Pod/{doc['metadata']['name']}"] = doc["spec"]
    return specs


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(docs: list[dict], deployment: str, name: str) -> dict:
    spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)
