"""Run the benchmark suites and write docs/benchmarks.md.

    python benchmarks/report.py                 # run every suite, render the page
    python benchmarks/report.py --quick         # shorter rounds (a noisy first look)
    python benchmarks/report.py --render-only   # re-render from the last JSON files
    python benchmarks/report.py --suite shm     # rerun one suite (others: last JSON)

The suites are run with pytest-benchmark (`--benchmark-json`) into
benchmarks/results/SUITE.json, one pytest process per suite, from the
repository root. Every figure on the page comes from those files; the page lists
the exact commands that produced them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

SUITES = {
    "core": "benchmarks/test_core.py",
    "compare": "benchmarks/compare/test_overhead.py",
    "shm": "benchmarks/test_shm.py",
    "redis": "benchmarks/test_redis.py",
    "prometheus": "benchmarks/test_prometheus.py",
    "asgi": "benchmarks/test_asgi.py",
}

#: Order of the overhead table.
JOBS = [
    "baseline",
    "retry",
    "circuit_breaker",
    "rate_limiter",
    "timeout",
    "bulkhead",
    "hedging",
    "fallback",
    "pipeline",
]


# ---- running ----------------------------------------------------------------------------


def pytest_command(suite: str, args: argparse.Namespace) -> list[str]:
    timer = args.compare_timer if suite == "compare" else args.timer
    if suite == "redis":
        # Decisions per second are wall-clock: the time spent waiting on Redis counts.
        timer = "time.perf_counter"
    return [
        sys.executable,
        "-m",
        "pytest",
        SUITES[suite],
        "-p",
        "no:cacheprovider",
        # The Redis suite's round-trip count is a plain test: run it with the rest.
        *([] if suite == "redis" else ["--benchmark-only"]),
        f"--benchmark-json={(RESULTS / f'{suite}.json').relative_to(ROOT)}",
        f"--benchmark-min-rounds={args.min_rounds}",
        f"--benchmark-max-time={args.max_time}",
        "--benchmark-warmup=on",
        "--benchmark-warmup-iterations=100",
        f"--benchmark-timer={timer}",
        "--benchmark-sort=name",
        "--benchmark-columns=median,iqr,rounds",
        "-q",
        "-s",
        "-rs",
        *(["-k", args.k] if args.k else []),
    ]


def run_suites(args: argparse.Namespace) -> list[str]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    commands, skipped = [], []
    for suite in args.suite or list(SUITES):
        cmd = pytest_command(suite, args)
        shown = shlex.join(["python", *cmd[1:]])
        commands.append(shown)
        print(f"\n$ {shown}", flush=True)
        t0 = time.monotonic()
        # Streamed to the console, and kept for the skip reasons (-rs).
        with subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                if line.startswith("SKIPPED"):
                    skipped.append(line.split("] ", 1)[-1].strip())
        rc = proc.returncode
        print(f"({suite}: exit {rc}, {time.monotonic() - t0:.0f} s)", flush=True)
        if rc != 0:
            print(f"warning: the {suite} suite exited {rc}; rendering what it recorded")
    invocation = shlex.join(["python", "benchmarks/report.py", *sys.argv[1:]])
    if args.suite:
        # A partial rerun: keep the commands of the suites it did not rerun.
        cpath = RESULTS / "commands.json"
        old = json.loads(cpath.read_text())[1:] if cpath.exists() else []
        mine = {SUITES[x] for x in args.suite}
        commands += [c for c in old if not any(f" {m} " in c for m in mine)]
    commands.insert(0, invocation)
    (RESULTS / "commands.json").write_text(json.dumps(commands, indent=1) + "\n")
    (RESULTS / "skipped.txt").write_text("".join(f"{s}\n" for s in skipped))
    return commands


# ---- rendering --------------------------------------------------------------------------


def load(suite: str) -> dict[str, Any] | None:
    path = RESULTS / f"{suite}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def per_op(b: dict[str, Any]) -> float:
    """Median ns per operation: the benchmark's median round / its operations."""
    ops = b["extra_info"].get("ops_per_round", 1)
    return float(b["stats"]["median"]) * 1e9 / float(ops)


def fmt_ns(x: float | None) -> str:
    if x is None:
        return "—"
    if abs(x) >= 10_000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def fmt_x(x: float) -> str:
    return f"{x:.1f}x" if x < 10 else f"{x:,.0f}x"


def verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "met" if value <= target else "**missed**"


