"""The graphs the build exports: the ViT wrapped per task (classify, explain's attention rollout,
attribution) with preprocessing inside, and their export to ONNX (fp32, dynamic batch)."""
