"""The kopf layer, kept thin: it runs the engine for the lifetime of the operator process.

kopf gives the process its life cycle (start-up and clean-up activities, signal handling, logging).
The watches are the engine's own informers (informer.py explains why not kopf's), so no kopf
resource handler is registered and kopf never writes to a watched object.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx2 as httpx
import kopf
from lightkube import AsyncClient

from aperag_operator.config import CONFIG
from aperag_operator.contributors import default_contributors
from aperag_operator.controller import Controller, contact_details
from aperag_operator.health import Health, HealthServer
from aperag_operator.kinds import APERAG
from aperag_operator.kubeapi import KubeApi

log = logging.getLogger("aperag_operator")

STATE: dict[str, Any] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf would post log lines as Kubernetes Events (writes); the engine posts its own.
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.peering.standalone = True
    health = Health(contact_window=CONFIG.contact_window)
    client = AsyncClient(field_manager="aperag-operator", timeout=httpx.Timeout(CONFIG.request_timeout))
    api = KubeApi(client, on_contact=health.contact)
    ctl = Controller(
        api,
        default_contributors(),
        namespaces=CONFIG.namespaces,
        workers=CONFIG.workers,
        child_delay=CONFIG.child_event_delay,
        resync_interval=CONFIG.resync_interval,
        relist_interval=CONFIG.relist_interval,
        watch_timeout=CONFIG.watch_server_timeout,
        health=health,
    )
    health.details = lambda: contact_details(ctl)
    STATE["controller"] = ctl
    STATE["api"] = api
    if CONFIG.liveness:
        scope = CONFIG.namespaces[0] if CONFIG.namespaces else "*"

        async def heartbeat() -> None:  # a cheap read the operator is always allowed to make
            await api.probe(APERAG, scope)

        server = HealthServer(health, CONFIG.liveness, heartbeat, CONFIG.heartbeat_interval, metrics=ctl.metrics.render)
        await server.start()
        STATE["health"] = server
    ctl.start()
    log.info(
        "aperag-operator started",
        extra={"workers": CONFIG.workers, "resync": CONFIG.resync_interval, "namespaces": CONFIG.namespaces or "*"},
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    ctl = STATE.pop("controller", None)
    if ctl is not None:
        await ctl.stop()
    server = STATE.pop("health", None)
    if server is not None:
        await server.stop()
    api = STATE.pop("api", None)
    if api is not None:
        await api.close()
