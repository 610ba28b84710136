"""List, then watch, one kind in one scope, into the cache; list again after every gap.

Why the operator does not use kopf's watch streams for this (docs/design.md): kopf reports the objects
of a re-list as plain events, so an object deleted while a watch was down (a 410 after an API server
restart) is never reported gone; its label filters are applied on the client, so a child whose
``managed-by`` label is removed silently drops out of sight; and it cannot tell when the initial list
of a kind is complete for handlers that only watch. An informer here:

* lists, stores the list in the cache as the whole truth for its kind and scope (objects missing from
  it are gone), marks the kind *listed* (the start-up barrier), then watches from the list's
  resourceVersion;
* ends each watch request itself after ``server_timeout`` seconds and resumes from the last
  resourceVersion seen, so a connection that died silently is replaced within that time;
* after any gap (a watch request failed, or the server answered 410) and every ``relist_interval``,
  lists again before watching again;
* treats a kind the API server does not serve (no CRD) as listed-and-empty and looks again every
  ``missing_poll`` seconds, so KubeBlocks or KEDA installed later are picked up without a restart;
* never stops on an error: it logs, backs off (capped) and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aperag_operator.builders.common import Obj
from aperag_operator.cache import Cache, Change, KindState, resource_version
from aperag_operator.kinds import Kind, key
from aperag_operator.kubeapi import ApiFailure, Failure, KubeApi
from aperag_operator.workqueue import backoff_delay

log = logging.getLogger("aperag_operator")

OnChanges = Callable[[Kind, list[Change]], None]
OnState = Callable[[Kind, str, KindState], None]


class Informer:
    def __init__(
        self,
        api: KubeApi,
        cache: Cache,
        kind: Kind,
        scope: str,
        *,
        on_changes: OnChanges,
        on_state: OnState,
        keep: Callable[[Obj], bool] = lambda _obj: True,
        transform: Callable[[Obj], Obj] = lambda obj: obj,
        server_timeout: int = 60,
        relist_interval: float = 600.0,
        missing_poll: float = 30.0,
    ) -> None:
        self.api = api
        self.cache = cache
        self.kind = kind
        self.scope = scope
        self.on_changes = on_changes
        self.on_state = on_state
        self.keep = keep
        self.transform = transform
        self.server_timeout = server_timeout
        self.relist_interval = relist_interval
        self.missing_poll = missing_poll
        self.state = KindState.PENDING
        self.lists = 0
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def __repr__(self) -> str:
        return f"Informer({self.kind} in {self.scope})"

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self.kind} {self.scope}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.cache.drop_state(self.kind.type_path, self.scope)

    # --- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                since = await self._list()
                if since is None:
                    await asyncio.sleep(self.missing_poll)
                    continue
                self._failures = 0
                await self._watch(since)
            except asyncio.CancelledError:
                raise
            except ApiFailure as failure:
                await self._back_off(failure)
            except Exception:  # never let a watch die: the cache would go stale without a word
                log.exception("%r failed; listing again", self)
                await self._back_off(None)

    async def _back_off(self, failure: ApiFailure | None) -> None:
        self._failures += 1
        delay = backoff_delay(self._failures, base=1.0, cap=30.0, jitter=0.2)
        if failure is not None and failure.kind is Failure.GONE:
            delay = 0.0  # the ordinary end of an old resourceVersion: list again at once
        elif failure is not None and failure.kind is Failure.THROTTLED and self._failures < 3:
            # Also what a watch of a kind whose CRD was just created gets while the API server's watch
            # cache initialises: expected, brief.
            log.debug("%r: %s; listing again in %.1fs", self, failure, delay)
        else:
            level = logging.ERROR if failure and failure.kind is Failure.UNAUTHORIZED else logging.WARNING
            log.log(level, "%r: %s; listing again in %.1fs", self, failure or "error", delay)
        await asyncio.sleep(delay)

    async def _list(self) -> int | None:
        """Lists into the cache; returns the list's resourceVersion, or None when the kind cannot be
        listed (not installed, forbidden)."""
        try:
            items, list_rv = await self.api.list(self.kind, self.scope)
        except ApiFailure as failure:
            if failure.kind is Failure.NOT_FOUND:
                self._set_state(KindState.NOT_INSTALLED)
                self._replace([], 0)
                return None
            if failure.kind is Failure.FORBIDDEN:
                if self.state is not KindState.FORBIDDEN:
                    log.error(
                        "%r: not allowed to list %s (%s): the operator cannot see these objects; check its RBAC",
                        self,
                        self.kind,
                        failure.message,
                    )
                self._set_state(KindState.FORBIDDEN)
                return None
            raise
        self.lists += 1
        self._replace([self.transform(o) for o in items if self.keep(o)], list_rv)
        self._set_state(KindState.LISTED)
        return list_rv

    def _replace(self, items: list[Obj], list_rv: int) -> None:
        changes = self.cache.replace(self.kind.type_path, self.scope, items, list_rv)
        if changes:
            self.on_changes(self.kind, changes)

    def _set_state(self, state: KindState) -> None:
        if state is not self.state:
            previous, self.state = self.state, state
            self.cache.set_state(self.kind.type_path, self.scope, state)
            log.log(
                logging.INFO if state is KindState.LISTED or previous is not KindState.PENDING else logging.DEBUG,
                "%s in %s: %s",
                self.kind,
                self.scope,
                state.value,
            )
            self.on_state(self.kind, self.scope, state)

    async def _watch(self, since: int) -> None:
        """Applies watch events until a gap or the re-list interval; returns to re-list.

        Each watch request is ended by the operator after ``server_timeout`` seconds and the next one
        resumes from the last resourceVersion seen (no re-list): so a connection that died without a
        word is replaced within ``server_timeout`` seconds, and a quiet kind costs one request a period.
        The server's own timeout is set later, as a backstop."""
        deadline = time.monotonic() + self.relist_interval
        last = since
        while time.monotonic() < deadline:
            window = min(float(self.server_timeout), max(1.0, deadline - time.monotonic()))
            events = self.api.watch(self.kind, self.scope, last, server_timeout=self.server_timeout + 30)
            iterator = events.__aiter__()
            try:
                async with asyncio.timeout(window):
                    while True:
                        try:
                            event_type, obj = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                        last = max(last, resource_version(obj))
                        self._apply_event(event_type, obj)
            except TimeoutError:
                pass  # the end of this request's window: resume from ``last``
            finally:
                with contextlib.suppress(Exception):
                    await iterator.aclose()  # type: ignore[attr-defined]

    def _apply_event(self, event_type: str, obj: Obj) -> None:
        change: Change | None
        if event_type == "DELETED" or not self.keep(obj):
            change = self.cache.remove(key(obj))
        else:
            change = self.cache.put(self.transform(obj))
        if change is not None:
            self.on_changes(self.kind, [change])
