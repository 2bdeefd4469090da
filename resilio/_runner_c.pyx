# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled execution step for a group of gates (rate limiter, breaker, bulkhead,
timeout) around one awaited call.

`GateCall` is a coroutine object written by hand: it enters every gate, drives
the inner awaitable with `PyIter_Send`, and exits the gates with the outcome,
all without a Python frame of its own. CPython's `await` reaches it through
the `am_send` slot, so a finished call hands its result back without raising
StopIteration. It behaves like a coroutine for asyncio, anyio and trio
(`send`, `throw`, `close`, `__await__`; registered as
`collections.abc.Coroutine`).

The pure-Python twin of this module is `resilio.pipeline._gate1/_gate_n`.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from libc.stdint cimport int64_t, uint64_t

from resilio._core_c cimport (
    Circuit, Gate, TokenBucket, rs_bucket_reserve, rs_bucket_try_acquire, rs_circuit_admit,
    rs_circuit_record, rs_gate_exit, rs_gate_try_enter,
)

import asyncio
import asyncio.tasks
import collections.abc
import os
from types import MethodType as _MethodType

from resilio import context as _ctx_mod
from resilio.strategies import timeout as _timeout_mod

from resilio import _core_c
from resilio.clock import SYSTEM_CLOCK as _SYSTEM_CLOCK
from resilio.strategies._base import WAIT as _WAIT_OBJ

cdef extern from "Python.h":
    int PyIter_Send(PyObject *iter, PyObject *arg, PyObject **presult) except -1
    int PYGEN_RETURN
    int PYGEN_NEXT
    int PyCoro_CheckExact(object o)
    int PyGen_CheckExact(object o)

cdef extern from "_runner_slots.h":
    void rs_install_am_send(object tp, void *fn)
    int64_t rs_monotonic_ns() nogil
    double rs_monotonic_s() nogil

cdef extern from "Python.h":
    object PyContextVar_Set(object var, object value)
    int PyContextVar_Reset(object var, object token) except -1
    int PyContextVar_Get(object var, PyObject *default_value, PyObject **value) except -1
    PyObject *PyDict_GetItem(object d, object key)
    int PyDict_SetItem(object d, object key, object value) except -1
    int PyDict_DelItem(object d, object key) except -1
    int PyDict_Contains(object d, object key) except -1
    object PyLong_FromVoidPtr(void *p)
    unsigned long PyThread_get_thread_ident()

cdef object WAIT = _WAIT_OBJ
cdef object _GeneratorExit = GeneratorExit

DEF MAX_GATES = 4

cdef enum:
    S_ENTER = 0      # entering gates (maybe awaiting an _enter_wait)
    S_CALL = 1       # driving the call
    S_DONE = 2
    S_AGAIN = 3      # RetryCall: driving the strategy's later attempts


cdef class FastGate:
    """A gate's hooks as C calls. This base class calls the strategy's Python hooks;
    subclasses run the common path in C and defer anything unusual to the strategy."""
    cdef object strategy
    cdef object py_enter, py_ok, py_err
    cdef object clock_ns        # None: the system monotonic clock, read in C

    def __init__(self, strategy):
        self.strategy = strategy
        self.py_enter = strategy._enter
        self.py_ok = strategy._ok
        self.py_err = strategy._err
        clock = strategy._clock
        self.clock_ns = None if clock is _SYSTEM_CLOCK else clock.now_ns

    cdef inline int64_t now(self) except? -1:
        if self.clock_ns is None:
            return rs_monotonic_ns()
        return self.clock_ns()

    cdef object enter(self):
        return self.py_enter()

    cdef int ok(self, object tok, object result) except -1:
        self.py_ok(tok, result)
        return 0

    cdef int err(self, object tok, object exc) except -1:
        self.py_err(tok, exc)
        return 0


