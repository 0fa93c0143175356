"""Polling a condition that has no event to await (a database row, a log line), always bounded."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Poll ``predicate`` (plain or async) until it returns something truthy, and return that.

    Fails the test with ``what`` after ``timeout`` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None
