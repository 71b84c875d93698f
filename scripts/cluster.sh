#!/usr/bin/env bash
# `make cluster`: the cluster profile on this machine (docs/scale-out.md). Postgres (a database cluster of its own in
# ITFF_CLUSTER_DIR/pg) and Redis start as daemons through `itff cluster up`; then honcho runs Procfile.cluster: the
# MLflow server on Postgres, Dagster's webserver and daemon on Postgres, and ITFF_WORKERS celery workers.
# `make cluster-down` (this script with --down) stops honcho's services, then Redis and Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV_BIN:-.venv/bin}
export BIN ITFF_PROFILE=cluster ITFF_HOME=${ITFF_HOME:-$PWD}
assignments=$("$BIN/python" -m itff_platform.cluster)  # an assignment, so that its failure stops the script
eval "$assignments"
export CLUSTER_DIR CLUSTER_DAGSTER_PORT CLUSTER_WORKERS CLUSTER_REDIS_URL CLUSTER_MLFLOW_URL CLUSTER_MLFLOW_HOST
export CLUSTER_MLFLOW_PORT DAGSTER_POSTGRES_URL CLUSTER_MLFLOW_BACKEND CLUSTER_REDIS_SHOWN CLUSTER_MLFLOW_SHOWN
export DAGSTER_HOME=$CLUSTER_DIR/dagster

banner() {
    echo
    echo "  Dagster  http://127.0.0.1:$CLUSTER_DAGSTER_PORT   (webserver + daemon, storage on Postgres)"
    echo "  MLflow   $CLUSTER_MLFLOW_SHOWN   (server on Postgres, artifacts in $CLUSTER_DIR/mlflow-artifacts)"
    echo "  Workers  $CLUSTER_WORKERS celery workers on $CLUSTER_REDIS_SHOWN"
    echo "  Clients: ITFF_PROFILE=cluster DAGSTER_HOME=$DAGSTER_HOME .venv/bin/itff run"
    echo "  $1 Logs in $CLUSTER_DIR/logs/; Ctrl-C or make cluster-down stops them all."
    echo
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "${1:-}" in
--when-up)  # Procfile.cluster's `ready`
    for port in "$CLUSTER_MLFLOW_PORT" "$CLUSTER_DAGSTER_PORT"; do
        until listening "$port"; do sleep 1; done
    done
    banner "All up."
    exec sleep infinity ;;
--down)
    if [ -f "$CLUSTER_DIR/honcho.pid" ]; then
        pid=$(cat "$CLUSTER_DIR/honcho.pid")
        if kill -TERM "$pid" 2>/dev/null; then
            while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
        fi
        rm -f "$CLUSTER_DIR/honcho.pid"
    fi
    exec "$BIN/itff" cluster down ;;
esac

"$BIN/itff" cluster up
mkdir -p "$DAGSTER_HOME" "$CLUSTER_DIR/logs" "$CLUSTER_DIR/mlflow-artifacts"
cp deploy/native/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
# MLflow 3's job runner (seven huey consumers) serves GenAI features the platform does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
banner "Starting."
echo $$ > "$CLUSTER_DIR/honcho.pid"  # exec keeps the pid: cluster-down stops honcho, which stops the services
exec "$BIN/python" -c 'import sys; from honcho import command, manager; manager.KILL_WAIT = 3; command.main(sys.argv[1:])' \
    start -f Procfile.cluster -c "worker=$CLUSTER_WORKERS"
