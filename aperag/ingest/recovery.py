"""The in-process reconciler: what `aperag beat` does for a cluster, a thread does in an `aperag serve`
that indexes in-process (embedded mode, or no Redis).

In embedded mode (`sole_owner`) every `pending`/`indexing` document is re-queued at start: nothing
else can be working on them, a crash or a kill left them there. Then every
RECONCILE_INTERVAL_SECONDS, documents stuck longer than STUCK_AFTER_SECONDS that this process is not
already working on are re-queued, or failed once they used up their attempts; ready documents whose
graph was never built (indexed before revision 0004) or whose build was lost get it queued
(aperag.ingest.pipeline.graph_backlog).
"""

from __future__ import annotations

import logging
import threading

from aperag.context import AppContext
from aperag.ingest.dispatch import InProcessDispatcher
from aperag.ingest.pipeline import reconcile

log = logging.getLogger(__name__)


class InProcessRecovery:
    def __init__(self, ctx: AppContext, dispatcher: InProcessDispatcher, *, sole_owner: bool) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.sole_owner = sole_owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aperag-recovery", daemon=True)

    def recover_now(self) -> dict[str, int]:
        result = reconcile(
            self.ctx, older_than_seconds=0, exclude=self.dispatcher.tracked(),
            exclude_graphs=self.dispatcher.graph_tracked(),
        )  # fmt: skip
        if any(result.values()):
            log.info("recovered documents left by an earlier run: %s", result)
        return result

    def start(self) -> None:
        if self.sole_owner:
            self.recover_now()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ctx.settings.reconcile_interval_seconds):
            try:
                result = reconcile(
                    self.ctx, exclude=self.dispatcher.tracked(), exclude_graphs=self.dispatcher.graph_tracked()
                )
                if any(result.values()):
                    log.info("reconcile: %s", result)
            except Exception as exc:  # the database may be restarting; try again next interval
                log.warning("reconcile failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
