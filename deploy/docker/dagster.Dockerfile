# The Dagster webserver and daemon: one image, two commands (compose's dagster-webserver and dagster-daemon).
# Neither runs project code: they load the code location over gRPC from the code server, whose container also
# runs each run's orchestrator (Dagster's default run launcher), so this image holds Dagster alone.
#   docker build -f deploy/docker/dagster.Dockerfile -t itff-dagster:latest .
FROM python:3.11-slim-bookworm

# pyproject.toml's pins (itff_platform_tests/deploy checks them).
ARG DAGSTER_VERSION=1.13.27
ARG DAGSTER_POSTGRES_VERSION=0.29.27

# The uid BentoML's containers run as (BENTO_UID_GID in bentoml's container/generate.py): the lake, reports and
# Dagster storage volumes, which the service and the containers write, then belong to one user.
ARG APP_UID=1034

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home

RUN groupadd --system --gid "${APP_UID}" itff \
    && useradd --system --uid "${APP_UID}" --gid itff --home-dir /opt/dagster --shell /usr/sbin/nologin itff
RUN pip install "dagster==${DAGSTER_VERSION}" "dagster-webserver==${DAGSTER_VERSION}" \
    "dagster-postgres==${DAGSTER_POSTGRES_VERSION}"

COPY deploy/docker/dagster.yaml deploy/docker/workspace.yaml /opt/dagster/home/
RUN mkdir -p /opt/dagster/storage && chown -R itff:itff /opt/dagster
USER itff
WORKDIR /opt/dagster/home

EXPOSE 3301
CMD ["dagster-webserver", "-w", "/opt/dagster/home/workspace.yaml", "-h", "0.0.0.0", "-p", "3301"]
