"""The Kubernetes node label of the GPU model the engines were built on, to pin Triton pods to it.

A TensorRT plan loads only on the GPU model (and TensorRT) that built it. NVIDIA GPU Feature
Discovery labels each GPU node with `nvidia.com/gpu.product`: the NVML device name (what
nvidia-smi prints, and what the engines step records in build_report.json "engines.gpu.name")
with every space replaced by '-' (k8s-device-plugin internal/lm/resource.go productLabel), e.g.
"NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3". (GFD appends "-SHARED" on time-sliced nodes
and "-MIG-<profile>" for MIG devices: engines built on a full GPU match neither.)

  python -m build.gpu_host.gpu_product [--repository model_repository]  # prints the label value
  python -m build.gpu_host.gpu_product \
      --write deploy/kubernetes/components/gpu-product/gpu-product.env
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

LABEL = "nvidia.com/gpu.product"
ENV_KEY = "GPU_PRODUCT"  # the key in deploy/kubernetes/components/gpu-product/gpu-product.env
# A Kubernetes label value: at most 63 characters, alphanumerics with '-', '_', '.' inside.
_VALID = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


class GpuProductError(Exception):
    pass


def node_label(gpu_name: str) -> str:
    """GPU Feature Discovery's nvidia.com/gpu.product value for a GPU of this NVML name."""
    value = gpu_name.strip().replace(" ", "-")
    if not value or len(value) > 63 or not _VALID.fullmatch(value):
        raise GpuProductError(f"{gpu_name!r} gives no valid Kubernetes label value ({value!r})")
    return value


def built_on(repository: Path) -> str:
    """The label value for the GPU the repository's engines were built on (make engines)."""
    report = repository / "build_report.json"
    try:
        name = json.loads(report.read_text())["engines"]["gpu"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GpuProductError(
            f"{report} records no engines: build them first (make engines on the GPU host)"
        ) from exc
    return node_label(name)


def write_env(path: Path, value: str) -> None:
    """Sets GPU_PRODUCT in the env file, keeping its comments."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [line for line in lines if not line.startswith(f"{ENV_KEY}=")]
    path.write_text("\n".join([*kept, f"{ENV_KEY}={value}"]) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--write", type=Path, help="set GPU_PRODUCT in this env file")
    args = parser.parse_args(argv)
    try:
        value = built_on(args.repository)
    except GpuProductError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.write:
        write_env(args.write, value)
    print(value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
