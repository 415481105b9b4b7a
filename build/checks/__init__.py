"""What a build must pass: ONNX Runtime and OpenVINO against PyTorch (and the plain-PyTorch
rollout and attribution references), every precision variant on held-out data, the accuracy
gates, the DALI preprocessing gate and TensorRT's ONNX parser support list. Importable without
torch where the GPU host's engine checks need the gates' limits."""
