"""Run the real Triton Inference Server locally, without Docker or a GPU (see launcher)."""
