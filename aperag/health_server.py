"""Health endpoints for the processes without an HTTP API of their own (worker, beat).

Kubernetes probes them like the API: ``/health/live`` answers while the process runs, and
``/health/ready`` runs the given checks (for example the Redis broker) and answers 503 with the
failing check's error when one fails. A standard-library server on a daemon thread keeps Celery's
own process model untouched.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Check = Callable[[], object]


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure makes the process not ready; say which and why
            results[name] = f"error: {exc}"[:300]
    return all(v == "ok" for v in results.values()), results


def start_health_server(
    host: str, port: int, checks: Mapping[str, Check], metrics: Callable[[], tuple[bytes, str]] | None = None
) -> ThreadingHTTPServer:
    """``metrics``: the Prometheus text and its content type, served at ``/metrics`` (the worker's)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics" and metrics is not None:
                body, content_type = metrics()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/health/live":
                self._reply(200, {"status": "ok"})
            elif self.path == "/health/ready":
                ready, results = run_checks(checks)
                self._reply(200 if ready else 503, {"ready": ready, "checks": results})
            else:
                self._reply(404, {"detail": "not found"})

        def _reply(self, code: int, body: dict[str, object]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("health: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health-server", daemon=True).start()
    served = "/health/live, /health/ready" + (", /metrics" if metrics is not None else "")
    log.info("health endpoints on %s:%d (%s)", host, server.server_address[1], served)
    return server
