"""`resilio demo`: the same workload against a flaky upstream, bare and resilient.

The upstream (`resilio.demo.upstream`) runs in a child process, one per run, so
that the client's event loop measures only the client. Each run sends `rate`
calls per second for `duration` seconds (call i leaves at t0 + i / rate,
whatever happened to the calls before it: an open workload), each `GET /work`
with the call number in a header. The first run uses a bare
`httpx.AsyncClient`; the second the same client on a `ResilientTransport`
whose pipeline is the standard one (total timeout, retry with a budget,
circuit breaker, attempt timeout) scaled to a run of seconds, plus a wait for
the circuit (see `_resilient_client`). The report compares them and is
written as HTML with an SVG timeline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import anyio

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_RATE",
    "QUICK_DURATION",
    "QUICK_RATE",
    "TARGET_AMPLIFICATION",
    "TARGET_OVERRUN",
    "TARGET_SUCCESS",
    "CallRecord",
    "DemoOptions",
    "RunResult",
    "configure",
    "demo_main",
    "execute",
    "print_report",
    "run",
    "summarize",
    "targets",
]

#: Seconds of workload per run (the demo runs twice) and calls per second.
DEFAULT_DURATION: Final = 25.0
DEFAULT_RATE: Final = 50.0
#: --quick: a short run for tests and a first look.
QUICK_DURATION: Final = 6.0
QUICK_RATE: Final = 50.0
DEFAULT_ERROR_RATE: Final = 0.1
DEFAULT_OUTPUT: Final = "resilio-demo.html"

# The resilient client's settings: the standard layers with timeouts and windows scaled
# to a run of seconds, not hours of production traffic. The breaker trips fast (a 1 s
# window) because every attempt it lets through during an outage is load on a service
# that is down; its failure ratio sits well above the transient error rate.
TOTAL_TIMEOUT: Final = 3.0
ATTEMPT_TIMEOUT: Final = 1.0
RETRY_ATTEMPTS: Final = 4
RETRY_DELAY: Final = 0.2
RETRY_MAX_DELAY: Final = 1.0
BREAKER_FAILURE_RATIO: Final = 0.4
BREAKER_MIN_THROUGHPUT: Final = 20
BREAKER_SAMPLING: Final = 1.0
BREAKER_BREAK: Final = 0.25
CIRCUIT_WAITS: Final = 4
CIRCUIT_WAIT_DELAY: Final = 0.05
# Calls waiting for the circuit come back spread over this many seconds, not all at once.
CIRCUIT_WAIT_SPREAD: Final = 0.5

#: Targets the resilient run must meet.
TARGET_SUCCESS: Final = 0.99
TARGET_OVERRUN: Final = 0.050
TARGET_AMPLIFICATION: Final = 1.3

# Both clients: a pool large enough that calls never queue for a connection. httpcore
# 1.0.9 leaks a pool slot when a request is cancelled while it waits for a connection
# (encode/httpcore#1093), and every timeout is a cancellation.
MAX_CONNECTIONS: Final = 500
MAX_KEEPALIVE: Final = 20

# How long to wait, after the last call left, for the stragglers of a run (the bare
# client's timeouts are httpx's 5 s).
_DRAIN: Final = 6.0


@dataclass
class DemoOptions:
    """What `resilio demo` was asked to do."""

    duration: float = DEFAULT_DURATION
    rate: float = DEFAULT_RATE
    seed: int = 0
    error_rate: float = DEFAULT_ERROR_RATE
    output: Path = Path(DEFAULT_OUTPUT)
    json_path: Path | None = None
    live: bool = True


@dataclass
class CallRecord:
    """One call of the workload: when it left and ended (s from t0), and how it went."""

    index: int
    start: float
    end: float
    ok: bool
    outcome: str


@dataclass
class RunResult:
    """Everything measured during one run."""

    name: str
    title: str
    duration: float
    calls: list[CallRecord] = field(default_factory=list)
    upstream_calls: int = 0
    upstream_per_second: list[int] = field(default_factory=list)
    upstream_statuses: dict[str, int] = field(default_factory=dict)
    total_timeout: float | None = None
    retry: dict[str, int] | None = None
    rejections: dict[str, int] = field(default_factory=dict)
    transitions: list[tuple[float, str]] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    from resilio.errors import BrokenCircuitError, ExecutionRejectedError, TimeoutRejectedError

    if isinstance(exc, BrokenCircuitError):
        return "circuit open"
    if isinstance(exc, TimeoutRejectedError):
        return f"timeout ({exc.strategy or 'timeout'})"
    if isinstance(exc, ExecutionRejectedError):
        return f"rejected ({exc.strategy or type(exc).__name__})"
    return type(exc).__name__


# ---- the upstream child process --------------------------------------------------------


class _Upstream:
    """The child process serving the flaky upstream and its proxy."""

    def __init__(self, seed: int, error_rate: float) -> None:
        root = str(Path(__file__).resolve().parent.parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resilio.demo.upstream",
                "--seed",
                str(seed),
                "--error-rate",
                repr(error_rate),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("the demo upstream did not start (see the error above)")
        ports = json.loads(line)
        self.proxy_url = f"http://127.0.0.1:{ports['proxy_port']}"
        self.control_url = f"http://127.0.0.1:{ports['upstream_port']}"

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---- one run -----------------------------------------------------------------------------


MakeClient = Callable[["RunResult", list[float]], tuple[Any, Callable[[], str]]]


class _Side:
    """One of the two runs: its client, its upstream, its counts."""

    def __init__(
        self, name: str, title: str, make: MakeClient, upstream: _Upstream, duration: float
    ) -> None:
        self.result = RunResult(name, title, duration)
        self.make = make
        self.upstream = upstream
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.state: Callable[[], str] = lambda: ""

    def line(self) -> str:
        in_flight = self.sent - self.ok - self.failed
        text = (
            f"{self.result.name} ok {self.ok:5d} failed {self.failed:4d} in flight {in_flight:3d}"
        )
        state = self.state()
        return f"{text} {state}" if state else text


def _phase_name(t: float, duration: float) -> str:
    from resilio.demo.upstream import phase_at

    p = phase_at(t / duration) if duration > 0 else None
    return p.name if p is not None else "drain"


async def _progress(side: _Side, t0: float, duration: float, out: TextIO) -> None:
    second = 1
    while True:
        await anyio.sleep(max(0.0, t0 + second - time.monotonic()))
        t = time.monotonic() - t0
        print(
            f"[{t:5.1f}s] {_phase_name(t, duration):<9} sent {side.sent:5d} | {side.line()}",
            file=out,
            flush=True,
        )
        second += 1


async def _workload(client: Any, side: _Side, rate: float, t0: float) -> None:
    from resilio.demo.upstream import CALL_HEADER

    result = side.result
    url = side.upstream.proxy_url + "/work"
    n = int(result.duration * rate)

    async def one(i: int) -> None:
        start = time.monotonic()
        try:
            response = await client.get(url, headers={CALL_HEADER: str(i)})
        except Exception as exc:
            ok, outcome = False, _reason(exc)
        else:
            ok = 200 <= response.status_code < 300
            outcome = str(response.status_code) if ok else f"HTTP {response.status_code}"
        end = time.monotonic()
        result.calls.append(CallRecord(i, start - t0, end - t0, ok, outcome))
        if ok:
            side.ok += 1
        else:
            side.failed += 1

    async with anyio.create_task_group() as tg:
        for i in range(n):
            await anyio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            side.sent += 1
            tg.start_soon(one, i)


async def _drive(side: _Side, client: Any, control: Any, options: DemoOptions, t0: float) -> None:
    async with client:
        with anyio.move_on_after(max(0.0, t0 - time.monotonic()) + options.duration + _DRAIN):
            await _workload(client, side, options.rate, t0)
    side.state()  # takes the final counts
    stats = (await control.get(side.upstream.control_url + "/__control/stats")).json()
    result = side.result
    result.upstream_calls = int(stats["calls"])
    result.upstream_per_second = [int(x) for x in stats["per_second"]]
    result.upstream_statuses = {str(k): int(v) for k, v in stats["statuses"].items()}
    result.calls.sort(key=lambda c: c.index)


async def _run_side(side: _Side, control: Any, options: DemoOptions, out: TextIO) -> None:
    origin = [0.0]  # t0, known once the client is built (building one can take 0.3 s)
    client, side.state = side.make(side.result, origin)
    # A little ahead, so the timeline has started before the first call leaves.
    t0 = origin[0] = time.monotonic() + 0.3
    r = await control.post(
        side.upstream.control_url + "/__control/start",
        json={"t0": t0, "duration": options.duration, "run": side.result.name},
    )
    r.raise_for_status()
    async with anyio.create_task_group() as tg:
        if options.live:
            tg.start_soon(_progress, side, t0, options.duration, out)
        await _drive(side, client, control, options, t0)
        tg.cancel_scope.cancel()


def _bare_client(result: RunResult, t0: list[float]) -> tuple[Any, Callable[[], str]]:
    """httpx's defaults (5 s timeouts), with the same pool limits as the resilient client."""
    import httpx

    # verify=False: the upstream is plain HTTP, and loading CA certificates costs 0.1 s.
    return httpx.AsyncClient(limits=_limits(), verify=False), lambda: ""


