"""Offline build stage: timm ViT -> verified ONNX (classify, explain, attribution) -> FP16/INT8 ->
Triton model repository.

Run it with `make repo` (or `python -m build.cli`); this package name shadows PyPA's `build`, so the
project never asks users to type `python -m build`.

  cli.py        make repo's arguments and exit codes
  pipeline.py   the stages in order: source -> export -> verify -> precision variants -> gates
                -> repository -> staging swap
  names.py      tensor and model names shared by every part (no imports)
  contract.py   model.json: preprocessing, token layout, labels (no torch at import)
  model/        where the model and its calibration/held-out images come from
  graphs/       the exported graphs (preprocessing inside) and their ONNX export
  checks/       parity against PyTorch, variant evaluation, gates, TensorRT parser support list
  precision/    fp16/int8 variants: cpu (OpenVINO) here, gpu (Model Optimizer) in .venv-modelopt
  repository/   the Triton repository: configs, the python model and its runners, DALI ensembles
  gpu_host/     what runs in the TensorRT container (make engines): engines and their checks
  bench/        measurements on a finished build (make bench, make bench-faithfulness)
"""
