"""Gunicorn settings for the search API in production.

    gunicorn -c python:search_api.gunicorn_conf 'search_api:create_app()'

- gthread workers, WEB_CONCURRENCY of them (default: one per core), 8 threads each: decoding and
  I/O overlap in threads, and concurrent queries meet in the micro-batcher (one encoder forward and
  one FAISS call for many requests).
- No preload: the app (torch, FAISS, their OpenMP pools) is created in each worker after the fork;
  an OpenMP runtime started before `fork()` can hang in the child.
- One compute thread per worker (IMGREC_COMPUTE_THREADS, also OMP_NUM_THREADS here), so
  workers x threads = cores and OpenMP threads never spin against each other.
- Flat FAISS files are memory-mapped read-only (IMGREC_MMAP, on by default): all workers share one
  copy of the vectors through the page cache.
- Set PROMETHEUS_MULTIPROC_DIR to an empty folder to make /metrics sum every worker.
Command-line flags (or GUNICORN_CMD_ARGS) override anything here.
"""

import os

bind = os.environ.get("IMGREC_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
worker_class = "gthread"
threads = 8
preload_app = False  # never import torch/FAISS in the master: no fork after OpenMP has started
timeout = 60  # a worker silent this long is restarted (opening a large index counts)
graceful_timeout = 30
keepalive = 5
# gunicorn's own request limits answer in HTML; they are set above the app's (search_api.limits:
# MAX_URL_BYTES, MAX_HEADERS, MAX_HEADER_BYTES), so the requests between get the app's JSON 414/431.
# 8190 is the most gunicorn allows for the request line without lifting the limit altogether;
# headers are buffered up to limit_request_fields x (limit_request_field_size + 2) = 1.6 MB per request.
limit_request_line = 8190
limit_request_fields = 200
limit_request_field_size = 8190
accesslog = "-"
# gunicorn's default format minus %(u)s, the user of an `Authorization: Basic` header: a client that
# sent its API key that way would have it logged. No header is logged, and keys never go in URLs.
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)ss'

# An entry point's process-wide setting (encoder.compute): in the environment before the workers load FAISS,
# whose OpenMP thread count is otherwise set per calling thread.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("IMGREC_COMPUTE_THREADS", "1"))


def child_exit(server, worker):
    """Drop a dead worker's metrics files (multiprocess Prometheus mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
