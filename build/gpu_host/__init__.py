"""What runs on the GPU host, in the TensorRT container (docker-compose.yml's engines service,
deploy/kubernetes/loader/gpu): the engine builder and its checks. No torch, no CPU build stack."""
