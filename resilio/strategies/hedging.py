"""Hedging: start another attempt when the first is slow; the first good answer wins.

The primary attempt starts at once. While no attempt has produced an accepted
outcome, another starts every `delay` seconds, or at once when an attempt
fails, until `max_attempts` have started. The first accepted outcome wins;
every other attempt is cancelled and awaited before the result is returned,
so no attempt outlives the call. If every attempt fails, the last failure
propagates (the exception itself, or the last rejected result is returned).

On asyncio, inside a task, the primary runs inline in the caller's task and
its hedge timer is an entry in a per-loop wheel of 1 ms slots with one armed
loop timer: a primary that answers before `delay` costs no task, no event, no
cancel scope and no loop timer. Only when the timer fires (or the primary
fails) does the call become a race of asyncio tasks; a hedge that wins while
the primary still runs inline cancels the caller's task, and the cancellation
is withdrawn with `Task.uncancel()` once the primary has unwound (as
`asyncio.timeout` does). On other event loops (trio) the race runs in an anyio
task group.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import math
import os
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from resilio.clock import Clock
from resilio.strategies._base import Runner, Shaper, direct
from resilio.strategies.fallback import Handle, _exception_filter

__all__ = ["DEFAULT_MAX_ATTEMPTS", "MAX_ATTEMPTS_LIMIT", "SLOT_SECONDS", "Hedging"]

DEFAULT_MAX_ATTEMPTS = 2
#: The most attempts one call may start.
MAX_ATTEMPTS_LIMIT = 16
#: Width of a hedge-timer slot on asyncio: the most a hedge starts late (plus loop latency).
SLOT_SECONDS = 0.001
_SLOTS_PER_SECOND = 1000.0

_monotonic = time.monotonic
_floor = math.floor
# The C method itself: `task.cancelling()` is an unspecialized method lookup.
_cancelling = asyncio.Task.cancelling
_get_ident = threading.get_ident
_copy_context = contextvars.copy_context
_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_CancelledError = asyncio.CancelledError
_DEFAULT_TIME = asyncio.BaseEventLoop.time
_NOTHING: Any = object()

# The wheel entry of one call whose primary runs inline: a list, cheaper to
# build than an object. It sits in its slot (a list) while the primary runs;
# when the call ends its place is set to None, so the entry is freed at once
# instead of aging into the garbage collector's older generations. Indices:
_H, _TASK, _FN, _ARGS, _KWARGS, _CTX, _BASE, _RACE = range(8)
_Slot = list[Any]


# --- Running loop and task, without the public API's per-call cost -------------
#
# On Python 3.11, asyncio._get_running_loop() calls getpid() (a system call) to
# detect forks. The last loop seen is cached with its wheel; it is the running
# loop of this thread exactly when its _thread_id is this thread (asyncio sets
# it for the whole of run_forever, and one thread runs one loop at a time).
# The current task is then one C dict lookup in asyncio's own table.

_current_tasks: Any = getattr(asyncio.tasks, "_current_tasks", None)
_task_of: Callable[[Any], Any] = (
    _current_tasks.get if isinstance(_current_tasks, dict) else _current_task
)
_NO_LOOP: Any = types.SimpleNamespace(_thread_id=None)
# (loop, wheel) of the last lookup, for loops that have a _thread_id. One
# tuple, so that a thread never pairs one loop with another loop's wheel.
_hot: tuple[Any, Any] = (_NO_LOOP, None)
# The same for any loop (uvloop has no _thread_id): saves the weak-dict lookup.
_last: tuple[Any, Any] = (None, None)


def _forget_loops() -> None:
    # A forked child keeps the thread id of the thread that forked: a loop that
    # was running there must not pass for a running loop of the child.
    global _hot, _last
    _hot, _last = (_NO_LOOP, None), (None, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_loops)


def _lookup() -> tuple[Any, Any]:
    """Return (wheel, task) for the running asyncio task, or (None, None)."""
    global _hot, _last, _task_of
    loop = _get_running_loop()
    if loop is None:
        return None, None
    task = _current_task(loop)
    if task is None:
        return None, None
    last = _last
    if last[0] is loop:
        wheel = last[1]
    else:
        wheel = _wheels.get(loop)
        if wheel is None:
            wheel = _wheels[loop] = _Wheel(loop)
        _last = (loop, wheel)
    if _task_of is not _current_task and _task_of(loop) is not task:
        # asyncio keeps the current task elsewhere on this Python: use the public API.
        _task_of = _current_task
    if getattr(loop, "_thread_id", None) == _get_ident():
        _hot = (loop, wheel)
    return wheel, task


# --- The hedge-timer wheel --------------------------------------------------------


class _Wheel:
    """Per-loop hedge timers in 1 ms slots with one armed loop timer.

    A slot lists the entries filed in one millisecond; a call that ends sets
    its place to None, which costs less than any removal. The timer fires for
    every slot that was filed, whatever its calls did since.
    """

    __slots__ = ("__weakref__", "_armed_at", "_ctx", "_handle", "_heap", "_loop", "now", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        ref = weakref.ref(loop)
        self._loop = ref
        self.slots: dict[int, _Slot] = {}
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0
        # The timer runs in a context of its own, not in a copy of whichever
        # caller's context happened to arm it (which it would keep alive).
        self._ctx = contextvars.Context()
        # Slots are in the loop's own time, so hedges follow the loop's clock.
        if getattr(loop.time, "__func__", None) is _DEFAULT_TIME:  # not overridden or patched
            self.now: Callable[[], float] = _monotonic
        else:

            def now() -> float:
                return ref().time()  # type: ignore[union-attr]

            self.now = now

    def new_slot(self, key: int) -> _Slot:
        slot: _Slot = []
        self.slots[key] = slot
        heapq.heappush(self._heap, key)
        if self._handle is None or key < self._armed_at:
            self._arm(key)
        return slot

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = self._loop()
        if loop is None:  # pragma: no cover - the loop is gone, and its calls with it
            self._handle = None
            return
        self._armed_at = key
        self._handle = loop.call_at(key / _SLOTS_PER_SECOND, self._fire, context=self._ctx)

    def _fire(self) -> None:
        self._handle = None
        now_key = self.now() * _SLOTS_PER_SECOND
        heap, slots = self._heap, self.slots
        due: list[_Slot] = []
        while heap and heap[0] <= now_key:
            slot = slots.pop(heapq.heappop(heap), None)
            if slot:
                due.append(slot)
        if heap:
            self._arm(heap[0])
        for slot in due:
            for i, entry in enumerate(slot):
                if entry is None:
                    continue
                try:
                    entry[_H].fire(entry, slot, i)
                except Exception as exc:  # pragma: no cover - a bug here must not stop the wheel
                    loop = self._loop()
                    if loop is not None:
                        loop.call_exception_handler(
                            {"message": "resilio hedging timer failed", "exception": exc}
                        )


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel]
_wheels = weakref.WeakKeyDictionary()


# --- The race, once a call has more than its inline primary ------------------------


async def _attempt(
    inner: Runner | None,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    if inner is None:
        return await fn(*args, **kwargs)
    return await inner(fn, args, kwargs)


class _Race:
    """One hedged call on asyncio after its timer fired or its primary failed.

    Driven by loop callbacks (hedge timer, attempt tasks' done callbacks) while
    the caller runs an attempt inline, and by the caller once that attempt ended.
    """

    __slots__ = (
        "args",
        "baseline",
        "cancelled_caller",
        "ctx",
        "done",
        "fn",
        "h",
        "has_winner",
        "inline",
        "kwargs",
        "last",
        "last_is_exc",
        "loop",
        "started",
        "task",
        "tasks",
        "timer",
        "waiter",
        "winner",
        "winner_is_exc",
    )

    def __init__(self, h: _Hedger, entry: list[Any], inline: bool) -> None:
        self.h = h
        self.task: asyncio.Task[Any] = entry[_TASK]
        self.loop = self.task.get_loop()
        self.fn: Callable[..., Awaitable[Any]] = entry[_FN]
        self.args: tuple[Any, ...] = entry[_ARGS]
        self.kwargs: dict[str, Any] = entry[_KWARGS]
        self.ctx: contextvars.Context = entry[_CTX]
        # Cancel requests on the caller's task when the call began: more than
        # this means someone else wants it cancelled too.
        self.baseline: int = entry[_BASE]
        self.inline = inline
        self.started = 1
        self.tasks: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.done = False
        self.cancelled_caller = False
        self.has_winner = False
        self.winner: Any = None
        self.winner_is_exc = False
        self.last: Any = _NOTHING
        self.last_is_exc = False

    # Loop side -------------------------------------------------------------------

    def next_attempt(self) -> None:
        """Start the next attempt now (as a task) and arm the timer for the one after."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.inline and self.task.cancelling() > self.baseline:
            # The caller is being cancelled while its attempt unwinds: starting
            # more work now would only be cancelled again. Look again shortly:
            # the cancellation may have been an inner scope's, withdrawn since.
            self.timer = self.loop.call_later(SLOT_SECONDS, self._tick)
            return
        h = self.h
        self.started += 1
        h.strategy.hedges += 1
        t = self.loop.create_task(
            _attempt(h.inner, self.fn, self.args, self.kwargs), context=self.ctx.copy()
        )
        self.tasks.add(t)
        t.add_done_callback(self._task_done)
        if self.started < h.max_attempts:
            self.timer = self.loop.call_later(h.delay, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if not self.done:
            self.next_attempt()

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self.tasks.discard(t)
        if t.cancelled():
            if not self.done:
                # Cancelled by someone else: no outcome, but the attempt is over.
                self.failed()
        else:
            exc = t.exception()  # also marks the exception as retrieved
            if not self.done:
                if exc is None:
                    self.outcome(t.result(), False)
                else:
                    self.outcome(exc, True)
        if self.done and not self.tasks:
            self._wake()

    def outcome(self, value: Any, is_exc: bool) -> None:
        """An attempt ended with `value` (an exception when `is_exc`)."""
        h = self.h
        try:
            if is_exc:
                failed = isinstance(value, Exception) and h.handles(value)
            else:
                failed = h.handle_result is not None and bool(h.handle_result(value))
        except Exception as err:  # a predicate that raises ends the race with its error
            value, is_exc, failed = err, True, False
        if failed:
            self.last, self.last_is_exc = value, is_exc
            self.failed()
            return
        self.has_winner, self.winner, self.winner_is_exc = True, value, is_exc
        self.stop()

    def failed(self) -> None:
        """An attempt ended without an accepted outcome."""
        if self.started < self.h.max_attempts:
            self.next_attempt()
        elif not self.tasks and not self.inline:
            self.stop()

    def stop(self) -> None:
        """End the race: cancel the timer, every attempt task and an inline loser."""
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for t in self.tasks:
            t.cancel()
        if self.inline and self.has_winner:
            self.cancelled_caller = True
            self.task.cancel()
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # Caller side -----------------------------------------------------------------

    async def after_inline(self, value: Any, is_exc: bool) -> Any:
        """The caller's inline attempt ended with `value`: finish the race."""
        self.inline = False
        if self.cancelled_caller:
            # A hedge won while this attempt ran, and we cancelled the caller's task
            # to stop it. Withdraw our request; another one still pending means the
            # caller is being cancelled too.
            self.cancelled_caller = False
            external = self.task.uncancel() > self.baseline
            if (
                is_exc
                and not isinstance(value, Exception)
                and (external or not isinstance(value, _CancelledError))
            ):
                await self.drain()
                raise value
        elif is_exc and not isinstance(value, Exception):
            # The caller was cancelled (or interrupted): never an outcome.
            self.stop()
            await self.drain()
            raise value
        else:
            self.outcome(value, is_exc)
        return await self.wait()

    async def wait(self) -> Any:
        """Wait for the outcome of the attempt tasks; return or raise it."""
        while not self.done:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            except BaseException:
                self.waiter = None
                self.stop()
                await self.drain()
                raise
            self.waiter = None
        await self.drain()
        if self.has_winner:
            if self.winner_is_exc:
                raise self.winner
            return self.winner
        if self.last is _NOTHING:  # every attempt was cancelled by someone else
            raise _CancelledError()
        if self.last_is_exc:
            raise self.last
        return self.last

    async def drain(self) -> None:
        """Wait until every attempt task has finished, even if cancelled meanwhile."""
        cancelled: BaseException | None = None
        while self.tasks:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            except _CancelledError as exc:
                # Never orphan an attempt: keep waiting, then propagate.
                cancelled = exc
            self.waiter = None
        if cancelled is not None:
            raise cancelled


class _Hedger:
    """One `Hedging` wrapped around one inner runner: what its calls share."""

    __slots__ = ("delay", "handle_result", "handles", "inner", "max_attempts", "strategy")

    def __init__(self, strategy: Hedging, inner: Runner | None) -> None:
        self.strategy = strategy
        self.inner = inner
        self.delay = strategy.delay
        self.max_attempts = strategy.max_attempts
        self.handles = strategy._handle
        self.handle_result = strategy._handle_result

    def fire(self, entry: list[Any], slot: _Slot, i: int) -> None:
        """The hedge delay of a call whose primary still runs inline has passed."""
        if slot[i] is not entry:  # the call has ended
            return
        task: asyncio.Task[Any] = entry[_TASK]
        if task.cancelling() > entry[_BASE]:
            # Being cancelled (see _Race.next_attempt): look again shortly.
            task.get_loop().call_later(SLOT_SECONDS, self.fire, entry, slot, i)
            return
        race = entry[_RACE] = _Race(self, entry, inline=True)
        race.next_attempt()

    async def slow(self, entry: list[Any], value: Any, is_exc: bool) -> Any:
        """The inline primary ended with a hedge running, or failed before one started."""
        race: _Race | None = entry[_RACE]
        if race is not None:
            return await race.after_inline(value, is_exc)
        # A rejected result (already judged by the caller) or an exception.
        if is_exc and not self.handles(value):
            raise value
        race = _Race(self, entry, inline=False)
        race.last, race.last_is_exc = value, is_exc
        race.failed()  # the next attempt starts at once
        return await race.wait()


class Hedging(Shaper):
    """Race up to `max_attempts` attempts started `delay` seconds apart."""

    __slots__ = ("_handle", "_handle_result", "delay", "hedges", "max_attempts")

    def __init__(
        self,
        delay: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        *,
        handle: Handle = Exception,
        handle_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be a number, got {delay!r}")
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay must be a finite number >= 0, got {delay!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {max_attempts!r}")
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be in [1, {MAX_ATTEMPTS_LIMIT}], got {max_attempts!r}"
            )
        if handle_result is not None and not callable(handle_result):
            raise TypeError(f"handle_result must be callable, got {handle_result!r}")
        self.delay = float(delay)
        self.max_attempts = max_attempts
        self._handle = _exception_filter(handle)
        self._handle_result = handle_result
        #: How many extra attempts were started.
        self.hedges = 0

    @property
    def kind(self) -> str:
        return "hedging"

    def _wrap(self, inner: Runner | None) -> Runner:
        if self.max_attempts == 1:
            # One attempt, no race: the outcome is the call's own.
            return inner if inner is not None else direct
        h = _Hedger(self, inner)
        generic = self._wrap_anyio(inner)
        handle_result = self._handle_result
        delay_ms = self.delay * _SLOTS_PER_SECOND

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            loop, wheel = _hot
            if loop._thread_id == _get_ident():
                task = _task_of(loop)
            else:
                wheel, task = _lookup()
            if task is None:
                return await generic(fn, args, kwargs)
            try:
                base = _cancelling(task)
            except TypeError:  # a task that is no asyncio.Task: race in a task group
                return await generic(fn, args, kwargs)
            entry = [h, task, fn, args, kwargs, _copy_context(), base, None]
            if delay_ms:
                # Never early: the slot's time is past now + delay.
                now = wheel.now  # a plain attribute load: `wheel.now()` is not specialized
                key = _floor(now() * 1000.0 + delay_ms) + 1  # 1 ms slots
                slot = wheel.slots.get(key)
                if slot is None:
                    slot = wheel.new_slot(key)
                i = len(slot)
                slot.append(entry)
            else:
                slot, i = [entry], 0
                h.fire(entry, slot, 0)
            try:
                if inner is not None:
                    result = await inner(fn, args, kwargs)
                elif kwargs:
                    result = await fn(*args, **kwargs)
                else:
                    # `fn(*args, **{})` would build a new dict per call.
                    result = await fn(*args)
            except BaseException as exc:
                slot[i] = None
                race = entry[_RACE]
                if race is None and not isinstance(exc, Exception):
                    raise
                if isinstance(exc, GeneratorExit):  # closed, not awaited: no await possible
                    race.inline = False
                    race.stop()
                    raise
                return await h.slow(entry, exc, True)
            slot[i] = None
            if entry[_RACE] is None and (handle_result is None or not handle_result(result)):
                return result
            return await h.slow(entry, result, False)

        return run

    def _wrap_anyio(self, inner: Runner | None) -> Runner:
        """The race in an anyio task group: trio, or asyncio outside a task."""
        handles, handle_result = self._handle, self._handle_result
        max_attempts, delay = self.max_attempts, self.delay
        strategy = self

        async def attempt(
            race: _AnyioRace,
            scope: anyio.CancelScope,
            fn: Callable[..., Awaitable[Any]],
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> None:
            try:
                if inner is None:
                    result = await fn(*args, **kwargs)
                else:
                    result = await inner(fn, args, kwargs)
            except Exception as exc:
                if not handles(exc) and not race.has_winner:
                    # An error we do not handle ends the race with that error.
                    race.has_winner, race.winner, race.winner_is_exc = True, exc, True
                    scope.cancel()
                    return
                race.last, race.last_is_exc = exc, True
                race.failures += 1
                race.kick.set()
                return
            if race.has_winner:
                return
            if handle_result is not None and handle_result(result):
                race.last, race.last_is_exc = result, False
                race.failures += 1
                race.kick.set()
                return
            race.has_winner, race.winner = True, result
            scope.cancel()

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            race = _AnyioRace()
            async with anyio.create_task_group() as tg:
                scope = tg.cancel_scope
                started = 0
                while True:
                    tg.start_soon(attempt, race, scope, fn, args, kwargs)
                    started += 1
                    if started >= max_attempts:
                        break
                    with anyio.move_on_after(delay):
                        await race.kick.wait()
                    if race.has_winner:
                        break
                    if race.kick.is_set():
                        race.kick = anyio.Event()
                    strategy.hedges += 1
            if race.has_winner:
                if race.winner_is_exc:
                    raise race.winner
                return race.winner
            if race.last_is_exc:
                raise race.last
            return race.last

        return run

    def __repr__(self) -> str:
        return f"Hedging(delay={self.delay:g}, max_attempts={self.max_attempts})"


class _AnyioRace:
    """State of one hedged call in an anyio task group, shared by its attempts."""

    __slots__ = ("failures", "has_winner", "kick", "last", "last_is_exc", "winner", "winner_is_exc")

    def __init__(self) -> None:
        self.has_winner = False
        self.winner: Any = None
        self.winner_is_exc = False
        self.last: Any = None
        self.last_is_exc = False
        self.failures = 0
        self.kick = anyio.Event()
