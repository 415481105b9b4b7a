"""FastAPI gateway in front of Triton: POST /classify and /explain, /metrics, /healthz, /readyz."""
