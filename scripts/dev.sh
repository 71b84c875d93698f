#!/usr/bin/env bash
# `make dev`: Dagster (webserver + daemon), the MLflow UI, the BentoML service and optuna-dashboard together;
# Ctrl-C (or SIGTERM) stops them all within 5 s. Each logs to .dev-logs/<name>.log, and this terminal follows them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV_BIN:-.venv/bin}
DAGSTER_PORT=${DAGSTER_PORT:-3001} MLFLOW_PORT=${MLFLOW_PORT:-5000} PORT=${PORT:-3000}
OPTUNA_DASHBOARD_PORT=${OPTUNA_DASHBOARD_PORT:-8080}
home=${ITFF_HOME:-$PWD}
logs=$home/.dev-logs
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
mkdir -p "$logs"

# Create the MLflow and Optuna stores before four services race to (a fresh MLflow store's migration fails when
# two run it at once), rebase the registry's recorded paths if the project folder moved, and read where the
# stores are from the settings, as training and serving do.
paths=$("$BIN/python" -m itff_platform.registry_paths)  # an assignment, so that its failure stops the script
eval "$paths"
mkdir -p "$artifact_root"

new_token() { "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
if [ -z "${ITFF_API_TOKENS:-}" ]; then
    api_token=$(new_token)
    export ITFF_API_TOKENS="[\"$api_token\"]"
    shown=$api_token
else
    api_token=$("$BIN/python" -c 'import json, os; print(json.loads(os.environ["ITFF_API_TOKENS"])[0])')
    shown="the first of ITFF_API_TOKENS"
fi
# The README's curl reads the token from here: readable by this user only, and .dev-logs/ is git-ignored.
(umask 077; rm -f "$logs/api-token"; printf '%s\n' "$api_token" > "$logs/api-token")
# The champion sensor, in the Dagster daemon, calls the service's /admin/reload at this URL with this token.
export ITFF_ADMIN_TOKEN=${ITFF_ADMIN_TOKEN:-$(new_token)}
export ITFF_SERVICE_URL=${ITFF_SERVICE_URL:-http://127.0.0.1:$PORT}
# MLflow 3's job runner (seven huey consumers) serves GenAI features the platform does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

# Job control gives each service its own process group: stopping the group also stops its workers and code servers.
set -m
pids=()
signal() { for pid in "${pids[@]}"; do kill "-$1" -- "-$pid" 2>/dev/null || true; done; }
alive() { for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done; return 1; }
# Every process below this script, listed while the tree is intact: one that left its group would otherwise outlive us.
descendants() {
    ps -A -o pid= -o ppid= | awk -v root=$$ '{ parent[$1] = $2 } END {
        for (pid in parent) for (p = parent[pid]; p > 1; p = parent[p]) if (p == root) { print pid; break } }'
}
stop() {
    trap - INT TERM EXIT
    set +m  # no "[1] Terminated" job reports while stopping
    local tree
    tree=$(descendants)
    # SIGTERM, not SIGINT: measured one service at a time, each group was gone within 3 s of SIGTERM (dagster dev
    # 2.6 s, mlflow 1.0 s, optuna-dashboard 1.3 s, bentoml 0.5 s); SIGINT took dagster dev 5.9 s and mlflow 3.7 s.
    signal TERM
    # 3 s of wall clock for a clean shutdown (a loaded machine slows both them and this loop), so the stop is < 5 s.
    local deadline=$(( ${EPOCHREALTIME/./} + 3000000 ))
    while alive && (( ${EPOCHREALTIME/./} < deadline )); do sleep 0.1; done
    signal KILL
    kill -KILL $tree 2>/dev/null || true
    wait || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

banner() {
    echo
    echo "  Dagster  http://127.0.0.1:$DAGSTER_PORT   (webserver + daemon)"
    echo "  MLflow   http://127.0.0.1:$MLFLOW_PORT"
    echo "  Optuna   http://127.0.0.1:$OPTUNA_DASHBOARD_PORT   (optuna-dashboard: every study, its trials and their history)"
    echo "  BentoML  http://127.0.0.1:$PORT   X-API-Token: $shown (also in .dev-logs/api-token)"
    echo "  $1 Logs in .dev-logs/; Ctrl-C stops them all."
    echo
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

"$BIN/dagster" dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT" < /dev/null > "$logs/dagster.log" 2>&1 &
pids+=($!)
"$BIN/mlflow" ui --backend-store-uri "$tracking_uri" --default-artifact-root "$artifact_root" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" < /dev/null > "$logs/mlflow.log" 2>&1 &
pids+=($!)
# Its own BENTOML_HOME per port (as in `make serve`): BentoML empties the Prometheus folder in it at start.
state=${ITFF_SERVE_STATE_DIR:-.bentoml}
case $state in /*) ;; *) state=$home/$state;; esac
BENTOML_HOME="$state/$PORT" "$BIN/bentoml" serve itff_platform.serving.service:ItffService --host 127.0.0.1 --port "$PORT" \
    < /dev/null > "$logs/bentoml.log" 2>&1 &
pids+=($!)
"$BIN/optuna-dashboard" "$study_storage" --host 127.0.0.1 --port "$OPTUNA_DASHBOARD_PORT" \
    < /dev/null > "$logs/optuna-dashboard.log" 2>&1 &
pids+=($!)
banner "Starting."
tail -n +1 -F "$logs"/{dagster,mlflow,bentoml,optuna-dashboard}.log &
pids+=($!)
# Once all listen, say so again: by then the start-up logs have scrolled the first banner away.
(for port in "$DAGSTER_PORT" "$MLFLOW_PORT" "$PORT" "$OPTUNA_DASHBOARD_PORT"; do
    until listening "$port"; do sleep 1; done; done; banner "All four are up.") &
pids+=($!)

# Returns as soon as one service exits (a port already taken, say); the EXIT trap then stops the others.
wait -n "${pids[@]:0:4}" || true
echo "A service stopped (see .dev-logs/); stopping the others." >&2
exit 1
