# Triton for hosts without a GPU (compose `cpu` profile, deploy/kubernetes/overlays/cpu): the
# tritonserver that the nvidia-pytriton wheel ships (Triton 2.51, python backend only) serving
# model_repository/cpu (OpenVINO/ONNX Runtime inside python-backend models) through the same
# launcher `make serve` uses. Build from the repository root:
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t vit-triton-cpu:0.1.0 .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY scripts/install-triton-cpu.sh scripts/install-triton-cpu.sh
COPY local_triton/ local_triton/
# The same script the test suite runs (tests/deploy/test_triton_cpu_image.py).
RUN bash scripts/install-triton-cpu.sh python \
    && useradd --system --uid 10001 --no-create-home triton

# The model repository is mounted at /models (compose: ./model_repository; Kubernetes: a PVC).
ENV TRITON_ADDRESS=0.0.0.0 \
    TRITON_HTTP_PORT=8000 \
    TRITON_GRPC_PORT=8001 \
    TRITON_METRICS_PORT=8002
USER 10001
EXPOSE 8000 8001 8002
# Loading takes minutes at 224 px on few cores (every batch bucket of every instance is compiled
# and warmed): probes in the start period do not count against it, the first success ends it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=1200s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "local_triton", "--repository", "/models/cpu"]
