"""Errors raised by resilio strategies.

Every rejection is an `ExecutionRejectedError` that says which policy refused
and when trying again could succeed (`retry_after`, seconds, or None).
"""

from __future__ import annotations

__all__ = [
    "BrokenCircuitError",
    "BulkheadFullError",
    "ExecutionRejectedError",
    "IsolatedCircuitError",
    "RateLimitedError",
    "ResilioError",
    "TimeoutRejectedError",
]


class ResilioError(Exception):
    """Base of every error resilio raises itself."""


class ExecutionRejectedError(ResilioError):
    """A strategy refused to run the call.

    `retry_after` is the number of seconds after which the same call could be
    admitted (None when unknown); `strategy` names the refusing policy.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, strategy: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.strategy = strategy


class BrokenCircuitError(ExecutionRejectedError):
    """The circuit is open (or half-open with every probe slot taken)."""


class IsolatedCircuitError(BrokenCircuitError):
    """The circuit was isolated by hand and stays open until reset()."""


class RateLimitedError(ExecutionRejectedError):
    """The rate limiter has no token for this call within its max_wait."""


class BulkheadFullError(ExecutionRejectedError):
    """The bulkhead has no free slot and its queue is full or timed out."""


class TimeoutRejectedError(ExecutionRejectedError, TimeoutError):
    """The call did not finish within its timeout; it was cancelled."""
