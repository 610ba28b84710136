"""A coalescing work queue keyed by ApeRAG, in the manner of client-go's rate-limited queue.

* ``add``: a key that is queued is not queued twice; a key that is being processed is queued once
  more when its processing ends (so a change seen during a reconcile is never lost, and reconciles of
  one key never overlap).
* ``add_after``: the key comes back after a delay (a reconcile asked to be run again: a Job to poll, a
  deadline to check), without a timer of the caller's own. The earliest pending delay wins.
* ``add_rate_limited`` / ``forget``: a failing key comes back after an exponential, capped, jittered
  delay; a success resets it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float) -> float:
    """The delay before retry number ``failures`` (1 for the first): ``base * 2**(failures-1)``, at most
    ``cap``, spread by up to +-``jitter`` (a fraction) so that many failing keys do not retry in step."""
    delay = min(cap, base * 2.0 ** max(0, failures - 1))
    return max(0.0, delay * (1.0 + jitter * (2.0 * random.random() - 1.0)))


class WorkQueue(Generic[K]):
    def __init__(self, *, backoff_base: float = 0.5, backoff_cap: float = 120.0, jitter: float = 0.2) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._queued_at: dict[K, float] = {}
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.jitter = jitter

    # --- adding ---------------------------------------------------------------------------------------

    def add(self, k: K) -> None:
        if k in self._processing:
            self._dirty.add(k)
            return
        if k in self._queued:
            return
        self._queued.add(k)
        self._queued_at[k] = asyncio.get_running_loop().time()
        self._queue.put_nowait(k)

    def add_unless_backing_off(self, k: K) -> None:
        """``add``, except for a key waiting out its backoff: a periodic resync must not turn a failing
        key's exponential backoff back into a retry every resync interval."""
        if self._failures.get(k) and k in self._timers:
            return
        self.add(k)

    def add_after(self, k: K, delay: float) -> None:
        if delay <= 0:
            self.add(k)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(k)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[k] = (when, loop.call_at(when, self._fire, k))

    def _fire(self, k: K) -> None:
        self._timers.pop(k, None)
        self.add(k)

    def add_rate_limited(self, k: K) -> float:
        """Re-adds a key whose processing failed, after its backoff delay; returns the delay.

        Only a failed *retry* lengthens the backoff: when the key failed again before its retry came
        (an event ran it early), the pending retry stands, so a burst of events cannot push one key's
        backoff to the cap within a second."""
        pending = self._timers.get(k)
        if pending is not None and self._failures.get(k):
            return max(0.0, pending[0] - asyncio.get_running_loop().time())
        failures = self._failures.get(k, 0) + 1
        self._failures[k] = failures
        delay = backoff_delay(failures, base=self.backoff_base, cap=self.backoff_cap, jitter=self.jitter)
        self.add_after(k, delay)
        return delay

    def forget(self, k: K) -> None:
        """The key was processed successfully: its next failure starts the backoff again."""
        self._failures.pop(k, None)

    def failures(self, k: K) -> int:
        return self._failures.get(k, 0)

    def discard(self, k: K) -> None:
        """The key is gone for good (its resource was deleted): drop its timers and failure count."""
        timer = self._timers.pop(k, None)
        if timer is not None:
            timer[1].cancel()
        self._failures.pop(k, None)

    # --- processing ---------------------------------------------------------------------------------

    async def get(self) -> K:
        k = await self._queue.get()
        self._queued.discard(k)
        self._queued_at.pop(k, None)
        self._processing.add(k)
        return k

    def done(self, k: K) -> None:
        self._processing.discard(k)
        if k in self._dirty:
            self._dirty.discard(k)
            self.add(k)

    # --- observing ----------------------------------------------------------------------------------

    def depth(self) -> int:
        return len(self._queued)

    def oldest_age(self, now: Callable[[], float] | None = None) -> float:
        """Seconds the longest-waiting queued key has waited (0 when empty)."""
        if not self._queued_at:
            return 0.0
        current = now() if now else asyncio.get_running_loop().time()
        return max(0.0, current - min(self._queued_at.values()))

    def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