cdef class _BreakerGate(FastGate):
    cdef Circuit circuit
    cdef bint plain_enter
    cdef object rejection, probe_admitted, transitioned

    def __init__(self, strategy):
        FastGate.__init__(self, strategy)
        self.circuit = strategy._circuit
        self.plain_enter = strategy._plain_enter
        self.rejection = strategy._rejection
        self.probe_admitted = strategy._probe_admitted
        self.transitioned = strategy._transitioned

    cdef object enter(self):
        cdef int64_t t = rs_circuit_admit(self.circuit.c, self.now())
        if t < 0:
            raise self.rejection(t)
        if not self.plain_enter and (t & 3) == 2:
            self.probe_admitted(t)
        return t

    cdef int ok(self, object tok, object result) except -1:
        cdef int r = rs_circuit_record(self.circuit.c, <int64_t>tok, self.now(), 0)
        if r >= 0:
            self.transitioned(r)
        return 0


cdef class _LimiterGate(FastGate):
    cdef TokenBucket bucket
    cdef int64_t n, max_wait_ns
    cdef object rejection, pending

    def __init__(self, strategy):
        FastGate.__init__(self, strategy)
        self.bucket = strategy._bucket
        self.n = strategy._tokens
        self.max_wait_ns = strategy._max_wait_ns
        self.rejection = strategy._rejection
        self.pending = strategy._pending

    cdef object enter(self):
        cdef int64_t r
        if self.max_wait_ns == 0:
            r = rs_bucket_try_acquire(self.bucket.b, self.now(), self.n)
            if r:
                raise self.rejection(r)
            return None
        r = rs_bucket_reserve(self.bucket.b, self.now(), self.n, self.max_wait_ns)
        if r == 0:
            return None
        if r < 0:
            raise self.rejection(-r)
        self.pending.wait_ns = r
        return WAIT

    cdef int ok(self, object tok, object result) except -1:
        return 0

    cdef int err(self, object tok, object exc) except -1:
        return 0


cdef class _BulkheadGate(FastGate):
    cdef Gate gate
    cdef object waiters, enter_slow, release

    def __init__(self, strategy):
        FastGate.__init__(self, strategy)
        self.gate = strategy._gate
        self.waiters = strategy._waiters
        self.enter_slow = strategy._enter_slow
        self.release = strategy._release

    cdef object enter(self):
        if rs_gate_try_enter(self.gate.g):
            return None
        return self.enter_slow()

    cdef int ok(self, object tok, object result) except -1:
        if self.waiters:
            self.release()
        else:
            rs_gate_exit(self.gate.g)
        return 0

    cdef int err(self, object tok, object exc) except -1:
        if self.waiters:
            self.release()
        else:
            rs_gate_exit(self.gate.g)
        return 0


cdef object _DEADLINE = _ctx_mod._DEADLINE
cdef object _current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
cdef object _get_running_loop = asyncio._get_running_loop
cdef object _wheel_for = _timeout_mod._wheel

# One-slot cache of the running loop for the thread that used it last. On
# Python 3.11 asyncio's own lookup makes a getpid() system call per call; a
# BaseEventLoop records the thread it runs in, which is enough to validate.
cdef object _cached_loop = None
cdef unsigned long _cached_tid = 0
cdef object _cached_wheel = None


def _forget_loop():
    global _cached_loop, _cached_tid, _cached_wheel
    _cached_loop = None
    _cached_tid = 0
    _cached_wheel = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_loop)


cdef inline object _running_loop():
    """The running asyncio loop of this thread, or None."""
    global _cached_loop, _cached_tid, _cached_wheel
    cdef unsigned long tid = PyThread_get_thread_ident()
    loop = _cached_loop
    if loop is not None and tid == _cached_tid:
        if getattr(loop, "_thread_id", None) == tid:
            return loop
    loop = _get_running_loop()
    if loop is not None and getattr(loop, "_thread_id", None) == tid:
        _cached_loop = loop
        _cached_tid = tid
        _cached_wheel = _wheel_for(loop)
    return loop


