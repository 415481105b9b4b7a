# Two commands for a new user: `make serve` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELOPT := .venv-modelopt
MODELOPT_STAMP := $(MODELOPT)/.installed
REPO := model_repository
BUILT := $(REPO)/model.json
HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=
export PYTHONPATH := $(CURDIR)

.PHONY: help install repo serve triton test test-slow lint publish rollback versions bench bench-faithfulness loadtest bench-e2e bench-sharing \
	engines clean-repo check-deploy modelopt-env test-gpu

help:
	@echo "make serve   install, build the default model repository if absent, run Triton + gateway"
	@echo "make test    install, build the default repository if absent, run the whole suite"
	@echo "make repo    (re)build the model repository; pass options with ARGS='--model ...'"
	@echo "make triton  run only the local Triton on $(REPO)/cpu"
	@echo "make bench   images/s per variant at batch 1 and 8 (docs/benchmarks/)"
	@echo "make bench-faithfulness deletion test: attribution vs rollout vs random maps (docs/benchmarks/)"
	@echo "make loadtest open-loop sweep against a running gateway (ARGS='--rates 20,40 --slo-p99 50')"
	@echo "make bench-e2e capacity at a p99 SLO: naive server vs model alone vs Triton vs this stack"
	@echo "make bench-sharing /classify p99 alone and under an /explain burst, Triton's rate limiter off / priority / on"
	@echo "make publish FROM=DIR  serve the build in DIR as the next version, no downtime (make rollback, make versions)"
	@echo "make engines build and verify TensorRT engines for $(REPO)/gpu (GPU host, TensorRT container)"
	@echo "make test-gpu the gpu-marked tests in the TensorRT container (GPU host)"
	@echo "make lint    ruff check, ruff format --check, mypy on the gateway, launcher, loadtest, release, fuzz, scripts"
	@echo "make check-deploy  only the deployment checks: compose, Dockerfiles, Kubernetes, monitoring"

install: $(STAMP)

# The stamp depends on the dependency files, so a change to them reinstalls.
$(STAMP): pyproject.toml requirements/constraints.txt scripts/system-deps.sh
	@bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --group dev \
		-c requirements/constraints.txt
	@touch $@

# NVIDIA Model Optimizer (GPU precision variants) in its own environment: its pins clash.
$(MODELOPT_STAMP): requirements/modelopt.txt scripts/modelopt-env.sh | $(STAMP)
	bash scripts/modelopt-env.sh $(MODELOPT) $(VENV)

modelopt-env: $(MODELOPT_STAMP)

# Built only when absent: model.json is written last, after every check and gate passed.
$(BUILT): | $(STAMP) $(MODELOPT_STAMP)
	$(BIN)/python -m build.cli --out $(REPO)

repo: $(STAMP) $(MODELOPT_STAMP)
	$(BIN)/python -m build.cli --out $(REPO) $(ARGS)

serve: $(STAMP) $(BUILT)
	$(BIN)/python -m local_triton.serve --repository $(REPO)/cpu --host $(HOST) --port $(PORT) \
		$(ARGS)

triton: $(STAMP) $(BUILT)
	$(BIN)/python -m local_triton --repository $(REPO)/cpu $(ARGS)

test: lint $(MODELOPT_STAMP) $(BUILT)
	$(BIN)/python -m pytest $(ARGS)

# A subset of `make test`: compose profiles, Dockerfiles (hadolint), Kubernetes (kustomize,
# kubernetes-validate, yamllint), promtool config/rules/unit tests, dashboard vs live /metrics.
check-deploy: $(STAMP) $(BUILT)
	$(BIN)/python -m pytest tests/deploy tests/triton/test_grpc_keepalive.py $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service local_triton loadtest release build fuzz scripts

# New versions without downtime on a running Triton (release/; docs/versions.md): FROM is a
# finished build (make repo REPO=FROM ARGS=...), TARGET what Triton serves (cpu: make serve;
# gpu: compose, after the engines step on FROM). TRITON_URL: its gRPC address (127.0.0.1:8001).
TARGET ?= cpu
publish: $(STAMP)
	$(if $(FROM),,$(error FROM=DIR is required: make repo REPO=DIR ARGS=..., then make publish FROM=DIR))
	$(BIN)/python -m release publish --repository $(REPO) --target $(TARGET) --from $(FROM) $(ARGS)

rollback: $(STAMP)
	$(BIN)/python -m release rollback --repository $(REPO) --target $(TARGET) $(ARGS)

versions: $(STAMP)
	$(BIN)/python -m release status --repository $(REPO) --target $(TARGET)

bench: $(STAMP) $(BUILT)
	$(BIN)/python -m build.bench.throughput $(ARGS)

# Deletion test of the explanation maps on the default (digits) model's held-out images.
bench-faithfulness: $(STAMP) $(BUILT)
	$(BIN)/python -m build.bench.faithfulness $(ARGS)

loadtest: $(STAMP)
	$(BIN)/python -m loadtest $(ARGS)

# Starts and stops its own servers on free ports; builds ViT-S/16 (random weights) once if absent.
bench-e2e: $(STAMP) $(BUILT)
	$(BIN)/python -m loadtest.bench_e2e $(ARGS)

# Starts and stops its own Triton (the fp32 classify and explain models) and gateway per arm.
bench-sharing: $(STAMP) $(BUILT)
	$(BIN)/python -m loadtest.sharing --repository $(REPO) $(ARGS)

# GPU host: build and verify the TensorRT engines in the TensorRT container (no host venv).
engines:
	docker compose run --rm engines

# GPU host: the `gpu` tests, in the engines image (+ pytest), against the default repository.
test-gpu:
	docker compose --profile gpu-tests run --rm gpu-tests

clean-repo:
	rm -rf $(REPO)/onnx $(REPO)/source $(REPO)/*.json $(REPO)/*.html $(REPO)/*/*/[0-9]* \
		$(REPO)/*/*/labels.txt $(REPO)/*/*/warmup $(REPO)/engines $(REPO)/openvino-cache \
		$(REPO).staging-* $(REPO).rejected $(REPO).previous
