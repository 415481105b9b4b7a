# The engines step (compose `engines`, make engines): NVIDIA's TensorRT container with the Python
# packages the engine builder and its checks need (requirements/engines.txt; requirements/dali.txt
# for the JPEG ensembles' check, build/gpu_host/ensemble_check.py) installed at build time, so a
# GPU host runs it without network access (docs/gpu.md "Air-gapped GPU hosts"). The source
# (build/) is in the image for the Kubernetes loader (deploy/kubernetes/loader/gpu); compose mounts
# the checkout's build/ over it, so there a source change needs no rebuild.
# Its YY.MM is the Triton image's: an engine loads only on the TensorRT that built it.
#   docker compose build engines      (or: docker build -f deploy/docker/engines.Dockerfile \
#                                          --target engines -t vit-engines:0.1.0 .)
# Runs as root, as NVIDIA's image does; build/repository/owner.py gives what it writes into the
# repository to the repository's owner.
FROM nvcr.io/nvidia/tensorrt:26.08-py3 AS engines

# The image's own python (no venv): pip may install into it, no cache, no bytecode.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /workspace
COPY requirements/engines.txt requirements/dali.txt /opt/vit/requirements/
RUN python3 -m pip install --no-cache-dir -r /opt/vit/requirements/engines.txt \
        -r /opt/vit/requirements/dali.txt
COPY build/ build/
CMD ["python3", "-m", "build.gpu_host.tensorrt_engine", "--repository", "model_repository"]

# make test-gpu: the gpu-marked tests in the same image, plus pytest and the test helpers' imports
# (compose `gpu-tests` profile; the checkout is mounted at /workspace).
FROM engines AS gpu-tests
COPY requirements/gpu-tests.txt /opt/vit/requirements/gpu-tests.txt
RUN python3 -m pip install --no-cache-dir -r /opt/vit/requirements/gpu-tests.txt
# (TensorRT's and polygraphy's own DeprecationWarnings would be errors under the suite's settings)
CMD ["python3", "-m", "pytest", "-m", "gpu", "-W", "ignore::DeprecationWarning", "-p", "no:cacheprovider", \
     "tests/build_stage/test_tensorrt.py", "tests/build_stage/test_ensemble_check.py"]