cdef class _TimeoutGate(FastGate):
    cdef double seconds
    cdef object py_ok_slow

    def __init__(self, strategy):
        FastGate.__init__(self, strategy)
        self.seconds = strategy.seconds

    cdef object enter(self):
        cdef PyObject *outer_p = NULL
        cdef long long late = 1
        cdef double at = rs_monotonic_s() + self.seconds
        if _current_tasks is None:
            return self.py_enter()
        loop = _running_loop()
        if loop is None or loop is not _cached_loop:
            return self.py_enter()  # trio, uvloop, or no task: the Python path
        task_p = PyDict_GetItem(_current_tasks, loop)
        if task_p == NULL:
            return self.py_enter()
        PyContextVar_Get(_DEADLINE, NULL, &outer_p)
        if outer_p != NULL:
            outer = <object>outer_p
            Py_DECREF(outer)
            if outer is not None and <double>outer <= at:
                # One slot after the enclosing deadline (see Timeout._enter).
                at = <double>outer
                late = 2
        ctx = PyContextVar_Set(_DEADLINE, at)
        key = <long long>(at * 1000.0) + late
        wheel = _cached_wheel
        slots = wheel.slots
        slot_p = PyDict_GetItem(slots, key)
        if slot_p == NULL:
            slot = wheel.new_slot(key)
        else:
            slot = <object>slot_p
        PyDict_SetItem(slot, PyLong_FromVoidPtr(<void*>ctx), <object>task_p)
        return (slot, ctx)

    cdef int ok(self, object tok, object result) except -1:
        if type(tok) is tuple:
            slot = (<tuple>tok)[0]
            ctx = (<tuple>tok)[1]
            if slot is None:
                PyContextVar_Reset(_DEADLINE, ctx)
                return 0
            key = PyLong_FromVoidPtr(<void*>ctx)
            if PyDict_Contains(slot, key):
                PyDict_DelItem(slot, key)
                PyContextVar_Reset(_DEADLINE, ctx)
                return 0
        # Expired, or the Python path's token: the strategy sorts it out.
        self.py_ok(tok, result)
        return 0


cdef FastGate _fast_gate(object strategy):
    """The C hooks for a strategy: its own fast path when it has one, else its
    Python hooks."""
    kind = getattr(strategy, "_fast_kind", None)
    if kind is not None:
        kind = kind()
    if kind == "circuit" and type(strategy._circuit) is _core_c.Circuit:
        return _BreakerGate(strategy)
    if kind == "bucket" and type(strategy._bucket) is _core_c.TokenBucket:
        return _LimiterGate(strategy)
    if kind == "gate" and type(strategy._gate) is _core_c.Gate:
        return _BulkheadGate(strategy)
    if kind == "timeout":
        return _TimeoutGate(strategy)
    return FastGate(strategy)


cdef class GateGroup:
    """The compiled step for up to four adjacent gates; calling it starts one call."""
    cdef readonly tuple gates
    cdef Py_ssize_t n
    cdef object inner
    cdef FastGate g0, g1, g2, g3

    def __init__(self, tuple gates, inner):
        if not 1 <= len(gates) <= MAX_GATES:
            raise ValueError("GateGroup takes 1 to 4 gates")
        self.gates = gates
        self.n = len(gates)
        self.inner = inner
        fast = [_fast_gate(g) for g in gates] + [None] * (MAX_GATES - self.n)
        self.g0, self.g1, self.g2, self.g3 = fast

    def __call__(self, fn, tuple args, dict kwargs):
        cdef GateCall c = GateCall.__new__(GateCall)
        c.group = self
        c.fn = fn
        c.args = args
        c.kwargs = kwargs
        return c

    cdef inline FastGate _gate(self, Py_ssize_t i):
        if i == 0:
            return self.g0
        if i == 1:
            return self.g1
        if i == 2:
            return self.g2
        return self.g3

    cdef inline object _enter(self, Py_ssize_t i):
        return self._gate(i).enter()

    cdef inline object _ok(self, Py_ssize_t i, object tok, object result):
        self._gate(i).ok(tok, result)

    cdef inline object _err(self, Py_ssize_t i, object tok, object exc):
        self._gate(i).err(tok, exc)