def machine_section(data: list[dict[str, Any]], commands: list[str], timer: str) -> list[str]:
    mi = data[0]["machine_info"]
    loads = [
        f"{d['machine_info'].get('load_average_at_start', '?')} → "
        f"{d['machine_info'].get('load_average_at_end', '?')}"
        for d in data
    ]
    when = data[0].get("datetime", "?")
    lines = [
        "## Machine and run",
        "",
        f"- CPU: {mi.get('cpu_model', '?')} ({mi.get('cores', '?')} cores)",
        f"- Python: {mi.get('python', mi.get('python_version', '?'))} "
        f"({mi.get('python_implementation', '?')}), {mi.get('system', '?')} "
        f"{mi.get('release', '')}",
        f"- resilio.core_impl: `{mi.get('resilio_core_impl', '?')}`",
        f"- run at: {when}; pytest-benchmark timer: `{timer}`",
        f"- load average (1/5/15 min) at start → end of each suite: {'; '.join(loads)}",
        "",
        "Rerun everything and rewrite this page (from the repository root):",
        "",
        "```sh",
        "pip install -e '.[test,bench]' tornado   # tornado: pybreaker's async path",
        commands[0] if commands else "python benchmarks/report.py",
        "```",
        "",
        "which runs exactly:",
        "",
        "```sh",
        *commands[1:],
        "```",
        "",
    ]
    return lines


