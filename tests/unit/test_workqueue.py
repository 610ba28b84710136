"""The work queue: coalescing, re-runs of keys changed while processed, delayed adds, backoff."""

from __future__ import annotations

import asyncio

import pytest
from aperag_operator.workqueue import WorkQueue, backoff_delay


def test_backoff_grows_exponentially_up_to_the_cap_with_bounded_jitter() -> None:
    plain = [backoff_delay(n, base=0.5, cap=30, jitter=0) for n in range(1, 10)]
    assert plain == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    spread = {round(backoff_delay(3, base=0.5, cap=30, jitter=0.2), 6) for _ in range(200)}
    assert len(spread) > 10 and all(1.6 <= d <= 2.4 for d in spread)


async def test_a_queued_key_is_queued_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert q.depth() == 2
    assert [await q.get(), await q.get()] == ["a", "b"]


async def test_a_key_changed_while_processed_runs_again_after() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    key = await q.get()
    q.add("a")  # a change arrives during the reconcile
    assert q.depth() == 0  # never two reconciles of one key at once
    q.done(key)
    assert q.depth() == 1 and await q.get() == "a"


async def test_add_after_keeps_the_earliest_delay() -> None:
    q: WorkQueue[str] = WorkQueue()
    loop = asyncio.get_running_loop()
    start = loop.time()
    q.add_after("a", 5.0)
    q.add_after("a", 0.1)  # sooner wins
    q.add_after("a", 3.0)  # later is ignored
    assert await asyncio.wait_for(q.get(), timeout=2) == "a"
    assert 0.05 <= loop.time() - start < 2
    q.done("a")
    q.close()


async def test_failures_back_off_and_success_forgets() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base=0.05, backoff_cap=1.0, jitter=0)
    delays = []
    for _ in range(4):  # each retry comes back and fails again
        delays.append(q.add_rate_limited("a"))
        assert await asyncio.wait_for(q.get(), timeout=2) == "a"
        q.done("a")
    assert delays == [0.05, 0.1, 0.2, 0.4]
    q.forget("a")
    assert q.failures("a") == 0 and q.add_rate_limited("a") == 0.05
    q.close()


async def test_failing_again_before_the_retry_does_not_lengthen_the_backoff() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base=1.0, jitter=0)
    assert q.add_rate_limited("a") == 1.0
    again = q.add_rate_limited("a")  # an event ran it early and it failed again
    assert 0.5 < again <= 1.0 and q.failures("a") == 1
    q.close()


async def test_discard_cancels_pending_retries() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base=0.05, jitter=0)
    q.add_rate_limited("a")
    q.discard("a")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), timeout=0.3)


async def test_a_resync_does_not_cut_a_backoff_short() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base=5.0, jitter=0)
    q.add_rate_limited("a")
    q.add_unless_backing_off("a")  # the periodic resync
    assert q.depth() == 0
    q.add("a")  # an event (a spec change) still goes through at once
    assert q.depth() == 1
    q.close()