def _limits() -> Any:
    import httpx

    return httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE)


def _resilient_client(seed: int) -> MakeClient:
    """The resilient client: `ResilientTransport` on this pipeline, outermost first.

    total timeout (3 s) -> wait for the circuit (a Retry of BrokenCircuitError that
    sleeps its retry_after) -> retry (4 attempts, exponential backoff from 0.2 s with
    jitter, transient errors and failure statuses, standard RetryBudget) -> circuit
    breaker (40 % failures over 1 s, at least 20 attempts, 0.25 s break) -> attempt
    timeout (1 s).
    """

    def make(result: RunResult, t0: list[float]) -> tuple[Any, Callable[[], str]]:
        import httpx

        from resilio.errors import BrokenCircuitError
        from resilio.integrations.httpx import TRANSIENT_ERRORS, FailedResponse, ResilientTransport
        from resilio.pipeline import Pipeline
        from resilio.strategies.circuit_breaker import CircuitBreaker
        from resilio.strategies.retry import Backoff, Retry, RetryBudget
        from resilio.strategies.timeout import Timeout

        def transition(state: str) -> Callable[[CircuitBreaker], None]:
            def hook(_: CircuitBreaker) -> None:
                result.transitions.append((time.monotonic() - t0[0], state))

            return hook

        async def release(attempt: int, outcome: Any, delay: float) -> None:
            # Free the failed response's connection now, not after the backoff.
            if isinstance(outcome, FailedResponse):
                await outcome.response.aclose()

        total = Timeout(TOTAL_TIMEOUT, name="total_timeout")
        # Waiting out an open circuit sends nothing upstream, so it is not charged to
        # the retry budget: a call the breaker refuses sleeps its retry_after (when the
        # deadline leaves room) and tries again; the breaker admits one probe at a time.
        spread = random.Random(seed).random

        async def stagger(attempt: int, outcome: Any, delay: float) -> None:
            # Every waiting call was told the same instant: come back spread out instead.
            await anyio.sleep(CIRCUIT_WAIT_SPREAD * spread())

        circuit_wait = Retry(
            CIRCUIT_WAITS,
            backoff=Backoff.constant(CIRCUIT_WAIT_DELAY, max_delay=TOTAL_TIMEOUT),
            handle=BrokenCircuitError,
            on_retry=stagger,
            name="circuit_wait",
        )
        retry = Retry(
            RETRY_ATTEMPTS,
            backoff=Backoff.exponential(
                RETRY_DELAY, max_delay=RETRY_MAX_DELAY, jitter=True, seed=seed
            ),
            handle=TRANSIENT_ERRORS,
            on_retry=release,
            budget=RetryBudget(),
        )
        breaker = CircuitBreaker(
            failure_ratio=BREAKER_FAILURE_RATIO,
            minimum_throughput=BREAKER_MIN_THROUGHPUT,
            sampling_duration=BREAKER_SAMPLING,
            break_duration=BREAKER_BREAK,
            handle=TRANSIENT_ERRORS,
            on_opened=transition("open"),
            on_half_opened=transition("half-open"),
            on_closed=transition("closed"),
        )
        attempt = Timeout(ATTEMPT_TIMEOUT, name="attempt_timeout")
        pipeline = Pipeline(total, circuit_wait, retry, breaker, attempt, name="demo")
        inner = httpx.AsyncHTTPTransport(limits=_limits(), verify=False)  # plain HTTP
        transport = ResilientTransport(pipeline, inner)
        result.total_timeout = TOTAL_TIMEOUT

        def state() -> str:
            stats = retry.stats()
            waits = circuit_wait.stats()
            result.retry = stats
            result.rejections = {
                "circuit open (attempts refused)": breaker.rejected,
                "waits for the circuit to close": waits["retries"],
                "calls that gave up on the circuit": waits["gave_up"] + waits["exhausted"],
                "retry budget (retries refused)": stats["budget_refused"],
                "retry gave up (Retry-After or deadline)": stats["gave_up"],
                "total timeout (calls cut)": total.timeouts,
                "attempt timeout (attempts cut)": attempt.timeouts,
            }
            return f"breaker {breaker.state.name.lower().replace('_', '-')}"

        # httpx's own timeouts sit just under the attempt timeout, so a slow attempt ends
        # inside httpcore rather than by cancellation, which can leak pool slots.
        network = httpx.Timeout(ATTEMPT_TIMEOUT - 0.1, connect=ATTEMPT_TIMEOUT / 2)
        return httpx.AsyncClient(transport=transport, timeout=network), state

    return make


