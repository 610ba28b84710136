"""The kopf layer, kept thin: watch streams feed the controller's cache and queue; nothing else.

All handlers are ``async``: kopf runs sync handlers in a thread pool, and the controller's queue and
cache belong to the event loop.

Only *event-watching* handlers are used (no ``on.create``/``on.update``): they store no progress
annotations on the resources, so the operator itself never writes to an object just to remember that
it saw it. The reconcile is level-based and runs from the controller's work queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf
from lightkube import AsyncClient

from aperag_operator.builders.children import CHILD_KINDS
from aperag_operator.builders.common import MANAGED_BY
from aperag_operator.builders.kubeblocks_cluster import CLUSTER_PLURAL, KUBEBLOCKS_GROUP
from aperag_operator.config import CONFIG
from aperag_operator.controller import Controller
from aperag_operator.database_hooks import DatabaseHooks
from aperag_operator.kube import PLURALS
from aperag_operator.spec.model import API_GROUP, API_VERSION, PLURAL

log = logging.getLogger("aperag_operator")

STATE: dict[str, Any] = {}


def controller() -> Controller:
    ctl: Controller = STATE["controller"]
    return ctl


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Silent connection loss: the server closes each watch after server_timeout, the client gives up
    # after client_timeout, so a dead connection is noticed within ~client_timeout seconds.
    settings.watching.server_timeout = CONFIG.watch_server_timeout
    settings.watching.client_timeout = CONFIG.watch_client_timeout
    settings.watching.connect_timeout = CONFIG.watch_connect_timeout
    settings.networking.request_timeout = CONFIG.request_timeout
    # kopf would post every log line of a handler as a Kubernetes Event (a write): we post our own.
    settings.posting.enabled = False
    # No cluster-wide CRD/namespace scanning: the operator watches exactly what it is told.
    settings.scanning.disabled = True
    settings.peering.standalone = True
    settings.batching.batch_window = 0.05
    client = AsyncClient(field_manager="aperag-operator")
    ctl = Controller(client, hooks=CONFIG.hooks, workers=CONFIG.workers, child_delay=CONFIG.child_event_delay)
    if CONFIG.hooks is None:  # the default: the databases (managed KubeBlocks Clusters or external)
        ctl.hooks = DatabaseHooks(client, ctl.cache.put, ctl.cache.remove).hooks()
    ctl.start()
    STATE["controller"] = ctl
    STATE["client"] = client
    STATE["resync"] = asyncio.create_task(_resync_loop(ctl, CONFIG.resync_interval))
    log.info("aperag-operator started", extra={"workers": CONFIG.workers, "resync": CONFIG.resync_interval})


async def _resync_loop(ctl: Controller, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        ctl.resync()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    task = STATE.pop("resync", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ctl = STATE.pop("controller", None)
    if ctl is not None:
        await ctl.stop()
    client = STATE.pop("client", None)
    if client is not None:
        await client.close()


@kopf.on.probe(id="queue")
async def queue_probe(**_: Any) -> dict[str, int]:
    ctl = STATE.get("controller")
    return {"queued": ctl.queue.qsize(), "reconciles": ctl.reconciles} if ctl else {}


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def aperag_event(event: kopf.RawEvent, **_: Any) -> None:
    controller().on_parent_event(event.get("type"), dict(event["object"]))


def _register_child(api_version: str, kind: str) -> None:
    group, _, version = api_version.rpartition("/")

    async def child_event(event: kopf.RawEvent, **_: Any) -> None:
        controller().on_child_event(event.get("type"), dict(event["object"]))

    child_event.__name__ = f"child_{kind.lower()}"
    kopf.on.event(
        group,
        version,
        PLURALS[kind],
        id=f"child-{kind.lower()}",
        labels={"app.kubernetes.io/managed-by": MANAGED_BY},
    )(child_event)


for _api_version, _kind in CHILD_KINDS:
    _register_child(_api_version, _kind)


@kopf.on.event("", "v1", "secrets")
async def secret_event(event: kopf.RawEvent, **_: Any) -> None:
    controller().on_secret_event(dict(event["object"]))


# KubeBlocks Clusters, mapped to their ApeRAG by the app.kubernetes.io/instance label (a Cluster under
# the Retain policy has no owner reference). With scanning disabled, kopf only watches resources that
# exist at startup: without the KubeBlocks CRD this handler stays idle and nothing fails; the periodic
# resync (and the gate, which reads the Clusters itself) covers a KubeBlocks installed later.
@kopf.on.event(KUBEBLOCKS_GROUP, "v1", CLUSTER_PLURAL, labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def cluster_event(event: kopf.RawEvent, **_: Any) -> None:
    controller().on_instance_labeled_event(event.get("type"), dict(event["object"]))
