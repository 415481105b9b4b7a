#!/usr/bin/env bash
# Creates NVIDIA Model Optimizer's own environment for the GPU precision variants:
#   bash scripts/modelopt-env.sh [VENV=.venv-modelopt] [MAIN_VENV=.venv]
# Its pins clash with the CPU stack (requirements/modelopt.txt says how); it borrows torch from
# the main environment through a .pth file appended after its own site-packages, so its own
# onnx/onnxruntime/numpy always win.
set -euo pipefail
venv=${1:-.venv-modelopt}
main=${2:-.venv}
python=${PYTHON:-python3.11}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check pip==26.3
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  -r requirements/modelopt.txt
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
main_site=$("$main/bin/python" -c "$purelib")
echo "$main_site" > "$("$venv/bin/python" -c "$purelib")/zz_torch_from_main_venv.pth"
"$venv/bin/python" -c "import modelopt.onnx.autocast, modelopt.onnx.quantization" 2>/dev/null
touch "$venv/.installed"
