"""resilio: resilience strategies for Python services, on a compiled lock-free core."""

from __future__ import annotations

from resilio._core import core_impl
from resilio.clock import Clock, SystemClock
from resilio.context import deadline
from resilio.errors import (
    BrokenCircuitError,
    BulkheadFullError,
    ExecutionRejectedError,
    IsolatedCircuitError,
    RateLimitedError,
    ResilioError,
    TimeoutRejectedError,
)
from resilio.pipeline import Pipeline
from resilio.standard import standard_pipeline
from resilio.strategies.bulkhead import Bulkhead
from resilio.strategies.chaos import FaultInjection, LatencyInjection, OutcomeInjection
from resilio.strategies.circuit_breaker import CircuitBreaker, CircuitState
from resilio.strategies.fallback import Fallback
from resilio.strategies.hedging import Hedging
from resilio.strategies.rate_limiter import RateLimiter
from resilio.strategies.retry import Backoff, Retry, RetryBudget
from resilio.strategies.timeout import Timeout

__all__ = [
    "Backoff",
    "BrokenCircuitError",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitState",
    "Clock",
    "ExecutionRejectedError",
    "Fallback",
    "FaultInjection",
    "Hedging",
    "IsolatedCircuitError",
    "LatencyInjection",
    "OutcomeInjection",
    "Pipeline",
    "RateLimitedError",
    "RateLimiter",
    "ResilioError",
    "Retry",
    "RetryBudget",
    "SystemClock",
    "Timeout",
    "TimeoutRejectedError",
    "core_impl",
    "deadline",
    "standard_pipeline",
]

__version__ = "0.1.0"
