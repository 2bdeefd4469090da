"""Requests per second under uvicorn + wrk: a bare Starlette app, with resilio's
middleware, and with slowapi's.

    python benchmarks/wrk_asgi.py                      # 5 rounds of 5 s per variant
    python benchmarks/wrk_asgi.py --rounds 3 --duration 3s --connections 32

Each variant is served by its own uvicorn process (one worker, no access log) on a
free port of 127.0.0.1, started by this script and stopped at the end. The app is a
one-route Starlette app answering `PlainTextResponse("hello")` (the same app as
benchmarks/test_asgi.py):

- ``bare``: the app alone;
- ``bare+headers``: the app, plus the two `RateLimit*` headers added to each response
  by a plain wrapper (a control: what sending those headers costs, without limiting);
- ``resilio``: `RateLimitMiddleware(LoadSheddingMiddleware(app))`, keyed by client
  address, limits far above the request rate (rate=1e6, burst=10**6;
  max_concurrency=10_000): every request pays for both and none is refused;
- ``resilio+deadline``: the same inside a `DeadlineMiddleware(timeout=30)`;
- ``slowapi``: `SlowAPIASGIMiddleware` with `Limiter(default_limits=["1000000/second"])`.

wrk runs with one thread (``-t1``). On a machine with two or more cores the servers
are pinned to core 0 and wrk to core 1, so that the client never competes with the
server it measures (``--no-pin`` turns that off). Rounds are interleaved (every
variant once per round, in a rotating order) so that a change in background load hits
all variants alike; the figure per variant is the median over rounds, and each
variant's ratio to the bare app is computed per round, then the median taken. A
response that is not 2xx/3xx, or a socket error, fails the run: the comparison is only
meaningful when nothing is refused.

Results go to benchmarks/results/asgi_wrk.json (machine, versions, load average per
run, every run's figures, medians and ratios).

On a shared machine req/s swings by more than the few percent being compared. The
same servers can instead be measured in instructions, which do not depend on the load:

    python benchmarks/wrk_asgi.py --instructions   # -> results/asgi_wrk_instructions.json

runs each uvicorn under `valgrind --tool=callgrind`, warms it up with wrk, zeroes the
counters, serves `--duration` of wrk traffic (``-c4``: valgrind makes the server some
50x slower), dumps the counters, and divides by the requests wrk completed: the whole
server's instructions per request (event loop, h11, Starlette, middleware), bare and
with each middleware.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "asgi_wrk.json"

VARIANTS = ["bare", "bare+headers", "resilio", "resilio+deadline", "slowapi"]
#: The two headers RateLimitMiddleware adds to every response, as the control variant
#: `bare+headers` sends them (fixed values, no limiting): what writing them costs the
#: server (h11 validates every header of a response in Python).
RATELIMIT_HEADERS = [
    (b"ratelimit-policy", b'"default";q=1000000;w=1'),
    (b"ratelimit", b'"default";r=999999;t=1'),
]
#: Target: the resilio variant serves at least this fraction of the bare app's req/s.
TARGET_RATIO = 0.97


# ---- the served apps (child process) ----------------------------------------------------


def build_app(variant: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app: Any = Starlette(routes=[Route("/", hello)])
    if variant == "bare":
        return app
    if variant == "bare+headers":
        return _with_headers(app)
    if variant in ("resilio", "resilio+deadline"):
        from resilio.integrations.asgi import (
            DeadlineMiddleware,
            LoadSheddingMiddleware,
            RateLimitMiddleware,
        )

        app = RateLimitMiddleware(
            LoadSheddingMiddleware(app, max_concurrency=10_000), rate=1e6, burst=10**6
        )
        if variant == "resilio+deadline":
            app = DeadlineMiddleware(app, timeout=30.0)
        return app
    if variant == "slowapi":
        from slowapi import Limiter
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address

        app.state.limiter = Limiter(key_func=get_remote_address, default_limits=["1000000/second"])
        app.add_middleware(SlowAPIASGIMiddleware)
        return app
    raise SystemExit(f"unknown variant {variant!r}")


def _with_headers(app: Any) -> Any:
    async def add_headers(scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = message["headers"] + RATELIMIT_HEADERS
            await send(message)

        await app(scope, receive, send_with_headers)

    return add_headers


def serve(variant: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build_app(variant),
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="auto",
        http="auto",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


# ---- driving (parent process) -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"uvicorn did not listen on port {port} within {timeout:g} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def servers(variants: list[str], cpu: int | None) -> Iterator[dict[str, tuple[int, int]]]:
    """Start one uvicorn per variant; yield variant -> (port, pid)."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, tuple[int, int]] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        for v in variants:
            port = free_port()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", v, str(port)]
            if cpu is not None:
                cmd = ["taskset", "-c", str(cpu), *cmd]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
            procs.append(proc)
            wait_listening(port, proc)
            ports[v] = (port, proc.pid)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    result: dict[str, Any] = {"rps": float(rps.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", out, re.MULTILINE)
        result[f"p{pct}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else None
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"refused or failed requests, the comparison is void:\n{out}")
    return result


def wrk_command(args: argparse.Namespace, port: int, duration: str, cpu: int | None) -> list[str]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{duration}",
        "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def server_stack() -> dict[str, str]:
    """What uvicorn's "auto" picks here, and the versions that matter."""
    import slowapi  # noqa: F401  (imported for its presence; version below)
    import starlette
    import uvicorn

    def version(dist: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(dist)
        except PackageNotFoundError:
            return "not installed"

    return {
        "uvicorn": uvicorn.__version__,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "starlette": starlette.__version__,
        "slowapi": version("slowapi"),
        "limits": version("limits"),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
    }


def count_server_instructions(
    variant: str, duration: str, connections: int, warmup: str
) -> dict[str, Any]:
    """Instructions per request of one uvicorn under callgrind (see the module doc)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"callgrind.wrk.{variant}.out"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PYTHONHASHSEED"] = "0"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        variant,
        str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, timeout=300.0)
        wrk = ["wrk", "-t1", f"-c{connections}", "--latency", f"http://127.0.0.1:{port}/"]
        subprocess.run([*wrk[:3], f"-d{warmup}", *wrk[3:]], capture_output=True, check=True)
        ctl = ["callgrind_control"]
        subprocess.run([*ctl, "--zero", str(proc.pid)], capture_output=True, check=True)
        run = subprocess.run(
            [*wrk[:3], f"-d{duration}", *wrk[3:]], capture_output=True, text=True, check=True
        )
        subprocess.run([*ctl, "--dump", str(proc.pid)], capture_output=True, check=True)
        requests = parse_wrk(run.stdout)["requests"]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # The dump written on request is OUT.1 (the final one at exit is OUT itself).
    dumps = sorted(RESULTS.glob(f"{out.name}.*"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for {variant}")
    text = dumps[-1].read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if not m or not requests:
        raise RuntimeError(f"no instruction total or no requests for {variant}")
    for f in [out, *dumps]:
        f.unlink(missing_ok=True)
    total = int(m.group(1))
    return {"requests": requests, "instructions": total, "per_request": round(total / requests)}


def instructions_main(args: argparse.Namespace, variants: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    results: dict[str, Any] = {}
    for v in variants:
        r = count_server_instructions(v, args.duration, 4, args.warmup)
        results[v] = r
        print(f"{v:18} {r['per_request']:>10,} instr/request  ({r['requests']} requests)")
    bare = results["bare"]["per_request"]
    for v, r in results.items():
        r["added"] = None if v == "bare" else r["per_request"] - bare
        r["ratio_to_bare"] = round(r["per_request"] / bare, 4)
        if v != "bare":
            print(f"  {v:18} +{r['added']:,} ({r['ratio_to_bare']:.3f}x bare)")
    payload = {
        "command": shlex.join(["python", "benchmarks/wrk_asgi.py", *sys.argv[1:]]),
        "python": sys.version.split()[0],
        "server": server_stack(),
        "wrk_connections": 4,
        "duration": args.duration,
        "variants": results,
    }
    path = Path(args.out) if args.out else RESULTS / "asgi_wrk_instructions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="runs per variant (interleaved)")
    ap.add_argument("--duration", default="5s", help="wrk -d per run (default 5s)")
    ap.add_argument("--warmup", default="1s", help="wrk -d of one unrecorded run per server")
    ap.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and wrk to cores")
    ap.add_argument(
        "--out",
        default="",
        help="JSON results file (default: results/asgi_wrk.json, or with --instructions"
        " results/asgi_wrk_instructions.json)",
    )
    ap.add_argument(
        "--instructions", action="store_true", help="count the servers' instructions instead"
    )
    ap.add_argument("--serve", nargs=2, metavar=("VARIANT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        serve(args.serve[0], int(args.serve[1]))
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "bare" not in variants:
        variants.insert(0, "bare")
    if args.instructions:
        instructions_main(args, variants)
        return
    ncpu = os.cpu_count() or 1
    pin = not args.no_pin and ncpu >= 2 and shutil.which("taskset") is not None
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    shown = shlex.join(["python", "benchmarks/wrk_asgi.py", *sys.argv[1:]])

    runs: list[dict[str, Any]] = []
    load_start = load_average()
    t0 = time.monotonic()
    with servers(variants, server_cpu) as ports:
        for v in variants:  # warm-up: imports, code caches, connection setup
            subprocess.run(
                wrk_command(args, ports[v][0], args.warmup, client_cpu),
                capture_output=True,
                check=True,
            )
        for r in range(args.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                port, pid = ports[v]
                before = load_average()
                cpu0 = cpu_seconds(pid)
                proc = subprocess.run(
                    wrk_command(args, port, args.duration, client_cpu),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                cpu = cpu_seconds(pid) - cpu0
                run = {"round": r, "variant": v, "load_before": before, **parse_wrk(proc.stdout)}
                # The server's CPU time per request: unlike req/s, it barely depends on
                # how much of its core the server got while other jobs ran.
                run["server_cpu_us_per_request"] = round(cpu / run["requests"] * 1e6, 2)
                runs.append(run)
                print(
                    f"round {r} {v:18} {run['rps']:9.0f} req/s"
                    f"  {run['server_cpu_us_per_request']:7.1f} us CPU/req"
                    f"  p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms"
                    f"  load {' '.join(map(str, before))}",
                    flush=True,
                )

    summary: dict[str, Any] = {}
    bare_by_round = {run["round"]: run["rps"] for run in runs if run["variant"] == "bare"}
    bare_cpu_by_round = {
        run["round"]: run["server_cpu_us_per_request"] for run in runs if run["variant"] == "bare"
    }
    for v in variants:
        mine = [run for run in runs if run["variant"] == v]
        ratios = [run["rps"] / bare_by_round[run["round"]] for run in mine]
        cpu_ratios = [
            run["server_cpu_us_per_request"] / bare_cpu_by_round[run["round"]] for run in mine
        ]
        summary[v] = {
            "rps_median": round(statistics.median(run["rps"] for run in mine), 1),
            "rps_min": round(min(run["rps"] for run in mine), 1),
            "rps_max": round(max(run["rps"] for run in mine), 1),
            "ratio_to_bare_median": round(statistics.median(ratios), 4),
            "ratios_to_bare": [round(x, 4) for x in ratios],
            "server_cpu_us_per_request_median": round(
                statistics.median(run["server_cpu_us_per_request"] for run in mine), 2
            ),
            "cpu_ratio_to_bare_median": round(statistics.median(cpu_ratios), 4),
            "p50_ms_median": round(statistics.median(run["p50_ms"] for run in mine), 3),
            "p99_ms_median": round(statistics.median(run["p99_ms"] for run in mine), 3),
        }
    payload = {
        "command": shown,
        "wrk": shlex.join(wrk_command(args, 0, args.duration, client_cpu)).replace(":0/", ":PORT/"),
        "rounds": args.rounds,
        "duration": args.duration,
        "connections": args.connections,
        "pinned": {"server_cpu": server_cpu, "wrk_cpu": client_cpu} if pin else None,
        "machine": {
            "nproc": ncpu,
            "cpu_model": cpu_model(),
            "python": sys.version.split()[0],
            **server_stack(),
        },
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "target": {"variant": "resilio", "min_ratio_to_bare": TARGET_RATIO},
        "summary": summary,
        "runs": runs,
    }
    out = Path(args.out or OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")

    print(f"\nload average {load_start} -> {payload['load_average_end']}")
    for v, s in summary.items():
        print(
            f"{v:18} median {s['rps_median']:9.0f} req/s  x{s['ratio_to_bare_median']:.3f} of bare"
            f"  CPU {s['server_cpu_us_per_request_median']:6.1f} us/req"
            f" (x{s['cpu_ratio_to_bare_median']:.3f})"
            f"  p50 {s['p50_ms_median']:.2f} ms  p99 {s['p99_ms_median']:.2f} ms"
        )
    met = summary.get("resilio", {}).get("ratio_to_bare_median", 0) >= TARGET_RATIO
    print(f"target resilio >= {TARGET_RATIO}x bare: {'met' if met else 'NOT met'}")
    with contextlib.suppress(ValueError):
        print(f"wrote {out.resolve().relative_to(ROOT)}")


if __name__ == "__main__":
    main()