cdef object _await_iter(object aw):
    """The iterator behind an awaitable (a coroutine is its own)."""
    if PyCoro_CheckExact(aw) or type(aw) is GateCall or type(aw) is RetryCall:
        return aw
    return type(aw).__await__(aw)


@cython.freelist(32)
cdef class GateCall:
    """One call through a GateGroup; a coroutine object."""
    cdef GateGroup group
    cdef object fn, args, kwargs
    cdef object it          # the awaitable iterator being driven
    cdef object t0, t1, t2, t3
    cdef Py_ssize_t entered
    cdef int state
    cdef object out

    cdef inline void _set_tok(self, Py_ssize_t i, object tok):
        if i == 0:
            self.t0 = tok
        elif i == 1:
            self.t1 = tok
        elif i == 2:
            self.t2 = tok
        else:
            self.t3 = tok

    cdef inline object _tok(self, Py_ssize_t i):
        if i == 0:
            return self.t0
        if i == 1:
            return self.t1
        if i == 2:
            return self.t2
        return self.t3

    cdef object _unwind(self, object exc):
        """Exit entered gates innermost first with an error; return the final error."""
        cdef Py_ssize_t i = self.entered - 1
        self.state = S_DONE
        while i >= 0:
            try:
                self.group._err(i, self._tok(i), exc)
            except BaseException as replaced:
                exc = replaced
            i -= 1
        self.entered = 0
        self.t0 = self.t1 = self.t2 = self.t3 = None
        return exc

    cdef int _finish(self, object result) except -1:
        cdef Py_ssize_t i = self.entered - 1
        self.state = S_DONE
        try:
            while i >= 0:
                self.group._ok(i, self._tok(i), result)
                i -= 1
        except BaseException as exc:
            # An exit hook failed: the gates further out still see an outcome.
            self.entered = i
            raise self._unwind(exc)
        self.entered = 0
        self.t0 = self.t1 = self.t2 = self.t3 = None
        self.out = result
        return 0

    cdef int _start_gates(self) except -1:
        """Enter gates from `entered` on; returns 1 if one must be awaited."""
        cdef GateGroup g = self.group
        cdef object tok
        while self.entered < g.n:
            try:
                tok = g._enter(self.entered)
                if tok is WAIT:
                    self.it = _await_iter(g.gates[self.entered]._enter_wait())
                    return 1
            except BaseException as exc:
                err = self._unwind(exc)
                if err is exc:
                    raise
                raise err from exc
            self._set_tok(self.entered, tok)
            self.entered += 1
        try:
            if g.inner is None:
                self.it = _await_iter(self.fn(*self.args, **self.kwargs))
            else:
                self.it = _await_iter(g.inner(self.fn, self.args, self.kwargs))
        except BaseException as exc:
            err = self._unwind(exc)
            if err is exc:
                raise
            raise err from exc
        self.state = S_CALL
        return 0

    cdef int _after(self, int rc, object res) except -1:
        """Handle the inner iterator's outcome: 1 = yielded (out set), 0 = returned."""
        if rc == PYGEN_NEXT:
            self.out = res
            return 1
        if self.state == S_CALL:
            self.it = None
            self._finish(res)
            return 0
        # An _enter_wait finished: that gate is entered.
        self.it = None
        self._set_tok(self.entered, res)
        self.entered += 1
        self._start_gates()
        return self._send(None)

    cdef int _fail(self, object exc) except -1:
        self.it = None
        err = self._unwind(exc)
        if err is exc:
            raise exc
        raise err from exc

    cdef int _send(self, object value) except -1:
        """Advance; 1 = yielded (self.out), 0 = returned (self.out)."""
        cdef PyObject *res = NULL
        cdef int rc
        cdef object r
        if self.state == S_DONE:
            raise RuntimeError("cannot reuse already awaited coroutine")
        if self.it is None:
            self._start_gates()
        try:
            rc = PyIter_Send(<PyObject*>self.it, <PyObject*>value, &res)
        except BaseException as exc:
            return self._fail(exc)
        r = <object>res
        Py_DECREF(r)
        return self._after(rc, r)

    cdef int _throw(self, object typ, object val, object tb) except -1:
        if self.state == S_DONE:
            raise RuntimeError("cannot throw into an awaited coroutine")
        if self.it is None:
            # Not started: nothing entered yet; raise the thrown exception.
            self.state = S_DONE
            if val is None:
                raise typ
            raise val
        try:
            if val is None and tb is None:
                r = self.it.throw(typ)
            else:
                r = self.it.throw(typ, val, tb)
        except StopIteration as stop:
            return self._after(PYGEN_RETURN, stop.value)
        except BaseException as exc:
            return self._fail(exc)
        self.out = r
        return 1

    # -- coroutine protocol --

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._send(None):
            r, self.out = self.out, None
            return r
        r, self.out = self.out, None
        raise StopIteration(r)

    def send(self, value):
        if self._send(value):
            r, self.out = self.out, None
            return r
        r, self.out = self.out, None
        raise StopIteration(r)

    def throw(self, typ, val=None, tb=None):
        if self._throw(typ, val, tb):
            r, self.out = self.out, None
            return r
        r, self.out = self.out, None
        raise StopIteration(r)

    def close(self):
        if self.state == S_DONE or self.it is None and self.entered == 0:
            self.state = S_DONE
            return
        it, self.it = self.it, None
        try:
            if it is not None:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        finally:
            self._unwind(_GeneratorExit())

    def __dealloc__(self):
        # Like a coroutine collected while suspended: give back what it holds.
        if self.state != S_DONE and (self.entered or self.it is not None):
            try:
                self.close()
            except BaseException:
                pass


