"""Timeout: cancel a call that runs past its time and raise TimeoutRejectedError.

On asyncio, timeouts do not allocate a loop timer per call (as
`asyncio.timeout` does). Deadlines are filed into 1 ms slots of a per-loop
`_DeadlineWheel`; one loop timer is armed for the earliest slot, and when it
fires every task whose deadline has passed is cancelled. A timeout therefore
never fires early and fires at most one slot (1 ms) plus the loop's own
latency late. On other event loops (trio) a native cancel scope is used.

The deadline is also recorded in `resilio.context`, so code inside the call
reads the time left with `resilio.deadline()`, and a nested timeout never
outlives the enclosing one.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
import weakref
from contextvars import Token
from typing import Any

import anyio

from resilio import context as _ctx
from resilio.clock import Clock
from resilio.errors import TimeoutRejectedError
from resilio.strategies._base import GateStrategy

__all__ = ["SLOT_SECONDS", "Timeout"]

#: Width of a deadline slot: the most a timeout fires late (plus loop latency).
SLOT_SECONDS = 0.001
_SLOTS_PER_SECOND = 1000

_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_monotonic = time.monotonic
_push = _ctx._DEADLINE.set
_get = _ctx._DEADLINE.get
_reset = _ctx._DEADLINE.reset
_CancelledError = asyncio.CancelledError


# Expired calls: id() of the context token of the timed call (alive until
# its exit hook runs, so the id is unique) -> (task, cancel requests
# that were not ours). Filled by the wheel when a slot expires, emptied by the
# call's exit hook.
_fired: dict[int, tuple[asyncio.Task[Any], int]] = {}

_Slot = dict[int, "asyncio.Task[Any]"]
#: In `_fired`: expired in the same pass as an enclosing timeout, which cancelled.
_SHADOWED = -1


class _DeadlineWheel:
    """Per-loop deadline slots with a single armed loop timer."""

    __slots__ = ("__weakref__", "_armed_at", "_handle", "_heap", "_loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.slots: dict[int, _Slot] = {}
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0

    def new_slot(self, key: int) -> _Slot:
        slot: _Slot = {}
        self.slots[key] = slot
        heapq.heappush(self._heap, key)
        if self._handle is None or key < self._armed_at:
            self._arm(key)
        return slot

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = key
        delay = key / _SLOTS_PER_SECOND - _monotonic()
        self._handle = self._loop.call_at(self._loop.time() + max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        self._handle = None
        now_key = _monotonic() * _SLOTS_PER_SECOND
        heap, slots = self._heap, self.slots
        cancelled: set[asyncio.Task[Any]] = set()
        while heap and heap[0] <= now_key:
            slot = slots.pop(heapq.heappop(heap), None)
            if not slot:
                continue
            for key, task in slot.items():
                if task in cancelled:
                    # A timeout nested in one that expired in this same pass (the
                    # timer ran late, or they share a slot): the outer one, filed
                    # first, owns the expiry; this one just lets it through.
                    _fired[key] = (task, _SHADOWED)
                    continue
                # Remember the cancel requests that were not ours, as
                # asyncio.timeout does, to tell our expiry from a caller's cancel.
                _fired[key] = (task, task.cancelling())
                task.cancel()
                cancelled.add(task)
            slot.clear()
        # Slots emptied by calls that finished in time are dropped lazily here.
        while heap and not slots.get(heap[0]):
            slots.pop(heapq.heappop(heap), None)
        if heap:
            self._arm(heap[0])


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _DeadlineWheel] = (
    weakref.WeakKeyDictionary()
)
_last: list[Any] = [None, None]  # (loop, wheel) of the last lookup


def _wheel(loop: asyncio.AbstractEventLoop) -> _DeadlineWheel:
    if _last[0] is loop:
        return _last[1]  # type: ignore[no-any-return]
    w = _wheels.get(loop)
    if w is None:
        w = _wheels[loop] = _DeadlineWheel(loop)
    _last[0], _last[1] = loop, w
    return w


class _ScopeToken:
    """A timed call outside asyncio: a native cancel scope."""

    __slots__ = ("ctx", "scope")

    def __init__(self, scope: anyio.CancelScope, ctx: Token[float | None]) -> None:
        self.scope = scope
        self.ctx = ctx


class Timeout(GateStrategy):
    """Cancel the call if it runs longer than `seconds`; raise TimeoutRejectedError.

    The callee is cancelled and has unwound before the error is raised.
    """

    __slots__ = ("_message", "seconds", "timeouts")

    def __init__(
        self, seconds: float, *, name: str | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(name=name, clock=clock)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self.seconds = float(seconds)
        #: How many calls this timeout cancelled.
        self.timeouts = 0
        self._message = f"timed out after {self.seconds:g} s"

    @property
    def kind(self) -> str:
        return "timeout"

    def _fast_kind(self) -> str:
        """Tell the compiled runner it may file deadlines into the wheel in C."""
        return "timeout"

    def _enter(self) -> Any:
        at = _monotonic() + self.seconds
        outer = _get()
        late = 1
        if outer is not None and outer <= at:
            # Clamped to the enclosing deadline, and still filed: that deadline may be
            # advisory (`push_deadline`, an incoming header) with nothing enforcing
            # it. One slot later, so that an enclosing Timeout fires first and the
            # error names it.
            at = outer
            late = 2
        ctx = _push(at)
        loop = _get_running_loop()
        if loop is not None:
            task = _current_task(loop)
            if task is not None:
                if _last[0] is loop:
                    wheel: _DeadlineWheel = _last[1]
                else:
                    wheel = _wheel(loop)
                key = int(at * _SLOTS_PER_SECOND) + late
                slot = wheel.slots.get(key)
                if slot is None:
                    slot = wheel.new_slot(key)
                slot[id(ctx)] = task
                return (slot, ctx)
        # Not an asyncio task (trio, or asyncio without a task): native cancel scope.
        scope = anyio.CancelScope(deadline=anyio.current_time() + (at - _monotonic()))
        scope.__enter__()
        return _ScopeToken(scope, ctx)

    async def _enter_wait(self) -> Any:  # pragma: no cover - _enter never returns WAIT
        raise AssertionError("Timeout never waits to enter")

    def _ok(self, token: Any, result: Any) -> None:
        if type(token) is tuple:
            slot, ctx = token
            _reset(ctx)
            if slot is not None and slot.pop(id(ctx), None) is None:
                # Expired, but the callee swallowed the cancellation and returned:
                # keep its result and withdraw our cancel request.
                task, cancelling = _fired.pop(id(ctx))
                if cancelling != _SHADOWED:
                    task.uncancel()
            return
        token.scope.__exit__(None, None, None)
        _reset(token.ctx)

    def _err(self, token: Any, exc: BaseException) -> None:
        if type(token) is tuple:
            slot, ctx = token
            _reset(ctx)
            if slot is None or slot.pop(id(ctx), None) is not None:
                return
            task, cancelling = _fired.pop(id(ctx))
            if cancelling == _SHADOWED:
                return
            if task.uncancel() <= cancelling and isinstance(exc, _CancelledError):
                self.timeouts += 1
                raise TimeoutRejectedError(
                    self._message, retry_after=None, strategy=self.label
                ) from exc
            return
        swallowed = token.scope.__exit__(type(exc), exc, exc.__traceback__)
        _reset(token.ctx)
        if swallowed or token.scope.cancelled_caught:
            self.timeouts += 1
            raise TimeoutRejectedError(
                self._message, retry_after=None, strategy=self.label
            ) from exc

    def __repr__(self) -> str:
        return f"Timeout({self.seconds:g})"
