"""Requests/s through resilio's httpx transport, against a bare `httpx.AsyncClient`.

A uvicorn server (a minimal ASGI app answering 200 "ok", no access log) runs in a
subprocess on a free port of 127.0.0.1: its work runs on another core and never holds
the client's GIL. The client side runs on the module's persistent event loop (the
`loop` fixture), with warm keep-alive pools, and checks every status.

Variants: `bare` is `httpx.AsyncClient()`; `resilio` is
`resilio.integrations.httpx.client()` with its defaults (total timeout 30 s, retry,
per-origin circuit breaker, attempt timeout 10 s, the deadline forwarded as
`Request-Timeout`); `resilio-no_deadline` is the same with `forward_deadline=False`.
Modes: `sequential` sends REQUESTS GETs one after the other (one keep-alive
connection); `concurrent` sends as many from CONCURRENCY tasks (CONCURRENCY connections).

- `test_throughput[mode-variant]`: one variant per test, a round = REQUESTS GETs
  (pytest-benchmark's statistics are per round). extra_info: `us_per_request` (median
  round / REQUESTS), `requests_per_s`, and `cpu_us_per_request` (the client process's
  CPU time, which is what the transport adds to).
- `test_ratio[mode]`: all variants in one test, interleaved round by round in a
  rotating order, so a change of machine load hits them alike. extra_info holds each
  variant's median `us_per_request`, `cpu_us_per_request`, `requests_per_s`, and
  `rps_ratio`: the median over cycles of (bare round time / variant round time), i.e.
  the variant's requests/s as a fraction of bare's (the target is >= 0.98 for `resilio`).

    python -m pytest benchmarks/test_httpx.py -p no:cacheprovider --benchmark-only -s \\
        --benchmark-json=benchmarks/results/httpx.json

Wall-clock figures on a loaded 2-core machine swing by several per cent between runs,
which is the size of the effect measured here. Instruction counts do not:

    python benchmarks/test_httpx.py --instructions   # -> benchmarks/results/httpx_instructions.json

runs each variant's client under `valgrind --tool=callgrind` (the server is not
counted), counting only the measured rounds of the sequential mode. It adds
`bare+header`: the bare client with one more request header, appended the cheapest way
there is, which is what httpx itself spends on the `Request-Timeout` header that
`resilio` sends. RESILIO_BENCH_HTTPX_CYCLES sets the cycles of test_ratio (default 100).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import operator
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: GETs per round, in either mode.
REQUESTS = 160
#: Tasks sharing a round's GETs in the concurrent mode.
CONCURRENCY = 16
CYCLES = int(os.environ.get("RESILIO_BENCH_HTTPX_CYCLES", 100))
#: requests/s of the default transport as a fraction of bare's: the target.
TARGET_RATIO = 0.98

VARIANTS = ["bare", "resilio", "resilio-no_deadline"]
MODES = ["sequential", "concurrent"]

SERVER = r"""
import socket, sys, uvicorn

HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})

# IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
# listener's proto says TCP. Without it, uvicorn's two writes (head, body) meet Nagle
# and the client's delayed ACK: 40 ms per keep-alive response.
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
# Keep-alive for an hour: under valgrind a client's pooled connection idles for seconds,
# and a server closing it (5 s by default) races the request sent on it.
config = uvicorn.Config(
    app, access_log=False, log_level="warning", lifespan="off", timeout_keep_alive=3600
)
config.load()
print(sock.getsockname()[1], config.http_protocol_class.__name__, config.loop, flush=True)
uvicorn.Server(config).run(sockets=[sock])
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def running_server() -> Iterator[dict[str, str]]:
    """Start the uvicorn subprocess; yield its URL and a description of it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line:
            raise RuntimeError(f"the uvicorn subprocess did not start (exit {proc.wait(5)})")
        port = int(line[0])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the uvicorn subprocess does not listen") from None
                time.sleep(0.01)
        yield {
            "url": f"http://127.0.0.1:{port}/",
            "server": f"uvicorn {line[1]} (loop={line[2]}) in a subprocess",
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _WithHeader(httpx.AsyncHTTPTransport):
    """The default transport, sending one more header (appended as cheaply as it can be)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers._list.append((b"Request-Timeout", b"request-timeout", b"9.999"))
        return await super().handle_async_request(request)


