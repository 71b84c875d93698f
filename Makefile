# Everything installs into .venv from pyproject.toml; nothing needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)
export PYTHONUNBUFFERED := 1

.PHONY: install run test dev serve mlflow-ui bench-lake bench-training bench-serve clean-lake

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip check
	@touch $(INSTALLED)

install: $(INSTALLED)

## run: install, materialize raw -> bronze -> silver on the packaged sample, train every family, print summaries
run: install
	$(BIN)/itff run

## test: install, then run the suite
test: install
	$(BIN)/pytest

## dev: the Dagster UI (webserver + daemon) on http://127.0.0.1:3001 and the MLflow UI on http://127.0.0.1:5000
dev: install
	@mkdir -p mlflow/artifacts
	@echo "Dagster UI: http://127.0.0.1:$${DAGSTER_PORT:-3001}   MLflow UI: http://127.0.0.1:$${MLFLOW_PORT:-5000}"
	@$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --default-artifact-root $(CURDIR)/mlflow/artifacts \
		--host 127.0.0.1 --port $${MLFLOW_PORT:-5000} > mlflow/ui.log 2>&1 & mlflow_pid=$$!; \
	trap "kill $$mlflow_pid 2>/dev/null" EXIT INT TERM; \
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $${DAGSTER_PORT:-3001}

## serve: the BentoML prediction service on the promoted champions, port $PORT (default 3000).
## Tokens come from ITFF_API_TOKENS (a JSON list); without one, a random token is made for this session and printed.
serve: install
	@if [ -z "$$ITFF_API_TOKENS" ]; then \
		token=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))'); \
		echo "ITFF_API_TOKENS is not set: this session's token is $$token (send it as X-API-Token)"; \
		export ITFF_API_TOKENS="[\"$$token\"]"; fi; \
	$(BIN)/bentoml serve itff_platform.serving.service:ItffService --host $${HOST:-127.0.0.1} --port $${PORT:-3000}

## mlflow-ui: only the MLflow UI (compare studies, browse the registry)
mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --default-artifact-root $(CURDIR)/mlflow/artifacts \
		--host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

## bench-lake: bronze -> silver on 10M synthetic 1-minute rows, and a one-day incremental update
bench-lake: install
	$(BIN)/python benchmarks/bench_lake.py

## bench-training: trials per minute for every model family on the packaged sample
bench-training: install
	$(BIN)/python benchmarks/bench_training.py

## bench-serve: /predict latency and throughput at concurrency 1, 8 and 32 against a real bentoml serve
bench-serve: install
	@command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey)
	$(BIN)/python benchmarks/bench_serve.py

clean-lake:
	rm -rf data_lake/raw data_lake/bronze data_lake/silver data_lake/bench
