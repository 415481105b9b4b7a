"""FP16 and INT8 variants of the fp32 graphs. cpu: written in the build's environment (.venv) for
OpenVINO; gpu: NVIDIA Model Optimizer, run by modelopt_env as a subprocess in its own environment
(.venv-modelopt, scripts/modelopt-env.sh), so nothing here may import torch or the CPU stack."""
