#!/usr/bin/env bash
# `make dev`: Dagster (webserver + daemon), the MLflow UI, the BentoML service and optuna-dashboard together, run by
# honcho from Procfile.dev; Ctrl-C (or SIGTERM) stops them all within 5 s. This script does what comes before:
# the ports, the stores, the token. Each service logs to .dev-logs/<name>.log, and this terminal follows them.
set -euo pipefail
cd "$(dirname "$0")/.."
banner() {
    echo
    echo "  Dagster  http://127.0.0.1:$DAGSTER_PORT   (webserver + daemon)"
    echo "  MLflow   http://127.0.0.1:$MLFLOW_PORT"
    echo "  Optuna   http://127.0.0.1:$OPTUNA_DASHBOARD_PORT   (optuna-dashboard: every study, its trials and their history)"
    echo "  BentoML  http://127.0.0.1:$DEV_BENTOML_PORT   X-API-Token: $DEV_TOKEN_SHOWN (also in .dev-logs/api-token)"
    echo "  $1 Logs in .dev-logs/; Ctrl-C stops them all."
    echo
}
# Procfile.dev's `ready`: once all listen, say so again, since the start-up logs have scrolled the first banner away.
# It reads the ports from the environment this script exported (not PORT: honcho gives every process its own).
if [ "${1:-}" = --when-up ]; then
    listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
    for port in "$DAGSTER_PORT" "$MLFLOW_PORT" "$DEV_BENTOML_PORT" "$OPTUNA_DASHBOARD_PORT"; do
        until listening "$port"; do sleep 1; done
    done
    banner "All four are up."
    exec sleep infinity  # honcho stops everything when one process ends
fi

BIN=${VENV_BIN:-.venv/bin}
export BIN DAGSTER_PORT=${DAGSTER_PORT:-3001} MLFLOW_PORT=${MLFLOW_PORT:-5000} DEV_BENTOML_PORT=${PORT:-3000}
export OPTUNA_DASHBOARD_PORT=${OPTUNA_DASHBOARD_PORT:-8080}
home=${ITFF_HOME:-$PWD}
export DEV_LOGS=$home/.dev-logs
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
mkdir -p "$DEV_LOGS"
# Create the MLflow and Optuna stores before four services race to (a fresh MLflow store's migration fails when
# two run it at once), rebase the registry's recorded paths if the project folder moved, and read where the
# stores are from the settings, as training and serving do.
paths=$("$BIN/python" -m itff_platform.registry_paths)  # an assignment, so that its failure stops the script
eval "$paths"
mkdir -p "$artifact_root"
export DEV_TRACKING_URI=$tracking_uri DEV_ARTIFACT_ROOT=$artifact_root DEV_STUDY_STORAGE=$study_storage
# Its own BENTOML_HOME per port (as in `make serve`): BentoML empties the Prometheus folder in it at start.
state=${ITFF_SERVE_STATE_DIR:-.bentoml}
case $state in /*) ;; *) state=$home/$state;; esac
export DEV_BENTOML_HOME=$state/$DEV_BENTOML_PORT

new_token() { "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
if [ -z "${ITFF_API_TOKENS:-}" ]; then
    api_token=$(new_token)
    export ITFF_API_TOKENS="[\"$api_token\"]"
    export DEV_TOKEN_SHOWN=$api_token
else
    api_token=$("$BIN/python" -c 'import json, os; print(json.loads(os.environ["ITFF_API_TOKENS"])[0])')
    export DEV_TOKEN_SHOWN="the first of ITFF_API_TOKENS"
fi
# The README's curl reads the token from here: readable by this user only, and .dev-logs/ is git-ignored.
(umask 077; rm -f "$DEV_LOGS/api-token"; printf '%s\n' "$api_token" > "$DEV_LOGS/api-token")
# The champion sensor, in the Dagster daemon, calls the service's /admin/reload at this URL with this token.
export ITFF_ADMIN_TOKEN=${ITFF_ADMIN_TOKEN:-$(new_token)}
export ITFF_SERVICE_URL=${ITFF_SERVICE_URL:-http://127.0.0.1:$DEV_BENTOML_PORT}
# MLflow 3's job runner (seven huey consumers) serves GenAI features the platform does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

# Fresh logs, so `logs` follows this session's from their first line.
for name in dagster mlflow bentoml optuna-dashboard; do : > "$DEV_LOGS/$name.log"; done
banner "Starting."
# honcho SIGKILLs what has not stopped 5 s after SIGTERM; for the whole stop to take < 5 s, this waits 3 s. Measured
# one service at a time, each was gone within 3 s of SIGTERM (dagster dev 2.6 s, mlflow 1.0 s, optuna-dashboard 1.3 s,
# bentoml 0.5 s); SIGINT took dagster dev 5.9 s, and honcho sends SIGTERM on Ctrl-C too.
exec "$BIN/python" -c 'import sys; from honcho import command, manager; manager.KILL_WAIT = 3; command.main(sys.argv[1:])' \
    start -f Procfile.dev
