# imgrec: one image for the services of docker-compose.yml (train, indexer, api, dask); docs/deployment.md.
#
#   docker build -t imgrec .
#   docker run --rm -p 8000:8000 -v imgrec-index:/data/index imgrec        # the search API
#
# Two stages: `build` makes a virtualenv (CPU torch, pinned by constraints.txt); the final stage
# copies only that virtualenv and the compose steps script.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# CPU-only torch from PyTorch's index alone (PyPI's Linux torch is the CUDA build); its dependencies
# from PyPI. constraints.txt pins the version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, in its own layer: it is the big one and changes least
COPY constraints.txt ./
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" --no-deps -c constraints.txt torch \
    && pip install --no-cache-dir -c constraints.txt torch
COPY pyproject.toml README.md alembic.ini ./
COPY encoder ./encoder
COPY indexer ./indexer
COPY search_api ./search_api
COPY migrations ./migrations
COPY imgrec ./imgrec
RUN pip install --no-cache-dir -c constraints.txt ".[dask]" \
    && pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="imgrec" \
      org.opencontainers.image.description="Query-by-image similarity search for store inventories" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 imgrec \
    && useradd --system --no-log-init --uid 10001 --gid imgrec --home-dir /app --create-home imgrec \
    && mkdir -p /data/index /data/models /data/inventory \
    && chown -R imgrec:imgrec /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/compose-step /usr/local/bin/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMGREC_INVENTORY=/data/inventory \
    IMGREC_INDEX=/data/index \
    IMGREC_BIND=0.0.0.0:8000
WORKDIR /app
USER 10001:10001
VOLUME ["/data/index", "/data/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['IMGREC_BIND'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
# gunicorn settings: search_api/gunicorn_conf.py (IMGREC_BIND, WEB_CONCURRENCY workers)
CMD ["gunicorn", "--config", "python:search_api.gunicorn_conf", "search_api:create_app()"]