# ---- figures -----------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def _outage(duration: float) -> tuple[float, float]:
    from resilio.demo.upstream import TIMELINE

    p = next(p for p in TIMELINE if p.name == "outage")
    return p.start * duration, p.end * duration


def summarize(result: RunResult) -> dict[str, Any]:
    """The figures of one run, as plain data."""
    calls = result.calls
    n = len(calls)
    ok = sum(c.ok for c in calls)
    lo, hi = _outage(result.duration)
    outside = [c for c in calls if not lo <= c.start < hi]
    ok_outside = sum(c.ok for c in outside)
    durations = sorted(c.end - c.start for c in calls)
    failures: dict[str, int] = {}
    for c in calls:
        if not c.ok:
            failures[c.outcome] = failures.get(c.outcome, 0) + 1
    max_duration = durations[-1] if durations else 0.0
    summary: dict[str, Any] = {
        "name": result.name,
        "title": result.title,
        "calls": n,
        "succeeded": ok,
        "success_rate": ok / n if n else math.nan,
        "calls_outside_outage": len(outside),
        "success_rate_outside_outage": ok_outside / len(outside) if outside else math.nan,
        "p50": _percentile(durations, 0.50),
        "p95": _percentile(durations, 0.95),
        "p99": _percentile(durations, 0.99),
        "max_duration": max_duration,
        "upstream_calls": result.upstream_calls,
        "amplification": result.upstream_calls / n if n else math.nan,
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        "retry": result.retry,
        "rejections": result.rejections,
        "transitions": result.transitions,
        "total_timeout": result.total_timeout,
        "max_overrun": None
        if result.total_timeout is None
        else max_duration - result.total_timeout,
    }
    return summary


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f} %"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{1000 * x:.0f} ms"


