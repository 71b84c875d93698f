#!/usr/bin/env bash
# `make dev`: Dagster (webserver + daemon), the MLflow UI and the BentoML service together; Ctrl-C stops all three.
# Each service logs to .dev-logs/<name>.log, and this terminal follows the three logs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DAGSTER_PORT=${DAGSTER_PORT:-3001} MLFLOW_PORT=${MLFLOW_PORT:-5000} PORT=${PORT:-3000}
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
mkdir -p mlflow/artifacts .dev-logs

new_token() { "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
if [ -z "${ITFF_API_TOKENS:-}" ]; then
    api_token=$(new_token)
    export ITFF_API_TOKENS="[\"$api_token\"]"
else
    api_token="(one of ITFF_API_TOKENS)"
fi
# The champion sensor, in the Dagster daemon, calls the service's /admin/reload at this URL with this token.
export ITFF_ADMIN_TOKEN=${ITFF_ADMIN_TOKEN:-$(new_token)}
export ITFF_SERVICE_URL=${ITFF_SERVICE_URL:-http://127.0.0.1:$PORT}

# Job control gives each service its own process group: stopping the group also stops its workers and code servers.
set -m
pids=()
signal() { for pid in "${pids[@]}"; do kill "-$1" -- "-$pid" 2>/dev/null || true; done; }
alive() { for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done; return 1; }
stop() {
    trap - INT TERM EXIT
    set +m  # no "[1] Terminated" job reports while stopping
    # SIGINT, what Ctrl-C sends: `dagster dev` stops in seconds on it, but hangs ~30 s when its whole group gets SIGTERM.
    signal INT
    for _ in $(seq 60); do alive || break; sleep 0.5; done  # up to 30 s for a clean shutdown
    signal KILL
    wait || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

banner() {
    echo
    echo "  Dagster  http://127.0.0.1:$DAGSTER_PORT   (webserver + daemon)"
    echo "  MLflow   http://127.0.0.1:$MLFLOW_PORT"
    echo "  BentoML  http://127.0.0.1:$PORT   X-API-Token: $api_token"
    echo "  $1 Logs in .dev-logs/; Ctrl-C stops all three."
    echo
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

"$BIN/dagster" dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT" < /dev/null > .dev-logs/dagster.log 2>&1 &
pids+=($!)
"$BIN/mlflow" ui --backend-store-uri "sqlite:///$PWD/mlflow/mlflow.db" --default-artifact-root "$PWD/mlflow/artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" < /dev/null > .dev-logs/mlflow.log 2>&1 &
pids+=($!)
# Its own BENTOML_HOME per port (as in `make serve`): BentoML empties the Prometheus folder in it at start.
state=${ITFF_SERVE_STATE_DIR:-.bentoml}
case $state in /*) ;; *) state=${ITFF_HOME:-$PWD}/$state;; esac
BENTOML_HOME="$state/$PORT" "$BIN/bentoml" serve itff_platform.serving.service:ItffService --host 127.0.0.1 --port "$PORT" \
    < /dev/null > .dev-logs/bentoml.log 2>&1 &
pids+=($!)
banner "Starting."
tail -n +1 -F .dev-logs/dagster.log .dev-logs/mlflow.log .dev-logs/bentoml.log &
pids+=($!)
# Once all three listen, say so again: by then the start-up logs have scrolled the first banner away.
(for port in "$DAGSTER_PORT" "$MLFLOW_PORT" "$PORT"; do until listening "$port"; do sleep 1; done; done; banner "All three are up.") &
pids+=($!)

# Returns as soon as one service exits (a port already taken, say); the EXIT trap then stops the others.
wait -n "${pids[@]:0:3}" || true
echo "A service stopped (see .dev-logs/); stopping the others." >&2
exit 1
