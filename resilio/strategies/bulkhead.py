"""Bulkhead: run at most `max_concurrency` calls at once; queue a bounded few more.

Slots are counted by the core's concurrency gate (`_core.Gate`): taking a free
slot is one atomic step, with no lock, no event and no allocation. Only when
every slot is taken does a call join a FIFO queue of at most `max_queue`
waiters (each with its own `anyio.Event`, so it works on asyncio and trio).
A finishing call hands its slot straight to the oldest waiter, without giving
it back to the gate, so a newcomer can never overtake the queue.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import anyio

from resilio import _core
from resilio.clock import Clock
from resilio.errors import BulkheadFullError
from resilio.strategies._base import WAIT, GateStrategy

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_QUEUE_TIMEOUT", "Bulkhead"]

#: Calls that may wait for a slot; 0 refuses at once when all slots are taken.
DEFAULT_MAX_QUEUE = 0
#: Seconds a queued call waits for a slot; None waits as long as it takes.
DEFAULT_QUEUE_TIMEOUT: float | None = None


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Bulkhead(GateStrategy):
    """Run at most `max_concurrency` calls at once.

    When every slot is taken, up to `max_queue` calls wait for one in
    arrival order (at most `queue_timeout` seconds, if set); any other call
    is refused with `BulkheadFullError`. A cancelled call, running or
    queued, never keeps or loses a slot.

    The queue is served on one event loop: share a bulkhead with a queue
    across threads only if each thread's calls cannot queue (`max_queue=0`).
    """

    __slots__ = (
        "_enter",
        "_err",
        "_exit",
        "_gate",
        "_handoffs",
        "_max_queue",
        "_ok",
        "_queue_timeout",
        "_rejected",
        "_try_enter",
        "_waiters",
    )

    def __init__(
        self,
        max_concurrency: int,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        queue_timeout: float | None = DEFAULT_QUEUE_TIMEOUT,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise TypeError(f"max_concurrency must be an int, got {max_concurrency!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int):
            raise TypeError(f"max_queue must be an int, got {max_queue!r}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue!r}")
        if queue_timeout is not None:
            if isinstance(queue_timeout, bool) or not isinstance(queue_timeout, (int, float)):
                raise TypeError(f"queue_timeout must be a number or None, got {queue_timeout!r}")
            if not math.isfinite(queue_timeout) or queue_timeout <= 0:
                raise ValueError(
                    f"queue_timeout must be a finite number > 0 or None, got {queue_timeout!r}"
                )
            if max_queue == 0:
                raise ValueError(
                    f"queue_timeout={queue_timeout!r} needs max_queue > 0: nothing ever queues"
                )
            queue_timeout = float(queue_timeout)
        self._gate = _core.Gate(max_concurrency)
        self._try_enter = self._gate.try_enter
        self._exit = self._gate.exit
        self._max_queue = max_queue
        self._queue_timeout = queue_timeout
        self._waiters: deque[_Waiter] = deque()
        # Slots handed to waiters and refusals by this strategy. The gate's own
        # rejected count also counts calls that then queued, so it is not used.
        self._handoffs = 0
        self._rejected = 0
        self._make_hooks()

    @property
    def kind(self) -> str:
        return "bulkhead"

    @property
    def max_concurrency(self) -> int:
        """Most calls running at once."""
        return self._gate.limit

    @property
    def max_queue(self) -> int:
        """Most calls waiting for a slot."""
        return self._max_queue

    @property
    def queue_timeout(self) -> float | None:
        """Seconds a queued call waits at most (None: no limit)."""
        return self._queue_timeout

    @property
    def in_flight(self) -> int:
        """Calls holding a slot (running, or handed a slot and about to run)."""
        return self._gate.in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    @property
    def admitted(self) -> int:
        """Calls given a slot (at once or from the queue)."""
        return self._gate.admitted + self._handoffs

    @property
    def rejected(self) -> int:
        """Calls refused: queue full or queue timeout."""
        return self._rejected

    def _make_hooks(self) -> None:
        """Build `_enter`, `_ok` and `_err` as closures over the gate's bound methods."""
        # Instance slots shadowing the methods: a closure skips a method's attribute
        # loads, which are most of what a bulkhead costs per call.
        try_enter = self._try_enter
        exit_ = self._exit
        waiters = self._waiters
        enter_slow = self._enter_slow
        release = self._release

        def enter() -> Any:
            # No barging check is needed: while anyone is queued every slot is held
            # (exits hand slots to waiters instead of freeing them), so try_enter fails.
            if try_enter():
                return None
            return enter_slow()

        def ok(token: Any, result: Any) -> None:
            if waiters:
                release()
            else:
                exit_()

        def err(token: Any, exc: BaseException) -> None:
            # Failure or cancellation alike: the slot goes on or back, never lost.
            if waiters:
                release()
            else:
                exit_()

        self._enter = enter  # type: ignore[method-assign]
        self._ok = ok  # type: ignore[method-assign]
        self._err = err  # type: ignore[method-assign]

    def _fast_kind(self) -> str:
        """Tell the compiled runner it may take and give back slots in C."""
        return "gate"

    def _enter_slow(self) -> Any:
        if len(self._waiters) < self._max_queue:
            return WAIT
        raise self._full("all slots taken and the queue is full")

    async def _enter_wait(self) -> Any:
        waiters = self._waiters
        # Called on its own (not right after a refused _enter), a free slot may exist:
        # queueing then would wait for a hand-off that never comes.
        if not waiters and self._try_enter():
            return None
        if len(waiters) >= self._max_queue:
            raise self._full("all slots taken and the queue is full")
        w = _Waiter()
        waiters.append(w)
        try:
            if self._queue_timeout is None:
                await w.event.wait()
            else:
                with anyio.move_on_after(self._queue_timeout):
                    await w.event.wait()
        except BaseException:
            if w.granted:
                # Handed a slot just as it was cancelled: pass it on, never drop it.
                self._release()
            else:
                waiters.remove(w)
            raise
        if w.granted:  # also when the slot came in the same tick as the timeout
            return None
        waiters.remove(w)
        raise self._full(f"no slot free within queue_timeout={self._queue_timeout:g} s")

    def _release(self) -> None:
        waiters = self._waiters
        if waiters:
            w = waiters.popleft()
            w.granted = True
            self._handoffs += 1
            w.event.set()
        else:
            self._exit()

    def _full(self, why: str) -> BulkheadFullError:
        self._rejected += 1
        return BulkheadFullError(
            f"{self.label}: {why} (max_concurrency={self._gate.limit}, "
            f"max_queue={self._max_queue})",
            retry_after=None,
            strategy=self.label,
        )

    def __repr__(self) -> str:
        return (
            f"Bulkhead({self._gate.limit}, max_queue={self._max_queue}, "
            f"queue_timeout={self._queue_timeout!r}, name={self.name!r})"
        )