cdef int _gatecall_am_send(PyObject *self, PyObject *value, PyObject **presult) except -1:
    presult[0] = NULL
    cdef GateCall c = <GateCall>self
    cdef int rc = c._send(<object>value if value != NULL else None)
    cdef object out = c.out
    c.out = None
    Py_INCREF(out)
    presult[0] = <PyObject*>out
    return PYGEN_NEXT if rc else PYGEN_RETURN


rs_install_am_send(GateCall, <void*>_gatecall_am_send)
collections.abc.Coroutine.register(GateCall)


cdef class RetryRunner:
    """Retry's runner for a pipeline (without `handle_result`): calling it starts a
    `RetryCall`. The first attempt runs in C; a handled failure hands the call to
    the strategy's Python `_again`, which owns everything after it."""
    cdef object inner, catch, pred, again, deposit, now_ns

    def __init__(self, inner, catch, pred, again, deposit, now_ns):
        self.inner = inner
        self.catch = catch
        self.pred = pred
        self.again = again
        self.deposit = deposit
        self.now_ns = now_ns

    def __call__(self, fn, tuple args, dict kwargs):
        cdef RetryCall c = RetryCall.__new__(RetryCall)
        c.r = self
        c.fn = fn
        c.args = args
        c.kwargs = kwargs
        return c


