"""Clocks: where strategies read time and sleep.

Strategies never read a global clock; they take a `Clock`. The system clock is
monotonic; `resilio.testing.FakeClock` gives virtual time for exact tests.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Time source for strategies: monotonic seconds, the same in ns, and sleep."""

    def now(self) -> float: ...

    def now_ns(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The process's monotonic clock; sleeps on the running event loop."""

    __slots__ = ("now", "now_ns")

    def __init__(self) -> None:
        # Bound builtins: the hot path calls these without a Python frame.
        self.now = time.monotonic
        self.now_ns = time.monotonic_ns

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop (asyncio or trio)."""
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
