# Everything installs into .venv from pyproject.toml; nothing needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)
export PYTHONUNBUFFERED := 1
# OpenMP threads (torch, scikit-learn's boosting) sleep while they wait instead of spinning: with a core held by
# other work, spinning made a boosting fit 55 s and 14 CPU-s instead of 12 s and 4 (docs/training-and-promotion.md).
# Read when OpenMP loads: set here for every process make starts, and by itff_platform/__init__.py for the rest;
# OMP_WAIT_POLICY=ACTIVE restores spinning.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help install system-packages browser promtool cluster-servers cluster cluster-down run lint test dev serve fuzz replay paper-replay docs mlflow-ui bench-lake bench-training bench-serve bench-cluster clean-lake screenshots

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip check
	@touch $(INSTALLED)

## install: the .venv with the project and its dev extras, from pyproject.toml (the other targets run it first)
install: $(INSTALLED)

## help: list these targets with what each does
help:
	@awk '/^## /{sub(/^## /, ""); print (/^[a-z-]+:/ ? "" : "      ") $$0}' $(firstword $(MAKEFILE_LIST))

## run: install, materialize raw -> bronze -> silver on the packaged sample, train every family, print summaries
run: install
	$(BIN)/itff run

## system-packages: the Debian packages the tests use (root and the package registry), in one apt-get update when
## any is missing: chromium (the UI tests), prometheus (promtool: the deploy test), postgresql and redis-server
## (the cluster tests). browser, promtool and cluster-servers are names for it.
system-packages:
	@missing=$$(for p in chromium prometheus postgresql redis-server; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update -qq; \
		if echo "$$missing" | grep -qx chromium; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; \
		rest=$$(echo "$$missing" | grep -vx chromium || true); \
		if [ -n "$$rest" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$rest; fi; \
	fi
## browser: headless Chromium, for the UI tests (installed by system-packages)
## promtool: Prometheus's promtool, for the deploy test (installed by system-packages)
## cluster-servers: Postgres and Redis, for the cluster profile and its tests (installed by system-packages)
browser promtool cluster-servers: system-packages

## lint: ruff check, ruff format --check and mypy (configured in pyproject.toml); the suite runs the same three
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy


## test: install, then run the suite on two xdist workers, a test file's tests on one worker in file order
## (test_lint.py runs the lint: a finding fails the suite)
test: install browser promtool cluster-servers
	$(BIN)/pytest -n 2 --dist loadfile


## screenshots: copy the UI test's screenshots (test-artifacts/*.png) into docs/images/, where the README shows them.
## Take them first with `.venv/bin/pytest itff_platform_tests/ui` (make test runs it too), then commit docs/images/.
screenshots:
	@ls test-artifacts/*.png >/dev/null 2>&1 || { echo "no screenshots in test-artifacts/: run .venv/bin/pytest itff_platform_tests/ui first"; exit 1; }
	mkdir -p docs/images
	cp test-artifacts/*.png docs/images/

## dev: Dagster UI (webserver + daemon) on http://127.0.0.1:3001, MLflow UI on :5000, the BentoML service on :3000,
## optuna-dashboard on :8080. Ports from DAGSTER_PORT, MLFLOW_PORT, PORT, OPTUNA_DASHBOARD_PORT. The API token is
## ITFF_API_TOKENS' first, else a fresh one; printed, and in .dev-logs/api-token. Ctrl-C or SIGTERM stops all in < 5 s.
dev: install
	@bash scripts/dev.sh

## cluster: the cluster profile on this machine (docs/scale-out.md): Postgres and Redis (Debian packages, data in
## ITFF_CLUSTER_DIR), the MLflow server on Postgres, Dagster's webserver (ITFF_DAGSTER_PORT) and daemon on Postgres,
## and ITFF_WORKERS celery workers. Prints the URLs; Ctrl-C or `make cluster-down` (from another shell) stops them all.
cluster: install cluster-servers
	@bash scripts/cluster.sh

## cluster-down: stop what `make cluster` started, Postgres and Redis included (their data stays in ITFF_CLUSTER_DIR)
cluster-down: install
	@bash scripts/cluster.sh --down

## serve: the BentoML prediction service on the promoted champions, port $PORT (default 3000).
## Tokens come from ITFF_API_TOKENS (a JSON list); without one, a random token is made for this session and printed.
## Each service gets its own BENTOML_HOME (and so its own Prometheus multiprocess folder), .bentoml/$PORT under
## ITFF_HOME: BentoML empties that folder at start, so a shared one would wipe another service's metrics.
## It first creates the MLflow store if there is none, and rebases it if the project folder moved (itff relocate).
serve: install
	@if [ -z "$$ITFF_API_TOKENS" ]; then \
		token=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))'); \
		echo "ITFF_API_TOKENS is not set: this session's token is $$token (send it as X-API-Token)"; \
		export ITFF_API_TOKENS="[\"$$token\"]"; fi; \
	state=$${ITFF_SERVE_STATE_DIR:-.bentoml}; case $$state in /*) ;; *) state=$${ITFF_HOME:-$(CURDIR)}/$$state;; esac; \
	export BENTOML_HOME=$$state/$${PORT:-3000}; \
	$(BIN)/python -m itff_platform.registry_paths > /dev/null || exit 1; \
	exec $(BIN)/bentoml serve itff_platform.serving.service:ItffService --host $${HOST:-127.0.0.1} --port $${PORT:-3000}

## fuzz: 5,000 schemathesis cases against a real service's /docs.json; prints the status counts (0 x 5xx expected)
fuzz: install
	ITFF_FUZZ_CASES=$${ITFF_FUZZ_CASES:-5000} $(BIN)/pytest -q -s itff_platform_tests/faults/test_fuzz.py -k full

## docs: regenerate docs/configuration.md from the settings schema (a test fails when it is out of date)
docs: install
	$(BIN)/python -m itff_platform.settings_docs

## mlflow-ui: only the MLflow UI (compare studies, browse the registry), on the store the settings name
mlflow-ui: install
	@paths=$$($(BIN)/python -m itff_platform.registry_paths) && eval "$$paths" && \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} exec $(BIN)/mlflow ui \
		--backend-store-uri "$$tracking_uri" --default-artifact-root "$$artifact_root" --host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

## bench-lake: bronze -> silver on 10M synthetic 1-minute rows, a one-day incremental update, and pandas/TA-Lib references
bench-lake: install
	$(BIN)/python benchmarks/bench_lake.py

## bench-training: trials per minute for every model family on the packaged sample
bench-training: install
	$(BIN)/python benchmarks/bench_training.py

## bench-cluster: trials/min with 1 vs 2 Optuna worker processes on one study, lake partitions/min with 1 vs 2 celery workers,
## and the projected wall time of 50 symbols x 3 targets on N machines (written into docs/scale-out-optuna.md)
bench-cluster: install cluster-servers
	$(BIN)/python benchmarks/bench_cluster.py

## bench-serve: /predict latency and throughput at concurrency 1, 8 and 32 against a real bentoml serve and, interleaved,
## a bare FastAPI + uvicorn anchor on the same champion (benchmarks/anchor_app.py), both 2 workers: prints the ratio.
## Then /predict with 800 candles (one window repeated, and a window sliding one bar per request) and /predict_batch,
## and the CPU of the prediction log's Delta append per request (benchmarks/bench_prediction_log.py)
bench-serve: install
	@command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey)
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_prediction_log.py

## replay: `itff replay` over the last 60 days of the sample (after `make run`); START/END override the period
replay: install
	$(BIN)/itff replay $${START:-2024-08-01} $${END:-2024-09-29}

## paper-replay: the paper-trading autopilot over the last $DAYS (default 30) days of the lake against a real bentoml serve
##   it starts (after `make run`); prints the report's figures, writes reports/replay/paper-START-END/, and the time taken
paper-replay: install
	@started=$$(date +%s); $(BIN)/itff replay --trade --days $${DAYS:-30}; status=$$?; \
	echo "make paper-replay: $$(( $$(date +%s) - started )) s"; exit $$status

## clean-lake: delete the lake's raw, bronze, silver, bench and monitoring tables (the MLflow store is kept)
clean-lake:
	rm -rf data_lake/raw data_lake/bronze data_lake/silver data_lake/bench data_lake/monitoring
