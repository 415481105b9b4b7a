#!/usr/bin/env bash
# Installs the cpu Triton (the tritonserver binary in the nvidia-pytriton wheel + the runtimes the
# python-backend models call) into one Python, and puts the python backend stub in place.
#   scripts/install-triton-cpu.sh [PYTHON]      (default: python3)
# Run by deploy/docker/triton-cpu.Dockerfile, and by the suite against the project's environment
# (tests/deploy/test_triton_cpu_image.py), so the image's install steps are exercised in CI.
set -euo pipefail
PYTHON="${1:-python3}"
cd "$(dirname "$0")/.."

# The stub embeds libpython3.11 (python:3.11-slim ships it in /usr/local/lib; Debian: libpython3.11).
if ! ldconfig -p 2>/dev/null | grep -q 'libpython3.11.so.1.0'; then
  echo "error: libpython3.11.so.1.0 not found (Debian/Ubuntu: apt-get install libpython3.11)" >&2
  exit 1
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check pip==26.3
"$PYTHON" -m pip install --quiet --disable-pip-version-check --group triton-cpu \
  -c requirements/constraints.txt
# Done at build time: at run time the image's user cannot write into site-packages.
"$PYTHON" -c "from local_triton.launcher import ensure_python_stub, server_root; ensure_python_stub(server_root())"
echo "cpu Triton installed for $("$PYTHON" -c 'import sys; print(sys.executable)')"
