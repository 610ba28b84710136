"""The operator's own HTTP endpoints: ``/healthz`` (liveness), ``/readyz`` and ``/metrics`` (Prometheus
text, from metrics.py).

Liveness answers whether the operator can do its job, not merely whether its process runs: it fails
(503) when no request to the API server has succeeded for ``contact_window`` seconds (the API server
is unreachable, or the credentials were revoked), so that Kubernetes restarts a stuck operator and
the failure shows. A heartbeat request keeps this true on a quiet cluster. Readiness is the start-up
barrier: every watched kind has been listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("aperag_operator")


@dataclass
class Health:
    contact_window: float = 120.0
    #: Until the first successful request, the operator counts as alive for this long (start-up).
    startup_grace: float = 60.0
    started: float = field(default_factory=time.monotonic)
    last_contact: float | None = None
    synced: bool = False
    details: Callable[[], dict[str, Any]] = field(default=lambda: {})

    def contact(self) -> None:
        self.last_contact = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self.last_contact is None:
            if now - self.started < self.startup_grace:
                return True, "starting"
            return False, f"no request to the API server has succeeded in {now - self.started:.0f}s"
        silence = now - self.last_contact
        if silence > self.contact_window:
            return False, f"no request to the API server has succeeded for {silence:.0f}s"
        return True, "ok"

    def report(self) -> dict[str, Any]:
        alive, reason = self.alive()
        since = None if self.last_contact is None else round(time.monotonic() - self.last_contact, 1)
        return {
            "alive": alive,
            "reason": reason,
            "synced": self.synced,
            "lastContactSecondsAgo": since,
            **self.details(),
        }


class HealthServer:
    def __init__(
        self,
        health: Health,
        url: str,
        heartbeat: Callable[[], Awaitable[None]],
        interval: float,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"unsupported liveness URL {url!r}: only http:// is served")
        self.host = parts.hostname or "0.0.0.0"
        self.port = parts.port or 8080
        self.path = parts.path or "/healthz"
        self.heartbeat = heartbeat
        self.interval = interval
        self._runner: web.AppRunner | None = None
        self._beat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get(self.path, self._liveness), web.get("/readyz", self._readiness)])
        if self.metrics is not None:
            app.add_routes([web.get("/metrics", self._metrics)])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._beat = asyncio.create_task(self._heartbeat(), name="heartbeat")

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        if self._runner is not None:
            await self._runner.cleanup()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the liveness endpoint reports it; say it once per beat
                log.warning("cannot reach the API server: %s", err)
            await asyncio.sleep(self.interval)

    async def _liveness(self, _request: web.Request) -> web.Response:
        report = self.health.report()
        return web.json_response(report, status=200 if report["alive"] else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        assert self.metrics is not None
        body, content_type = self.metrics()
        # aiohttp wants the charset apart from the media type.
        media_type, _, params = content_type.partition(";")
        charset = params.partition("charset=")[2].strip() or None
        return web.Response(body=body, content_type=media_type.strip(), charset=charset)

    async def _readiness(self, _request: web.Request) -> web.Response:
        report = self.health.report()
        return web.json_response(report, status=200 if report["synced"] else 503)