def build(variant: str) -> httpx.AsyncClient:
    from resilio.integrations.httpx import client

    if variant == "bare":
        return httpx.AsyncClient()
    if variant == "bare+header":
        return httpx.AsyncClient(transport=_WithHeader())
    if variant == "resilio":
        return client()
    if variant == "resilio-no_deadline":
        return client(forward_deadline=False)
    raise ValueError(f"unknown variant {variant!r}")


Round = Callable[[], Awaitable[None]]


def per_round(mode: str) -> int:
    return REQUESTS if mode == "sequential" else REQUESTS // CONCURRENCY * CONCURRENCY


def make_round(c: httpx.AsyncClient, url: str, mode: str) -> Round:
    get = c.get

    async def worker(n: int) -> None:
        for _ in range(n):
            r = await get(url)
            if r.status_code != 200:
                raise AssertionError(f"{r.status_code} from the server")

    async def sequential() -> None:
        await worker(REQUESTS)

    async def concurrent() -> None:
        await asyncio.gather(*(worker(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))

    return sequential if mode == "sequential" else concurrent


# ---- the timed suite (pytest) -----------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    with running_server() as s:
        yield s


@pytest.fixture(scope="module")
def clients(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, httpx.AsyncClient]]:
    built = {v: build(v) for v in VARIANTS}
    try:
        yield built
    finally:
        for c in built.values():
            loop.run_until_complete(c.aclose())


def _common(mode: str, server: dict[str, str], load_start: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "requests_per_round": per_round(mode),
        "concurrency": CONCURRENCY if mode == "concurrent" else 1,
        "server": server["server"],
        "load_average": f"{load_start} -> {load_average()}",
    }


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_throughput(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    server: dict[str, str],
    clients: dict[str, httpx.AsyncClient],
    mode: str,
    variant: str,
) -> None:
    fn = make_round(clients[variant], server["url"], mode)
    for _ in range(3):  # connections open, caches warm: not measured
        loop.run_until_complete(fn())
    cpu: list[float] = []

    def one_round() -> None:
        c0 = time.process_time()
        loop.run_until_complete(fn())
        cpu.append(time.process_time() - c0)

    load_start = load_average()
    benchmark.group = f"httpx {mode}"
    benchmark(one_round)
    n = per_round(mode)
    benchmark.extra_info.update(_common(mode, server, load_start), variant=variant)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["us_per_request"] = round(stats.median * 1e6 / n, 2)
        benchmark.extra_info["requests_per_s"] = round(n / stats.median, 1)
        benchmark.extra_info["cpu_us_per_request"] = round(statistics.median(cpu) * 1e6 / n, 2)


@pytest.mark.parametrize("mode", MODES)
def test_ratio(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    server: dict[str, str],
    clients: dict[str, httpx.AsyncClient],
    mode: str,
) -> None:
    rounds = {v: make_round(clients[v], server["url"], mode) for v in VARIANTS}
    for fn in rounds.values():
        for _ in range(3):
            loop.run_until_complete(fn())
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def interleaved() -> None:
        for cycle in range(CYCLES):
            # A rotating order: no variant always runs right after the same other one.
            k = cycle % len(VARIANTS)
            for v in VARIANTS[k:] + VARIANTS[:k]:
                w0, c0 = time.perf_counter(), time.process_time()
                loop.run_until_complete(rounds[v]())
                wall[v].append(time.perf_counter() - w0)
                cpu[v].append(time.process_time() - c0)

    load_start = load_average()
    benchmark.group = f"httpx ratio {mode}"
    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    n = per_round(mode)
    extra = _common(mode, server, load_start)
    extra.update(cycles=CYCLES, target_ratio=TARGET_RATIO)
    lines = [f"\nhttpx {mode}: {CYCLES} cycles, load average {extra['load_average']}"]
    for v in VARIANTS:
        us = statistics.median(wall[v]) * 1e6 / n
        cpu_us = statistics.median(cpu[v]) * 1e6 / n
        extra[f"{v}.us_per_request"] = round(us, 2)
        extra[f"{v}.cpu_us_per_request"] = round(cpu_us, 2)
        extra[f"{v}.requests_per_s"] = round(1e6 / us, 1)
        line = f"  {v:22} {us:8.1f} us/request  {cpu_us:8.1f} us CPU/request"
        if v != "bare":
            ratio = statistics.median(b / x for b, x in zip(wall["bare"], wall[v], strict=True))
            cpu_ratio = statistics.median(x / b for b, x in zip(cpu["bare"], cpu[v], strict=True))
            extra[f"{v}.rps_ratio"] = round(ratio, 4)
            extra[f"{v}.cpu_ratio"] = round(cpu_ratio, 4)
            line += f"  requests/s x{ratio:.3f}  CPU x{cpu_ratio:.3f}"
        lines.append(line)
    benchmark.extra_info.update(extra)
    print("\n".join(lines))


