# The project's open-loop load generator (compose `loadtest` profile). Build from the repository root:
#   docker build -f deploy/docker/loadtest.Dockerfile -t vit-loadtest:0.1.0 .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -m pip install pip==26.3 \
    && python -m pip install --group loadtest -c requirements/constraints.txt
COPY loadtest/ loadtest/
# The generator decodes and preprocesses its corpus with the gateway's own modules (pure Python
# over numpy and Pillow, both in the loadtest group).
COPY service/ service/
COPY samples/ samples/
# Runs as root on purpose: it writes its report into the bind-mounted ./loadtest/results.
ENTRYPOINT ["python", "-m", "loadtest"]
CMD ["--url", "http://gateway:8080", "--out", "/results"]
