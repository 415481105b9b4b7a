# The gateway image: FastAPI + tritonclient, no torch, no model files (they come from the build
# stage through the model_repository volume). Triton itself runs from NVIDIA's image (compose).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -m pip install pip==26.3 \
    && python -m pip install --group gateway -c requirements/constraints.txt

COPY service/ service/
# make publish / make rollback where the host has no venv (deploy/kubernetes/release Jobs)
COPY release/ release/

# Prometheus multiprocess mode: every uvicorn worker writes its samples here.
RUN useradd --system --uid 10001 --no-create-home gateway \
    && mkdir /tmp/metrics && chown gateway /tmp/metrics
# WEB_CONCURRENCY: uvicorn worker processes under gunicorn (one Triton client and thread pool
# each); gunicorn wipes PROMETHEUS_MULTIPROC_DIR at start and marks dead workers (gunicorn_conf.py).
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    MODEL_METADATA=/models/model.json \
    WEB_CONCURRENCY=2
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "service/gunicorn_conf.py"]