def _transitions_text(transitions: list[tuple[float, str]], limit: int = 12) -> str:
    if not transitions:
        return "none"
    items = [f"{state} {t:.1f}s" for t, state in transitions]
    if len(items) > limit:
        items = [*items[: limit - 1], f"... ({len(items) - limit + 1} more)"]
    return ", ".join(items)


def targets(resilient: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, figure, target, met) for the resilient run."""
    overrun = resilient["max_overrun"] or 0.0
    return [
        (
            "success outside the outage",
            _pct(resilient["success_rate_outside_outage"]),
            f">= {100 * TARGET_SUCCESS:.0f} %",
            resilient["success_rate_outside_outage"] >= TARGET_SUCCESS,
        ),
        (
            "max overrun of the total timeout",
            f"{1000 * overrun:+.1f} ms",
            f"<= {1000 * TARGET_OVERRUN:.0f} ms",
            overrun <= TARGET_OVERRUN,
        ),
        (
            "load amplification",
            f"{resilient['amplification']:.2f}x",
            f"<= {TARGET_AMPLIFICATION}x",
            resilient["amplification"] <= TARGET_AMPLIFICATION,
        ),
    ]


def print_report(bare: dict[str, Any], resilient: dict[str, Any], out: TextIO) -> None:
    """Print the side-by-side comparison and the targets."""
    rows: list[tuple[str, str, str]] = [
        ("calls", str(bare["calls"]), str(resilient["calls"])),
        ("success rate", _pct(bare["success_rate"]), _pct(resilient["success_rate"])),
        (
            "  outside the outage",
            _pct(bare["success_rate_outside_outage"]),
            _pct(resilient["success_rate_outside_outage"]),
        ),
        ("latency p50", _ms(bare["p50"]), _ms(resilient["p50"])),
        ("latency p95", _ms(bare["p95"]), _ms(resilient["p95"])),
        ("latency p99", _ms(bare["p99"]), _ms(resilient["p99"])),
        ("slowest call", _ms(bare["max_duration"]), _ms(resilient["max_duration"])),
        ("upstream calls", str(bare["upstream_calls"]), str(resilient["upstream_calls"])),
        (
            "load amplification",
            f"{bare['amplification']:.2f}x",
            f"{resilient['amplification']:.2f}x",
        ),
        (
            "retries",
            "-",
            "-" if resilient["retry"] is None else str(resilient["retry"]["retries"]),
        ),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    w1 = max(max(len(r[1]) for r in rows), len("bare httpx")) + 3
    print("", file=out)
    print(f"{'':<{w0}}{'bare httpx':<{w1}}resilient (ResilientTransport)", file=out)
    for label, a, b in rows:
        print(f"{label:<{w0}}{a:<{w1}}{b}", file=out)
    print("", file=out)
    for s in (bare, resilient):
        failures = ", ".join(f"{k} {v}" for k, v in s["failures"].items()) or "none"
        print(f"failed calls, {s['name']}: {failures}", file=out)
    if resilient["rejections"]:
        print("rejections, resilient:", file=out)
        for k, v in resilient["rejections"].items():
            print(f"  {k}: {v}", file=out)
    print(f"breaker transitions: {_transitions_text(resilient['transitions'])}", file=out)
    print("", file=out)
    print("targets (resilient run):", file=out)
    for what, figure, target, met in targets(resilient):
        print(f"  {what:<34} {figure:>10}  ({target})  {'met' if met else 'MISSED'}", file=out)


# ---- entry points ------------------------------------------------------------------------


async def run(options: DemoOptions, out: TextIO = sys.stdout) -> tuple[RunResult, RunResult]:
    """Run the workload bare, then resilient; return both results.

    Each run has its own upstream process (same seed, same timeline from its
    own t0), so the two clients meet the same faults at the same moments of
    their runs and nothing of the first run lingers in the second's service.
    One run at a time, so neither competes with the other for the CPU.
    """
    from resilio.demo.upstream import TIMELINE

    print(
        f"resilio demo: {options.rate:g} calls/s for {options.duration:g} s, bare then "
        f"resilient (seed {options.seed}, {100 * options.error_rate:g} % transient errors)",
        file=out,
    )
    for p in TIMELINE:
        print(
            f"  {p.start * options.duration:5.1f}-{p.end * options.duration:5.1f}s  "
            f"{p.name:<9} {p.label}",
            file=out,
            flush=True,
        )
    upstreams: list[_Upstream] = []

    async def start() -> None:
        upstreams.append(
            await anyio.to_thread.run_sync(_Upstream, options.seed, options.error_rate)
        )

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            tg.start_soon(start)
        sides = [
            _Side("bare", "bare httpx.AsyncClient", _bare_client, upstreams[0], options.duration),
            _Side(
                "resilient",
                "httpx.AsyncClient on ResilientTransport",
                _resilient_client(options.seed),
                upstreams[1],
                options.duration,
            ),
        ]
        import httpx

        # Built now, not mid-run: building a client blocks the loop (it loads CA
        # certificates unless verify=False).
        async with httpx.AsyncClient(verify=False) as control:
            for side in sides:
                if options.live:
                    print(f"\n{side.result.title}:", file=out, flush=True)
                await _run_side(side, control, options, out)
    finally:
        for up in upstreams:
            await anyio.to_thread.run_sync(up.close)
    return sides[0].result, sides[1].result


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `resilio demo` options to `parser`."""
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds of workload per run (default {DEFAULT_DURATION:g}; --quick: "
        f"{QUICK_DURATION:g})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"calls per second (default {DEFAULT_RATE:g}; --quick: {QUICK_RATE:g})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults (default 0)")
    parser.add_argument(
        "--error-rate",
        type=float,
        default=DEFAULT_ERROR_RATE,
        help=f"share of transient 503s (default {DEFAULT_ERROR_RATE:g})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        help=f"where to write the HTML report (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="a short run (about 10 s in all) for a first look"
    )
    parser.add_argument("--no-live", action="store_true", help="no progress line per second")


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the demo for parsed arguments; return the exit status."""
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"resilio demo needs httpx and uvicorn ({exc}): pip install httpx uvicorn", file=err)
        return 2
    duration = args.duration
    if duration is None:
        duration = QUICK_DURATION if args.quick else DEFAULT_DURATION
    rate = args.rate
    if rate is None:
        rate = QUICK_RATE if args.quick else DEFAULT_RATE
    problems = []
    if not (math.isfinite(duration) and duration > 0):
        problems.append(f"--duration must be > 0, got {duration!r}")
    if not (math.isfinite(rate) and rate > 0):
        problems.append(f"--rate must be > 0, got {rate!r}")
    if not 0.0 <= args.error_rate <= 1.0:
        problems.append(f"--error-rate must be in [0, 1], got {args.error_rate!r}")
    if problems:
        for p in problems:
            print(f"resilio demo: {p}", file=err)
        return 2
    options = DemoOptions(
        duration=duration,
        rate=rate,
        seed=args.seed,
        error_rate=args.error_rate,
        output=args.output,
        json_path=args.json,
        live=not args.no_live,
    )
    bare, resilient = anyio.run(run, options, out, backend="asyncio")
    from resilio.demo.report import render

    sb, sr = summarize(bare), summarize(resilient)
    print_report(sb, sr, out)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(render(options, bare, resilient, sb, sr), encoding="utf-8")
    if options.json_path is not None:
        doc = {
            "options": {
                "duration": options.duration,
                "rate": options.rate,
                "seed": options.seed,
                "error_rate": options.error_rate,
            },
            "bare": sb,
            "resilient": sr,
            "targets": [
                {"what": w, "figure": f, "target": t, "met": m} for w, f, t, m in targets(sr)
            ],
            # Every call: [index, start s, end s, ok, outcome], times from the run's start.
            "calls": {
                r.name: [
                    [c.index, round(c.start, 4), round(c.end, 4), c.ok, c.outcome] for c in r.calls
                ]
                for r in (bare, resilient)
            },
        }
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    print(f"\nreport: {options.output.resolve()}", file=out)
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    """`resilio demo` as a function: parse `argv`, run, return the exit status."""
    parser = argparse.ArgumentParser(
        prog="resilio demo", description="a flaky upstream, bare vs resilient"
    )
    configure(parser)
    return execute(parser.parse_args(argv), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(demo_main())
