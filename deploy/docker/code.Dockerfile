# The code location: `dagster code-server start -m itff_platform.definitions` (compose's code-server, Helm's user
# deployment) and, with another command, the celery workers that run its steps. One image for both, so a step runs
# the very code the code server loaded. Build from the repository root:
#   docker build -f deploy/docker/code.Dockerfile -t itff-code:latest .
# No secret is baked in: tokens and passwords come from the environment at run time (docs/deploy.md).
FROM python:3.11-slim-bookworm

# The pins of pyproject.toml (itff_platform_tests/deploy checks them): torch from the CPU index, bentoml's version
# inside pyproject's range, the one the suite ran on.
ARG TORCH_VERSION=2.13.0
ARG BENTOML_VERSION=1.4.39
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The uid BentoML's containers run as (BENTO_UID_GID in bentoml's container/generate.py): the lake, reports and
# Dagster storage volumes, which the service and the containers write, then belong to one user.
ARG APP_UID=1034

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    ITFF_HOME=/opt/itff

RUN groupadd --system --gid "${APP_UID}" itff \
    && useradd --system --uid "${APP_UID}" --gid itff --home-dir /opt/itff --shell /usr/sbin/nologin itff

WORKDIR /opt/itff
# torch first, from the CPU index: installing the project then finds it satisfied instead of pulling CUDA wheels.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY itff_platform ./itff_platform
RUN pip install "bentoml==${BENTOML_VERSION}" .

# The instance (runs, events and schedules on Postgres) shared with the webserver and the daemon.
COPY deploy/docker/dagster.yaml /opt/dagster/home/dagster.yaml
# The lake, reports and Dagster's step outputs live on volumes that compose mounts at these paths.
RUN mkdir -p /opt/dagster/home /opt/dagster/storage /data/lake /data/reports \
    && chown -R itff:itff /opt/itff /opt/dagster /data
USER itff

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-m", "itff_platform.definitions", "-h", "0.0.0.0", "-p", "4000", \
     "--location-name", "itff_platform"]