# ---- instruction counts (python benchmarks/test_httpx.py --instructions) ----------------

#: Rounds counted per variant and mode.
ROUNDS = 2
#: A C function only the measured code enters: callgrind counts inside it alone.
MARKER = "_operator_call"
INSTRUCTION_VARIANTS = ["bare", "bare+header", "resilio", "resilio-no_deadline"]


def _child(variant: str, mode: str, url: str, rounds: int) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    c = build(variant)
    fn = make_round(c, url, mode)
    run_until_complete = loop.run_until_complete
    for _ in range(3):
        run_until_complete(fn())

    def measured(k: int) -> None:
        for _ in range(k):
            run_until_complete(fn())

    operator.call(measured, rounds)
    run_until_complete(c.aclose())
    loop.close()


def _count(variant: str, mode: str, url: str, out: str) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--collect-atstart=no",
        f"--toggle-collect={MARKER}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        mode,
        url,
        str(ROUNDS),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not m or int(m.group(1)) == 0:
        raise RuntimeError(f"{variant}: callgrind failed (exit {proc.returncode}): {proc.stderr}")
    return int(m.group(1))


def instructions(variants: list[str], modes: list[str], keep: bool, jobs: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    from concurrent.futures import ThreadPoolExecutor

    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    payload: dict[str, Any] = {
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        "requests_per_round": {m: per_round(m) for m in modes},
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "command": "python benchmarks/test_httpx.py --instructions",
        "target_ratio": TARGET_RATIO,
        "modes": {},
    }
    with running_server() as srv:
        payload["server"] = srv["server"]
        jobs_list = [(v, m) for m in modes for v in variants]

        def one(job: tuple[str, str]) -> tuple[str, str, float]:
            v, m = job
            out = str(RESULTS / f"callgrind.httpx.{m}.{v}.out") if keep else os.devnull
            return v, m, _count(v, m, srv["url"], out) / (ROUNDS * per_round(m))

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            counted = list(ex.map(one, jobs_list))
    for m in modes:
        per_request = {v: ipr for v, mm, ipr in counted if mm == m}
        base = per_request.get("bare")
        rows: dict[str, Any] = {}
        print(f"{m}:")
        for v in variants:
            ipr = per_request[v]
            row: dict[str, Any] = {"instructions_per_request": round(ipr)}
            shown = ""
            if base is not None and v != "bare":
                row["added"] = round(ipr - base)
                # Requests/s if time followed the client's instructions alone.
                row["ratio"] = round(base / ipr, 4)
                shown = f"  (+{ipr - base:,.0f}, x{base / ipr:.3f})"
            rows[v] = row
            print(f"  {v:22} {ipr:>12,.0f} instr/request{shown}")
        payload["modes"][m] = rows
    path = RESULTS / "httpx_instructions.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({time.monotonic() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    ap.add_argument(
        "--variants",
        default="",
        help=f"comma-separated, default: {','.join(INSTRUCTION_VARIANTS)} (bare always runs)",
    )
    ap.add_argument("--keep", action="store_true", help="keep callgrind.httpx.*.out files")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="variants counted at once")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.child:
        variant, mode, url, rounds = args.child
        _child(variant, mode, url, int(rounds))
        return
    if not args.instructions:
        ap.error("run the timed suite with pytest; this script only counts --instructions")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] or INSTRUCTION_VARIANTS
    if "bare" not in variants:
        variants.insert(0, "bare")
    # Sequential only: with 16 requests in flight, the count depends on how they
    # interleave, which valgrind's 50-fold slowdown changes (and the 30 s total
    # timeout of the default transport can fire under it).
    instructions(variants, ["sequential"], args.keep, args.jobs)


if __name__ == "__main__":
    main()
