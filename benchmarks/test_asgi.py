"""In-process cost per request of the ASGI middleware, against a bare Starlette app and slowapi.

No server and no sockets: each case is an ASGI callable driven directly with a prebuilt
`http` scope (a shallow copy per request, since Starlette writes into it), a `receive`
that returns one empty body and a `send` that drops the messages. A round is
`loop.run_until_complete(batch())` where `batch` serves N requests in a loop, on the
module's one event loop (the `loop` fixture). The per-request figure is round / N; what a
middleware adds is its figure minus the bare app's, from the same run.

The app is a one-route Starlette app answering `PlainTextResponse("hello")`. Nothing is
ever refused: the rate limit is keyed by client address with a limit far above the
request rate, load shedding has far more slots than the one request in flight, and
slowapi's default limit is "1000000/second". slowapi is wired as its docs show
(`app.state.limiter`, `SlowAPIASGIMiddleware` added to the Starlette app); resilio's
middleware wraps the app from outside, as docs/integrations.md shows.

    python -m pytest benchmarks/test_asgi.py -p no:cacheprovider --benchmark-only \\
        --benchmark-json=benchmarks/results/asgi.json

pytest-benchmark times each case in one stretch, so on a shared machine a change of
background load between cases shows up as a difference between them. Two more modes
of this file, run as a script, do better there:

    python benchmarks/test_asgi.py --interleaved      # -> benchmarks/results/asgi_interleaved.json
    python benchmarks/test_asgi.py --instructions     # -> benchmarks/results/asgi_instructions.json

`--interleaved` times one round of every case in turn, round after round (rotating the
order), with the process CPU clock, and reports per case the median and the minimum
over rounds, and what it adds over the bare app as the median of the per-round
differences (the bare app measured in the same round). `--instructions` runs each case
under `valgrind --tool=callgrind`, counting only the measured rounds: instruction
counts do not depend on the load at all (but an instruction is not a nanosecond).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: Requests per round.
N = 1000

#: Targets: added us per request over the bare app, for the resilio cases.
TARGETS_US = {
    "rate_limit": 1.0,
    "load_shedding": 0.5,
}

Message = MutableMapping[str, Any]
Batch = Callable[[], Awaitable[None]]

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 51234),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"bench"),
        (b"accept", b"*/*"),
    ],
}

_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> Message:
    return _REQUEST


async def send(message: Message) -> None:
    pass


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)])


def _serve(app: Any) -> Batch:
    """N requests through `app`, each on its own copy of the scope."""
    scope = SCOPE

    async def batch() -> None:
        for _ in range(N):
            await app(dict(scope), receive, send)

    return batch


def _check(app: Any) -> None:
    """Fail loudly if a case does not answer 200 (a refusal would be cheap and wrong)."""
    sent: list[Message] = []

    async def keep(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(dict(SCOPE), receive, keep))
    status = sent[0]["status"] if sent else None
    if status != 200:
        raise AssertionError(f"the case answered {status}, not 200: {sent}")


# ---- cases ------------------------------------------------------------------------------


def bare() -> Any:
    return starlette_app()


def rate_limit() -> Any:
    from resilio.integrations.asgi import RateLimitMiddleware

    return RateLimitMiddleware(starlette_app(), rate=1e6, burst=10**6, key="client")


def load_shedding() -> Any:
    from resilio.integrations.asgi import LoadSheddingMiddleware

    return LoadSheddingMiddleware(starlette_app(), max_concurrency=10_000)


def deadline() -> Any:
    from resilio.integrations.asgi import DeadlineMiddleware

    return DeadlineMiddleware(starlette_app(), timeout=30.0)


def rate_limit_and_load_shedding() -> Any:
    from resilio.integrations.asgi import LoadSheddingMiddleware, RateLimitMiddleware

    return RateLimitMiddleware(
        LoadSheddingMiddleware(starlette_app(), max_concurrency=10_000),
        rate=1e6,
        burst=10**6,
        key="client",
    )


def slowapi(headers: bool = False) -> Any:
    try:
        from slowapi import Limiter
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address
    except ImportError:
        pytest.skip("slowapi is not installed (pip install -e '.[bench]')")
    app = starlette_app()
    app.state.limiter = Limiter(
        key_func=get_remote_address,
        default_limits=["1000000/second"],
        headers_enabled=headers,
    )
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


def slowapi_headers() -> Any:
    return slowapi(headers=True)


@dataclass(frozen=True)
class Case:
    id: str
    job: str
    library: str
    build: Callable[[], Any]
    how: str


CASES = [
    Case("bare", "baseline", "-", bare, "Starlette app, one route"),
    Case(
        "resilio-rate_limit",
        "rate_limit",
        "resilio",
        rate_limit,
        'RateLimitMiddleware(app, rate=1e6, burst=10**6, key="client")',
    ),
    Case(
        "resilio-load_shedding",
        "load_shedding",
        "resilio",
        load_shedding,
        "LoadSheddingMiddleware(app, max_concurrency=10_000)",
    ),
    Case(
        "resilio-deadline",
        "deadline",
        "resilio",
        deadline,
        "DeadlineMiddleware(app, timeout=30.0)",
    ),
    Case(
        "resilio-rate_limit+load_shedding",
        "rate_limit+load_shedding",
        "resilio",
        rate_limit_and_load_shedding,
        "RateLimitMiddleware(LoadSheddingMiddleware(app, ...), ...)",
    ),
    Case(
        "slowapi",
        "rate_limit",
        "slowapi",
        slowapi,
        'SlowAPIASGIMiddleware, Limiter(default_limits=["1000000/second"])',
    ),
    Case(
        "slowapi-headers",
        "rate_limit",
        "slowapi",
        slowapi_headers,
        "the same with headers_enabled=True (X-RateLimit-* headers)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_asgi(benchmark: Any, loop: asyncio.AbstractEventLoop, per_op: Any, case: Case) -> None:
    app = case.build()
    _check(app)
    batch = _serve(app)
    run_until_complete = loop.run_until_complete
    run_until_complete(batch())  # unmeasured: warms caches, fails outside the timing

    benchmark.group = "asgi: in-process request"
    benchmark(lambda: run_until_complete(batch()))
    extra: dict[str, Any] = {"job": case.job, "library": case.library, "how": case.how}
    if case.library == "resilio" and case.job in TARGETS_US:
        extra["target_added_ns"] = TARGETS_US[case.job] * 1000
    per_op(benchmark, N, **extra)


# ---- instruction counts (python benchmarks/test_asgi.py --instructions) -----------------

#: Rounds counted per case.
ROUNDS = 2
#: A C function only the measured code enters: callgrind counts inside it alone.
MARKER = "_operator_call"


def _child(case_id: str, rounds: int) -> None:
    case = next(c for c in CASES if c.id == case_id)
    app = case.build()
    _check(app)
    batch = _serve(app)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_until_complete = loop.run_until_complete
    for _ in range(3):
        run_until_complete(batch())

    def measured(k: int) -> None:
        for _ in range(k):
            run_until_complete(batch())

    operator.call(measured, rounds)
    loop.close()


def _count(case_id: str, out: str) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--collect-atstart=no",
        f"--toggle-collect={MARKER}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        case_id,
        str(ROUNDS),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not m or int(m.group(1)) == 0:
        raise RuntimeError(f"{case_id}: callgrind failed (exit {proc.returncode}): {proc.stderr}")
    return int(m.group(1))


def instructions(ids: list[str], keep: bool, jobs: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    from concurrent.futures import ThreadPoolExecutor

    def one(cid: str) -> tuple[str, float]:
        out = str(RESULTS / f"callgrind.asgi.{cid}.out") if keep else os.devnull
        return cid, _count(cid, out) / (ROUNDS * N)

    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        per_request = dict(ex.map(one, ids))
    base = per_request.get("bare")
    cases = {}
    for c in CASES:
        if c.id not in per_request:
            continue
        ipr = per_request[c.id]
        added = None if base is None or c.id == "bare" else ipr - base
        cases[c.id] = {
            "job": c.job,
            "library": c.library,
            "how": c.how,
            "instructions_per_request": round(ipr),
            "added": None if added is None else round(added),
        }
        shown = "" if added is None else f"  (+{added:,.0f})"
        print(f"{c.id:34} {ipr:>10,.0f} instr/request{shown}")
    payload = {
        "python": sys.version.split()[0],
        "requests_per_round": N,
        "rounds": ROUNDS,
        "command": "python benchmarks/test_asgi.py --instructions",
        "cases": cases,
    }
    path = RESULTS / "asgi_instructions.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({time.monotonic() - t0:.0f} s)")


def interleaved(ids: list[str], rounds: int) -> None:
    import statistics

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_until_complete = loop.run_until_complete
    batches = {}
    for c in CASES:
        if c.id in ids:
            app = c.build()
            _check(app)
            batches[c.id] = _serve(app)
            for _ in range(3):
                run_until_complete(batches[c.id]())
    order = [c.id for c in CASES if c.id in batches]
    clock = time.process_time
    times: dict[str, list[float]] = {cid: [] for cid in order}
    load_start = _load()
    t_start = time.monotonic()
    for r in range(rounds):
        k = r % len(order)
        for cid in order[k:] + order[:k]:
            batch = batches[cid]
            t0 = clock()
            run_until_complete(batch())
            times[cid].append((clock() - t0) / N * 1e6)
    loop.close()
    base = times["bare"]
    cases = {}
    for c in CASES:
        if c.id not in times:
            continue
        mine = times[c.id]
        added = [t - b for t, b in zip(mine, base, strict=True)]
        cases[c.id] = {
            "job": c.job,
            "library": c.library,
            "how": c.how,
            "us_per_request_median": round(statistics.median(mine), 3),
            "us_per_request_min": round(min(mine), 3),
            "added_us_median": None if c.id == "bare" else round(statistics.median(added), 3),
            "added_us_min": None if c.id == "bare" else round(min(mine) - min(base), 3),
        }
        if c.library == "resilio" and c.job in TARGETS_US:
            cases[c.id]["target_added_us"] = TARGETS_US[c.job]
        e = cases[c.id]
        extra = (
            ""
            if c.id == "bare"
            else f"  added: median {e['added_us_median']:6.2f}  min {e['added_us_min']:6.2f}"
        )
        print(
            f"{c.id:34} median {e['us_per_request_median']:7.2f} us"
            f"  min {e['us_per_request_min']:7.2f} us{extra}"
        )
    payload = {
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "timer": "time.process_time",
        "requests_per_round": N,
        "rounds": rounds,
        "load_average_start": load_start,
        "load_average_end": _load(),
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "command": f"python benchmarks/test_asgi.py --interleaved --rounds {rounds}",
        "cases": cases,
    }
    path = RESULTS / "asgi_interleaved.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"load average {load_start} -> {payload['load_average_end']}")
    print(f"wrote {path.relative_to(ROOT)}")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    ap.add_argument("--interleaved", action="store_true", help="time the cases round-robin")
    ap.add_argument("--rounds", type=int, default=200, help="rounds for --interleaved")
    ap.add_argument("--cases", default="", help="comma-separated case ids (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep callgrind.asgi.<case>.out files")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="cases run at once")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "ROUNDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    ids = [i.strip() for i in args.cases.split(",") if i.strip()] or [c.id for c in CASES]
    if "bare" not in ids:
        ids.insert(0, "bare")
    if args.interleaved:
        interleaved(ids, args.rounds)
    elif args.instructions:
        instructions(ids, args.keep, args.jobs)
    else:
        ap.error("time with pytest, or pass --interleaved or --instructions")


if __name__ == "__main__":
    main()
