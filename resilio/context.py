"""The deadline of the current call, visible to everything it runs.

Timeouts (and the ASGI middleware, from the incoming `Request-Timeout` header)
record an absolute deadline on the monotonic clock in a context variable, so a
retry, a hedge or an outbound HTTP client inside the call can read how much
time is left with `resilio.deadline()`.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

__all__ = ["deadline", "deadline_at", "pop_deadline", "push_deadline"]

# Absolute deadline in time.monotonic() seconds; None when no timeout applies.
_DEADLINE: ContextVar[float | None] = ContextVar("resilio_deadline", default=None)
_monotonic = time.monotonic


def deadline() -> float | None:
    """Seconds left before the enclosing deadline (>= 0), or None if there is none."""
    d = _DEADLINE.get()
    if d is None:
        return None
    left = d - _monotonic()
    return left if left > 0.0 else 0.0


def deadline_at() -> float | None:
    """The enclosing deadline as a time.monotonic() value, or None."""
    return _DEADLINE.get()


def push_deadline(at: float) -> tuple[float, Token[float | None]]:
    """Enter a deadline at monotonic time `at`, never later than the enclosing one.

    Returns the effective deadline and a token for `pop_deadline`.
    """
    outer = _DEADLINE.get()
    if outer is not None and outer < at:
        at = outer
    return at, _DEADLINE.set(at)


def pop_deadline(token: Token[float | None]) -> None:
    """Leave the deadline entered with `push_deadline`."""
    _DEADLINE.reset(token)
