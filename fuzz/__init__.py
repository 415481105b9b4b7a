"""Fuzzing the gateway: API (schemathesis) and image decoding (atheris)."""
