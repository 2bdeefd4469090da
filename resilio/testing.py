"""Test helpers: a virtual clock that makes time-based tests exact and instant."""

from __future__ import annotations

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to.

    `sleep(s)` advances virtual time by `s` at once (and yields to the event
    loop once, so it is still a cancellation point). Strategies given this
    clock see backoff delays, limiter refills, break durations and windows in
    virtual time.
    """

    __slots__ = ("_ns", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        self._ns = round(start * 1e9)
        #: Every duration passed to sleep(), in order (handy for backoff tests).
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Virtual seconds."""
        return self._ns / 1e9

    def now_ns(self) -> int:
        """Virtual nanoseconds."""
        return self._ns

    def advance(self, seconds: float) -> None:
        """Move virtual time forward."""
        if seconds < 0:
            raise ValueError(f"cannot move time backwards by {seconds!r} s")
        self._ns += round(seconds * 1e9)

    async def sleep(self, seconds: float) -> None:
        """Advance virtual time by `seconds` and yield once."""
        self.sleeps.append(seconds)
        if seconds > 0:
            self._ns += round(seconds * 1e9)
        await anyio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now()!r})"
