"""Waiting on conditions with a deadline: the only way tests wait (no fixed sleeps)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    check: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.2, what: str
) -> T: ...


@overload
async def wait_until(check: Callable[[], T], *, timeout: float, interval: float = 0.2, what: str) -> T: ...


async def wait_until(check: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str) -> Any:
    """Polls ``check`` until it returns a truthy value and returns that value.

    Raises TimeoutError naming ``what`` and the last value (or failed assertion) seen, so a failing
    test says what it was waiting for and how far it got.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except AssertionError as err:
            last = err
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(interval)


def poll_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """``wait_until`` for synchronous code (session fixtures that run before any event loop)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except AssertionError as err:
            last = err
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)
