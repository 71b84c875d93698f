# The MLflow tracking server of the cluster profile: runs and the registry in the mlflow database on Postgres,
# artifacts served by the server itself (--serve-artifacts), so clients need only its http:// URL.
#   docker build -f deploy/docker/mlflow.Dockerfile -t itff-mlflow:latest .
# The backend store URI (it holds the password) comes from MLFLOW_BACKEND_STORE_URI at run time, never the image.
FROM python:3.11-slim-bookworm

# pyproject.toml's pins (itff_platform_tests/deploy checks them).
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13

# The uid BentoML's containers run as (BENTO_UID_GID in bentoml's container/generate.py): the lake, reports and
# Dagster storage volumes, which the service and the containers write, then belong to one user.
ARG APP_UID=1034

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid "${APP_UID}" mlflow \
    && useradd --system --uid "${APP_UID}" --gid mlflow --home-dir /mlflow --shell /usr/sbin/nologin mlflow
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}"
RUN mkdir -p /mlflow/artifacts && chown -R mlflow:mlflow /mlflow
USER mlflow
WORKDIR /mlflow

EXPOSE 5050
# --allowed-hosts: MLflow 3 refuses Host headers other than localhost and private IPs; the other containers call
# it by its service name. MLFLOW_ALLOWED_HOSTS overrides the list (an ingress host in Kubernetes).
CMD ["sh", "-c", "exec mlflow server --serve-artifacts --artifacts-destination /mlflow/artifacts --host 0.0.0.0 --port 5050 --allowed-hosts \"${MLFLOW_ALLOWED_HOSTS:-mlflow:5050,localhost:5050,127.0.0.1:5050}\""]
