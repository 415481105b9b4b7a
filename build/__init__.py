"""Offline build stage: timm ViT -> verified ONNX (classify + explain) -> FP16/INT8 -> Triton
model repository.

Run it with `make repo` (or `python -m build.cli`); this package name shadows PyPA's `build`, so the
project never asks users to type `python -m build`.
"""
