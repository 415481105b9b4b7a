"""gunicorn settings for the gateway image: N uvicorn workers under a supervisor that has the
hooks Prometheus multiprocess mode needs (uvicorn's own --workers supervisor has none).

  gunicorn -c service/gunicorn_conf.py        (the Dockerfile's command)

WEB_CONCURRENCY sets the worker count (gunicorn reads it itself), GATEWAY_BIND the address.
"""

from __future__ import annotations

import os
from typing import Any

from uvicorn_worker import UvicornWorker

wsgi_app = "service.main:create_app()"
bind = os.environ.get("GATEWAY_BIND", "0.0.0.0:8080")
worker_class = "service.gunicorn_conf.GatewayWorker"
# SIGTERM: workers stop taking requests and finish what they have within this time; compose's
# stop_grace_period and Kubernetes' terminationGracePeriodSeconds must be longer.
graceful_timeout = 10
timeout = 30  # a worker whose event loop is stuck this long is killed and replaced
keepalive = 5
# gunicorn's own access log stays off: the gateway writes one line a request itself, with the
# trace id (ACCESS_LOG, service/tracing.py), under gunicorn and uvicorn alike.
accesslog = None


class GatewayWorker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (the base class declares it mutable)
        "loop": "auto",
        "http": "auto",
        "server_header": False,
        "timeout_graceful_shutdown": graceful_timeout,
    }


def on_starting(server: Any) -> None:
    """In the master, before any worker: forget the samples of an earlier run."""
    from service import metrics  # imported late: the master serves no requests

    metrics.reset_multiprocess_dir()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker exited for any reason (including SIGKILL or OOM)."""
    from service import metrics

    metrics.mark_worker_dead(worker.pid)