@cython.freelist(32)
cdef class RetryCall:
    """One call through a RetryRunner; a coroutine object. It drives the first
    attempt, then (after a handled failure) the strategy's `_again` coroutine."""
    cdef RetryRunner r
    cdef object fn, args, kwargs
    cdef object it
    cdef int state
    cdef object out

    cdef int _start(self) except -1:
        cdef RetryRunner r = self.r
        self.state = S_CALL
        if r.deposit is not None:
            r.deposit(r.now_ns())
        try:
            if r.inner is None:
                self.it = _await_iter(self.fn(*self.args, **self.kwargs))
            else:
                self.it = _await_iter(r.inner(self.fn, self.args, self.kwargs))
        except BaseException as exc:
            return self._failed(exc)
        return 0

    cdef int _failed(self, object exc) except -1:
        """The first attempt raised `exc`: retry it if handled, else re-raise."""
        cdef RetryRunner r = self.r
        self.it = None
        if self.state != S_CALL or not isinstance(exc, r.catch) or (
            r.pred is not None and not r.pred(exc)
        ):
            self.state = S_DONE
            raise exc
        # Started outside any except clause, so errors from later attempts do not
        # carry this one as their __context__ (as Retry's Python runner does).
        self.state = S_AGAIN
        self.it = _await_iter(r.again(r.inner, self.fn, self.args, self.kwargs, exc, True))
        return 0

    cdef int _after(self, int rc, object res) except -1:
        if rc == PYGEN_NEXT:
            self.out = res
            return 1
        self.it = None
        self.state = S_DONE
        self.out = res
        return 0

    cdef int _send(self, object value) except -1:
        """Advance; 1 = yielded (self.out), 0 = returned (self.out)."""
        cdef PyObject *res = NULL
        cdef int rc
        cdef object r
        if self.state == S_DONE:
            raise RuntimeError("cannot reuse already awaited coroutine")
        if self.it is None:
            self._start()
        while True:
            try:
                rc = PyIter_Send(<PyObject*>self.it, <PyObject*>value, &res)
            except BaseException as exc:
                err = exc
            else:
                r = <object>res
                Py_DECREF(r)
                return self._after(rc, r)
            self._failed(err)
            err = None
            value = None

    cdef int _throw(self, object typ, object val, object tb) except -1:
        if self.state == S_DONE:
            raise RuntimeError("cannot throw into an awaited coroutine")
        if self.it is None:
            self.state = S_DONE
            if val is None:
                raise typ
            raise val
        try:
            if val is None and tb is None:
                r = self.it.throw(typ)
            else:
                r = self.it.throw(typ, val, tb)
        except StopIteration as stop:
            return self._after(PYGEN_RETURN, stop.value)
        except BaseException as exc:
            err = exc
        else:
            self.out = r
            return 1
        self._failed(err)
        err = None
        return self._send(None)

    # -- coroutine protocol --

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._send(None):
            r, self.out = self.out, None
            return r
        r, self.out = self.out, None
        raise StopIteration(r)

    def send(self, value):
        if self._send(value):
            r, self.out = self.out, None
            return r
        r, self.out = self.out, None
        raise StopIteration(r)

    def throw(self, typ, val=None, tb=None):
        if self._throw(typ, val, tb):
            r, self.out = self.out, None
            return r
        r, self.out = self.out, None
        raise StopIteration(r)

    def close(self):
        it, self.it = self.it, None
        self.state = S_DONE
        if it is not None:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __dealloc__(self):
        if self.state != S_DONE and self.it is not None:
            try:
                self.close()
            except BaseException:
                pass


cdef int _retrycall_am_send(PyObject *self, PyObject *value, PyObject **presult) except -1:
    presult[0] = NULL
    cdef RetryCall c = <RetryCall>self
    cdef int rc = c._send(<object>value if value != NULL else None)
    cdef object out = c.out
    c.out = None
    Py_INCREF(out)
    presult[0] = <PyObject*>out
    return PYGEN_NEXT if rc else PYGEN_RETURN


rs_install_am_send(RetryCall, <void*>_retrycall_am_send)
collections.abc.Coroutine.register(RetryCall)


cdef class Bound:
    """A function decorated by a pipeline; calling it runs one call through it.

    Carries the wrapped function's metadata (functools.update_wrapper) in its
    __dict__ and binds like a function when used as a method."""
    cdef object run
    cdef object fn
    cdef GateGroup group
    cdef dict __dict__

    def __init__(self, run, fn):
        self.run = run
        self.fn = fn
        self.group = run if type(run) is GateGroup else None

    def __call__(self, *args, **kwargs):
        cdef GateCall c
        if self.group is not None:
            c = GateCall.__new__(GateCall)
            c.group = self.group
            c.fn = self.fn
            c.args = args
            c.kwargs = kwargs
            return c
        return self.run(self.fn, args, kwargs)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return _MethodType(self, obj)

    def __repr__(self):
        return f"<resilio pipeline-wrapped {self.fn!r}>"