def core_section(core: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    keyed: list[dict[str, Any]] = []
    for b in core["benchmarks"]:
        e = b["extra_info"]
        prim = e.get("primitive", b["name"])
        if prim.startswith("KeyedBuckets"):
            # One row per variant; the key counts differ by impl and go in the note.
            if "rss_growth_bytes" in e:
                keyed.append(b)
            variant = "1,000 hot keys" if "hot" in prim else "random keys"
            prim = f"KeyedBuckets.try_acquire (live table, {variant})"
        if prim not in rows:
            rows[prim] = {}
            order.append(prim)
        rows[prim][e.get("impl", "-")] = b
    targets: list[tuple[str, str, str]] = []
    lines = [
        "## Core primitives",
        "",
        "ns per call, median over rounds of 1,000 calls in a tight loop (loop overhead "
        "included, as the targets are stated); `c` is the compiled core "
        "`resilio._core_c`, `py` the pure-Python twin `resilio._core_py`. "
        "Source: `benchmarks/test_core.py`.",
        "",
        "| primitive | c ns/call | py ns/call | py / c | target (c) | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for prim in order:
        r = rows[prim]
        if "-" in r:
            lines.append(f"| {prim} | {fmt_ns(per_op(r['-']))} | | | | calibration |")
            continue
        c = per_op(r["c"]) if "c" in r else None
        p = per_op(r["py"]) if "py" in r else None
        target = r["c"]["extra_info"].get("target_ns") if "c" in r else None
        ratio = f"{p / c:.1f}x" if c and p else "—"
        note = ""
        if "c" in r and r["c"]["extra_info"].get("notes"):
            note = " (see note)"
        v = verdict(c, target)
        lines.append(
            f"| {prim} | {fmt_ns(c)}{note} | {fmt_ns(p)} | {ratio} | "
            f"{'≤ ' + str(target) if target else ''} | {v} |"
        )
        if target:
            targets.append((f"core: {prim}", f"{fmt_ns(c)} ns (≤ {target})", v))
    lines.append("")
    if keyed:
        lines += [
            "### Keyed buckets: memory",
            "",
            "The table (max_keys = keys / 0.667) is filled with distinct keys "
            "(`client-0000000`...) formatted on the fly and dropped, so the growth is the "
            "table's: RSS from /proc/self/statm before construction and after the fill; "
            "*constructor* is what tracemalloc saw the constructor allocate. *evicted*: "
            "inserts whose 16-slot probe window was full. *fill* is CPU ns per new key, "
            "formatting the key included.",
            "",
            "| impl | keys | max_keys | live | evicted | RSS growth | bytes/key "
            "| constructor | fill ns/key | target | |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for b in keyed:
            e = b["extra_info"]
            tm = e.get("tracemalloc_bytes")
            target = e.get("target_bytes")
            growth = e.get("rss_growth_bytes", 0)
            v = ""
            if target:
                v = verdict(growth * 1_000_000 / max(e["keys"], 1), target)
                targets.append(
                    (
                        "core: KeyedBuckets memory for 1M keys",
                        f"{growth / 2**20:.1f} MiB for {e['keys']:,} keys (≤ 64 MiB per 1M)",
                        v,
                    )
                )
            lines.append(
                f"| {e.get('impl')} | {e['keys']:,} | {e['max_keys']:,} | "
                f"{e.get('live_keys', 0):,} | {e.get('evicted', 0):,} | "
                f"{growth / 2**20:.1f} MiB | {e.get('bytes_per_key')} | "
                f"{'—' if tm is None else f'{tm / 2**20:.1f} MiB'} | "
                f"{fmt_ns(e.get('fill_ns_per_key'))} | "
                f"{'≤ 64 MiB per 1M keys' if target else '—'} | {v} |"
            )
        notes = [b["extra_info"]["notes"] for b in keyed if b["extra_info"].get("notes")]
        lines.append("")
        for n in notes:
            lines.append(f"Note: {n}.")
        lines.append("")
    return lines, targets


def compare_section(cmp: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    benches = cmp["benchmarks"]
    bare_b = [b for b in benches if b["extra_info"].get("job") == "baseline"]
    bare = per_op(bare_b[0]) if bare_b else None
    resilio_by_job: dict[str, float] = {}
    for b in benches:
        if b["extra_info"].get("library") == "resilio" and bare is not None:
            resilio_by_job[b["extra_info"]["job"]] = per_op(b) - bare
    targets: list[tuple[str, str, str]] = []
    lines = [
        "## Success-path overhead per call",
        "",
        "One coroutine awaits the wrapped function 1,000 times per round on one "
        "persistent event loop; the function returns at once, so the figure is pure "
        "wrapping cost. *added* = ns/call - bare `await f()` in the same run; "
        "*x resilio* = added ns / resilio's added ns for the same job (higher is slower "
        "than resilio). resilio strategies run through a one-strategy `Pipeline` used "
        "as a decorator. Source: `benchmarks/compare/test_overhead.py`.",
        "",
        "| job | name | library: how | ns/call | added ns | x resilio | target (added) | |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    key = {j: i for i, j in enumerate(JOBS)}
    benches = sorted(
        benches,
        key=lambda b: (
            key.get(b["extra_info"].get("job", ""), 99),
            b["extra_info"].get("library") != "resilio",
            per_op(b),
        ),
    )
    for b in benches:
        e = b["extra_info"]
        ns = per_op(b)
        added = None if bare is None or e["job"] == "baseline" else ns - bare
        ref = resilio_by_job.get(e["job"])
        ratio = ""
        if added is not None and e.get("library") != "resilio" and ref is not None:
            ratio = f"{added / ref:.1f}x" if ref > 0 else "—"
        target = e.get("target_added_ns")
        v = verdict(added, target)
        name = b["param"] if b.get("param") else b["name"]
        lines.append(
            f"| {e['job']} | {name} | {e.get('library')}: `{e.get('how')}` | {fmt_ns(ns)} | "
            f"{fmt_ns(added)} | {ratio} | {'≤ ' + str(target) if target else ''} | {v} |"
        )
        if target:
            targets.append((f"overhead: {e['job']}", f"+{fmt_ns(added)} ns (≤ {target})", v))
    lines.append("")
    return lines, targets


def shm_section(shm: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows: dict[str, dict[str, float]] = {}
    targets_ns: dict[str, float] = {}
    procs: list[dict[str, Any]] = []
    for b in shm["benchmarks"]:
        e = b["extra_info"]
        if "decisions" in e:
            procs.append(e)
            continue
        prim = e.get("primitive", b["name"])
        rows.setdefault(prim, {})[e.get("placement", "?")] = per_op(b)
        if "target_ns" in e:
            targets_ns[prim] = e["target_ns"]
    lines = [
        "## Shared memory: ns per decision",
        "",
        "The same compiled class on a struct in process memory and on a struct in a "
        "`/dev/shm` file mapped by every worker (`resilio.backends.shm`). A round is a "
        "loop of 1,000 decisions (loop overhead included). Source: "
        "`benchmarks/test_shm.py`.",
        "",
        "| decision | in-process ns | shared-memory ns | shm / in-process | target (shm) | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    targets: list[tuple[str, str, str]] = []
    for prim, by in rows.items():
        mem, sh = by.get("memory"), by.get("shm")
        ratio = f"{sh / mem:.2f}x" if mem and sh else ""
        target = targets_ns.get(prim)
        v = verdict(sh, target)
        lines.append(
            f"| {prim} | {fmt_ns(mem)} | {fmt_ns(sh)} | {ratio} | "
            f"{'≤ ' + fmt_ns(target) if target else ''} | {v} |"
        )
        if target:
            targets.append((f"shm: {prim}", f"{fmt_ns(sh)} ns (≤ {fmt_ns(target)})", v))
    if procs:
        lines += [
            "",
            "Exact totals across processes (`test_processes_exact`): each process makes "
            "1,000,000 decisions on one shared object at a fixed clock (no refill), so "
            "exactly the burst may be admitted.",
            "",
            "| object | processes x decisions | admitted | expected | wall s | decisions/s |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for e in procs:
            n = len(e["admitted_per_process"])
            ok = e["admitted"] == e["expected_admitted"]
            lines.append(
                f"| {e['primitive']} | {n} x {e['decisions'] // n:,} | {e['admitted']:,} | "
                f"{e['expected_admitted']:,} | {e['wall_s']} | {e['decisions_per_s']:,} |"
            )
            targets.append(
                (
                    f"shm exact totals: {e['primitive']}",
                    f"{e['admitted']:,} admitted of {e['expected_admitted']:,}",
                    "met" if ok else "**missed**",
                )
            )
    lines.append("")
    return lines, targets


def redis_section(red: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    lines = [
        "## Redis: decisions per second",
        "",
        "One process, one `RedisBackend` (one TCP connection) to a local redis-server "
        "started by the benchmark; a round is 1,000 decisions. Round trips per decision "
        "are counted from Redis's `INFO commandstats` by `test_round_trips_per_decision` "
        "(it fails unless there is exactly one `EVALSHA` per decision and no other "
        "command). Source: `benchmarks/test_redis.py`.",
        "",
        "| case | decisions/s (median round) | best round | us per decision | target | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    targets: list[tuple[str, str, str]] = []
    for b in red["benchmarks"]:
        e = b["extra_info"]
        ns = per_op(b)
        rate = 1e9 / ns
        target = e.get("target_decisions_per_s")
        v = "" if target is None else ("met" if rate >= target else "**missed**")
        lines.append(
            f"| {e.get('case', b['name'])} | {rate:,.0f} | {e.get('decisions_per_s_best', 0):,} | "
            f"{ns / 1e3:.1f} | {'≥ ' + format(target, ',') if target else ''} | {v} |"
        )
        if target:
            targets.append((f"redis: {e.get('case')}", f"{rate:,.0f}/s (≥ {target:,})", v))
    lines.append("")
    return lines, targets


def prometheus_section(pro: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    scrapes = [b for b in pro["benchmarks"] if "ms_per_scrape" in b["extra_info"]]
    calls = {b["extra_info"]["case"]: b for b in pro["benchmarks"] if "case" in b["extra_info"]}
    lines = [
        "## Prometheus: scrape and call path",
        "",
        "A scrape of 1,000 standard pipelines (21 series each; 38 with a `Timing` gate) "
        "through prometheus_client's `generate_latest`, its OpenMetrics exposition (what "
        "`make_asgi_app` serves Prometheus by default), and resilio's own `render()` "
        "(what `metrics_app` serves). Then the call path of one pipeline of gates, with and "
        "without a registered collector. Source: `benchmarks/test_prometheus.py`.",
        "",
        "| scrape of 1,000 pipelines | series | ms (median) | target | |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    targets: list[tuple[str, str, str]] = []
    for b in scrapes:
        e = b["extra_info"]
        ms, target = e["ms_per_scrape"], e.get("target_ms")
        v = verdict(ms, target)
        lines.append(
            f"| {b['param']} | {e['series']:,} | {ms:.1f} | "
            f"{'≤ ' + str(target) if target else ''} | {v} |"
        )
        if target and "timing" not in b["param"]:
            targets.append((f"metrics scrape: {e['how']}", f"{ms:.1f} ms (≤ {target})", v))
    if calls:
        lines += [
            "",
            "| call path | ns per call (median) | vs no collector |",
            "| --- | ---: | ---: |",
        ]
        base = per_op(calls["bare"]) if "bare" in calls else None
        for b in calls.values():
            ns = per_op(b)
            ratio = f"{ns / base:.2f}x" if base else ""
            lines.append(f"| {b['extra_info']['how']} | {fmt_ns(ns)} | {ratio} |")
        if base and "collector" in calls:
            r = per_op(calls["collector"]) / base
            targets.append(
                (
                    "metrics: call path with the collector",
                    f"{r:.2f}x without",
                    "met" if r <= 1.05 else "**missed**",
                )
            )
    lines.append("")
    return lines, targets


def asgi_section(asgi: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    benches = asgi["benchmarks"]
    bare_b = [b for b in benches if b["extra_info"].get("job") == "baseline"]
    if not bare_b:
        return [], []
    bare, bare_min = per_op(bare_b[0]), bare_b[0]["extra_info"]["ns_per_op_min"]
    ours = {
        b["extra_info"]["job"]: per_op(b) - bare
        for b in benches
        if b["extra_info"].get("library") == "resilio"
    }
    lines = [
        "## ASGI middleware: in-process cost per request",
        "",
        "A Starlette app with one route, called through its ASGI interface with a "
        "prebuilt scope (no server, no socket), bare and under each middleware, and "
        "under slowapi's ASGI middleware with a limit high enough that nothing is "
        "refused. *added* = ns/request - the bare app's in the same run; the minimum "
        "round is shown too, being less sensitive to a loaded machine. Source: "
        "`benchmarks/test_asgi.py`.",
        "",
        "| case | how | ns/request (median) | added (median) | added (min) | x resilio "
        "| target (added) | |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    targets: list[tuple[str, str, str]] = []
    for b in benches:
        e = b["extra_info"]
        ns = per_op(b)
        added = None if e["job"] == "baseline" else ns - bare
        added_min = None if e["job"] == "baseline" else e["ns_per_op_min"] - bare_min
        ref = ours.get(e["job"])
        ratio = ""
        if added is not None and e.get("library") != "resilio" and ref:
            ratio = fmt_x(added / ref)
        target = e.get("target_added_ns")
        # Judged on the larger of the two: a loaded machine can make either look small.
        v = verdict(None if added is None else max(added, added_min or 0.0), target)
        if target and added is not None and min(added, added_min or 0.0) < 0:
            v = "inconclusive: the bare app measured slower (a loaded run)"
        lines.append(
            f"| {b['param']} | `{e.get('how')}` | {fmt_ns(ns)} | {fmt_ns(added)} | "
            f"{fmt_ns(added_min)} | {ratio} | {'≤ ' + fmt_ns(target) if target else ''} | {v} |"
        )
        if target:
            targets.append(
                (
                    f"ASGI in-process: {e['job']}",
                    f"{added:+,.0f} ns, min {added_min or 0.0:+,.0f} (≤ {fmt_ns(target)})",
                    v,
                )
            )
    wrk_path = RESULTS / "asgi_wrk.json"
    if wrk_path.exists():
        w = json.loads(wrk_path.read_text())
        lines += [
            "",
            f"Under uvicorn on 127.0.0.1 with Debian's wrk (`{w['command']}`; "
            f"{w['rounds']} interleaved rounds of {w['duration']} each, {w['connections']} "
            f"connections, load {w['load_average_start']} → {w['load_average_end']}); this "
            "file is not rewritten by report.py, rerun that command:",
            "",
            "| variant | req/s (median) | x bare (median of rounds) | server CPU per request "
            "| x bare |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, r in w["summary"].items():
            lines.append(
                f"| {name} | {r['rps_median']:,.0f} | {r['ratio_to_bare_median']:.2f} | "
                f"{r['server_cpu_us_per_request_median']:.0f} us | "
                f"{r['cpu_ratio_to_bare_median']:.2f} |"
            )
        res = w["summary"].get("resilio")
        if res is not None:
            ok = res["ratio_to_bare_median"] >= 0.97
            targets.append(
                (
                    "uvicorn + wrk: rate limit + load shedding",
                    f"{res['ratio_to_bare_median']:.2f}x bare req/s (≥ 0.97)",
                    "met" if ok else "**missed**",
                )
            )
    lines.append("")
    return lines, targets


#: What the README's headline names each job.
HEADLINE_JOBS = {
    "retry": "retry",
    "circuit_breaker": "circuit breaker",
    "rate_limiter": "rate limiter",
    "timeout": "timeout",
    "bulkhead": "bulkhead",
    "pipeline": "5-strategy pipeline",
}
README = ROOT / "README.md"
README_START = "<!-- benchmarks:start (written by benchmarks/report.py) -->"
README_END = "<!-- benchmarks:end -->"


def headline(cmp: dict[str, Any]) -> list[str]:
    """The README's table: resilio's added ns per job against the peers of the run."""
    benches = cmp["benchmarks"]
    bare_b = [b for b in benches if b["extra_info"].get("job") == "baseline"]
    if not bare_b:
        return []
    bare = per_op(bare_b[0])
    ours: dict[str, float] = {}
    peers: dict[str, list[tuple[float, str]]] = {}
    for b in benches:
        e = b["extra_info"]
        job = e.get("job")
        if job not in HEADLINE_JOBS or b["name"].endswith("execute]"):
            continue
        added = per_op(b) - bare
        if e.get("library") == "resilio":
            ours.setdefault(job, added)
        else:
            name = b["param"] if b.get("param") else b["name"]
            peers.setdefault(job, []).append((added, name))
    lines = [
        "| job | resilio adds | closest peer (same run) | peers' overhead / resilio's |",
        "| --- | ---: | --- | ---: |",
    ]
    for job, label in HEADLINE_JOBS.items():
        if job not in ours or not peers.get(job) or ours[job] <= 0:
            continue
        ps = sorted(peers[job])
        ratios = [fmt_x(a / ours[job]) for a, _ in (ps[0], ps[-1])]
        span = ratios[0] if len(ps) == 1 else f"{ratios[0]} to {ratios[1]}"
        lines.append(
            f"| {label} | {fmt_ns(ours[job])} ns | {ps[0][1]}: {fmt_ns(ps[0][0])} ns | {span} |"
        )
    ipath = RESULTS / "instructions.json"
    if ipath.exists():
        cases = json.loads(ipath.read_text())["cases"]
        mine = {
            r["job"]: r["added"]
            for r in cases.values()
            if r["library"] == "resilio" and r.get("added")
        }
        rows = []
        order = list(HEADLINE_JOBS)
        for cid, r in sorted(
            cases.items(), key=lambda kv: order.index(kv[1]["job"]) if kv[1]["job"] in order else 99
        ):
            job, added = r["job"], r.get("added")
            if r["library"].startswith("resilio") or r["library"] == "-":
                continue
            if not added or job not in mine:
                continue
            rows.append(
                f"| {HEADLINE_JOBS.get(job, job)} | {fmt_ns(mine[job])} | {cid}: "
                f"{fmt_ns(added)} | {fmt_x(added / mine[job])} |"
            )
        if rows:
            lines += [
                "",
                "The same cases counted in instructions by callgrind, which the machine's "
                "load does not move (`python benchmarks/instructions.py`):",
                "",
                "| job | resilio adds (instructions) | peer adds | peer / resilio |",
                "| --- | ---: | --- | ---: |",
                *rows,
            ]
    cpath = RESULTS / "commands.json"
    invocation = (
        json.loads(cpath.read_text())[0] if cpath.exists() else "python benchmarks/report.py"
    )
    mi = cmp["machine_info"]
    lines += [
        "",
        f"Success-path overhead per call over a bare `await f()`, medians of one run "
        f"({mi.get('cpu_model', '?')}, {mi.get('cores', '?')} cores, Python "
        f"{mi.get('python', mi.get('python_version', '?'))}, {cmp.get('datetime', '?')[:16]}). "
        f"Reproduce with `{invocation}`; every figure, peer and command is "
        "in [docs/benchmarks.md](docs/benchmarks.md).",
    ]
    return lines


def write_readme(lines: list[str]) -> bool:
    text = README.read_text()
    if not lines or README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(head + README_START + "\n" + "\n".join(lines) + "\n" + README_END + tail)
    return True


def instructions_section() -> list[str]:
    """Callgrind instruction counts, when benchmarks/instructions.py has been run."""
    path = RESULTS / "instructions.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    cases = data["cases"]
    ref = {
        r["job"]: r["added"]
        for r in cases.values()
        if r["library"] == "resilio" and r.get("added") is not None
    }
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    lines = [
        "## Instructions per call (callgrind)",
        "",
        "Noise-free complement to the timed table: instructions executed per call, "
        "counted by callgrind inside the measured rounds only (same cases, same "
        f"batches). Produced {stamp} by `{data['command']}` (Python {data['python']}); "
        "rerun it after changing the code, it is not part of `report.py`'s run. "
        "Instructions are not time (allocation, cache misses and syscalls weigh more), "
        "but they do not move with the machine's load.",
        "",
        "| job | case | instructions/call | added over bare | x resilio |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    key = {j: i for i, j in enumerate(JOBS)}
    order = sorted(
        cases.items(),
        key=lambda kv: (key.get(kv[1]["job"], 99), kv[1]["library"] != "resilio", kv[0]),
    )
    for cid, r in order:
        ipc, added = r.get("instructions_per_call"), r.get("added")
        ratio = ""
        base = ref.get(r["job"])
        if added is not None and r["library"] != "resilio" and base:
            ratio = f"{added / base:.1f}x"
        shown = fmt_ns(ipc) if ipc is not None else f"— ({r.get('note', '')})"
        lines.append(f"| {r['job']} | {cid} | {shown} | {fmt_ns(added)} | {ratio} |")
    lines.append("")
    return lines


def skipped_section() -> list[str]:
    path = RESULTS / "skipped.txt"
    if not path.exists() or not path.read_text().strip():
        return []
    return [
        "### Skipped",
        "",
        *[f"- {line}" for line in path.read_text().strip().splitlines()],
        "",
    ]


def render(commands: list[str]) -> str:
    core, cmp = load("core"), load("compare")
    shm, red, pro, asg = load("shm"), load("redis"), load("prometheus"), load("asgi")
    data = [d for d in (core, cmp, shm, red, pro, asg) if d is not None]
    if not data:
        raise SystemExit("no results: run without --render-only first")
    timer = "; ".join(
        f"{name}: " + ", ".join(sorted({b["options"].get("timer", "?") for b in d["benchmarks"]}))
        for name, d in (
            ("core", core),
            ("compare", cmp),
            ("shm", shm),
            ("redis", red),
            ("prometheus", pro),
            ("asgi", asg),
        )
        if d is not None
    )
    out = [
        "# Benchmarks",
        "",
        "Every figure here was produced by `python benchmarks/report.py` (this page is "
        "generated; edit `benchmarks/report.py`, not the page). Figures are medians; on a "
        "loaded machine they are inflated, so compare rows of one run with each other, "
        "and the calibration rows (an empty loop, a C method call, a bare await) tell "
        "how loaded it was.",
        "",
    ]
    out += machine_section(data, commands, timer)
    targets: list[tuple[str, str, str]] = []
    body: list[str] = []
    if core is not None:
        lines, t = core_section(core)
        body += lines
        targets += t
    if cmp is not None:
        lines, t = compare_section(cmp)
        body += lines
        targets += t
    for data_, section in (
        (shm, shm_section),
        (red, redis_section),
        (pro, prometheus_section),
        (asg, asgi_section),
    ):
        if data_ is not None:
            lines, t = section(data_)
            body += lines
            targets += t
    out += ["## Targets", "", "| target | figure | |", "| --- | --- | --- |"]
    out += [f"| {n} | {fig} | {v} |" for n, fig, v in targets]
    out.append("")
    out += body
    out += skipped_section()
    out += instructions_section()
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--render-only", action="store_true", help="render the last results")
    ap.add_argument("--quick", action="store_true", help="min-rounds 3, max-time 0.1 s")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-time", type=float, default=0.5, help="seconds per benchmark")
    ap.add_argument(
        "--timer",
        default="time.perf_counter",
        help="pytest-benchmark timer; time.process_time leaves out time the process "
        "was not running (use it on a shared, loaded machine)",
    )
    ap.add_argument(
        "--compare-timer",
        default=None,
        help="timer for the overhead suite only (default: --timer). Its rounds last "
        "milliseconds, so on a loaded machine they are often preempted: "
        "time.process_time keeps that out, at ~2 syscalls per round",
    )
    ap.add_argument("-k", default="", help="pytest -k expression (a subset)")
    ap.add_argument(
        "--suite",
        action="append",
        choices=list(SUITES),
        help="run only this suite (repeatable); the page renders the others' last JSON",
    )
    args = ap.parse_args()
    if args.compare_timer is None:
        args.compare_timer = args.timer
    if args.quick:
        args.min_rounds, args.max_time = 3, 0.1
    if args.render_only:
        cpath = RESULTS / "commands.json"
        commands = json.loads(cpath.read_text()) if cpath.exists() else []
    else:
        commands = run_suites(args)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(commands))
    print(f"\nwrote {DOC.relative_to(ROOT)}")
    cmp = load("compare")
    if cmp is not None and write_readme(headline(cmp)):
        print(f"wrote the headline table of {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
