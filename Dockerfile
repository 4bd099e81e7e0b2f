# MemoryTransit: the runtime-memory service, `python -m service` on port 8000.
#
# Build arguments (all optional):
#   BASE_IMAGE        any Debian-style image with python3.11 and `python3 -m venv`:
#                     python:3.11-slim-bookworm (default) or the Docker-Hub-free
#                     memorytransit-base:bookworm made by scripts/build-base-image.sh.
#   TORCH_INDEX_URL   index to take torch from first, e.g. https://download.pytorch.org/whl/cpu
#                     for a CPU-only image about 4 GB smaller. Empty: torch comes from the same
#                     index as everything else (on PyPI that is the CUDA build, needed for MT_DEVICE=cuda).
#   PIP_INSTALL_ARGS  extra arguments for every pip install, e.g. an offline wheelhouse:
#                     "--no-index --find-links /tmp/deps" (scripts/docker-smoke.sh does this).
#
# A folder `wheelhouse/` in the build context, when present, is copied next to requirements.txt
# into /tmp/deps of the build stage only; it never reaches the runtime image.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build stage: a virtualenv with the pinned dependencies --------------------------------------
FROM ${BASE_IMAGE} AS deps

ARG TORCH_INDEX_URL=""
ARG PIP_INSTALL_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120

# Dependencies first, in their own layer: code edits do not reinstall torch.
# `wheelhous[e]` matches nothing when there is no wheelhouse, which COPY accepts here because
# requirements.txt always matches.
# REQUIREMENTS: which file to install; requirements-scale.txt adds ray[serve] for
# `python -m service.ray` (docker-compose.ray.yml). The default image has no Ray.
ARG REQUIREMENTS=requirements.txt
COPY requirements.txt requirements-scale.txt wheelhous[e] /tmp/deps/

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# PIP_INSTALL_ARGS is split into words on purpose (it holds several options).
RUN python3 -m venv /opt/venv \
    && if [[ -n "${TORCH_INDEX_URL}" ]]; then \
         torch_req="$(grep -E '^torch[[:space:]]*[=<>~!]' /tmp/deps/requirements.txt)"; \
         /opt/venv/bin/pip install --no-cache-dir ${PIP_INSTALL_ARGS} \
             --index-url "${TORCH_INDEX_URL}" "${torch_req}"; \
       fi \
    && /opt/venv/bin/pip install --no-cache-dir ${PIP_INSTALL_ARGS} -r "/tmp/deps/${REQUIREMENTS}" \
    && /opt/venv/bin/python -c "import torch, fastapi, uvicorn, safetensors; print('torch', torch.__version__)"

# ---- runtime stage --------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="memorytransit" \
      org.opencontainers.image.description="MemoryTransit runtime-memory service (FastAPI + IDRP codec)"

# Fixed uid/gid so a bind-mounted snapshot folder can be chowned to it from the host.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" memorytransit \
    && useradd --system --uid "${APP_UID}" --gid memorytransit --home-dir /app \
         --no-create-home --shell /usr/sbin/nologin memorytransit \
    && mkdir -p /data \
    && chown memorytransit:memorytransit /data

COPY --from=deps /opt/venv /opt/venv

# One worker: the process owns the bank (uvicorn's CLI reads WEB_CONCURRENCY; `python -m service`
# starts a single worker anyway). MT_HOST must be 0.0.0.0 to be reachable from outside.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WEB_CONCURRENCY=1 \
    MT_HOST=0.0.0.0 \
    MT_PORT=8000 \
    MT_SNAPSHOT_DIR=/data \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /app
# Code and weights stay owned by root: the service only writes under /data.
COPY model/ /app/model/
COPY service/ /app/service/
COPY weights/ /app/weights/

USER ${APP_UID}:${APP_GID}
VOLUME ["/data"]
EXPOSE 8000

# Liveness only (/healthz answers as soon as the process is up); compose checks /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MT_PORT', '8000') + '/healthz', timeout=4)"]

CMD ["python", "-m", "service"]
