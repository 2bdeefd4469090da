"""Prometheus: the cost of a scrape of 1,000 pipelines, and of a call with and without
the collector.

Scrapes: 1,000 `resilio.standard_pipeline`s (21 series each, 21,000 in all), then the
same with a `Timing` gate first in each (38 series each), exposed by one collector and
scraped by `prometheus_client.generate_latest(registry)` (what `make_asgi_app` and
`start_http_server` serve for the classic text format), by its OpenMetrics twin (what
they serve when the scraper asks for OpenMetrics, as Prometheus does by default) and
by `collector.render()` (what `metrics_app` serves).
One round is one scrape; `extra_info["ms_per_scrape"]` is the median round.

Call path: OPS awaits of `pipeline.execute(ok)` per round on the module's event loop,
for a pipeline of gates (rate limiter, breaker, bulkhead) that nothing observes, the
same pipeline exposed by a registered collector (with 1,000 others, scraped once before
timing), and the same pipeline with a `Timing` gate in front (the one metrics feature
that costs per call). All three hold the same 1,000 other pipelines, so only the
collector differs. `extra_info["ns_per_op"]` is the median round / OPS.

    python -m pytest benchmarks/test_prometheus.py -p no:cacheprovider --benchmark-only

Wall-clock figures on a loaded 2-core machine are noisy; instruction counts are not:

    python benchmarks/test_prometheus.py --instructions

(with resilio importable, e.g. PYTHONPATH=.) runs each call-path case, and a scrape
of the 1,000 standard pipelines both ways, under `valgrind --tool=callgrind`,
counting only the measured rounds, and prints instructions per call and per scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import operator
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import resilio
from resilio import Bulkhead, CircuitBreaker, Pipeline, RateLimiter
from resilio.integrations.prometheus import ResilioCollector, Timing

ROOT = Path(__file__).resolve().parent.parent

#: Pipelines per scrape.
PIPELINES = 1000
#: Calls per call-path round.
OPS = 1000
#: The issue's target for a scrape of 1,000 pipelines, in ms.
TARGET_SCRAPE_MS = 50

Batch = Callable[[], Awaitable[None]]


def _pipelines(timing: bool) -> list[Pipeline]:
    out = []
    for i in range(PIPELINES):
        std = resilio.standard_pipeline(f"upstream_{i}")
        out.append(Pipeline(Timing(), *std.strategies, name=std.name) if timing else std)
    return out


def _series(text: bytes) -> int:
    if text.endswith(b"# EOF\n"):
        found = openmetrics_families(text.decode())  # type: ignore[no-untyped-call]  # untyped upstream
    else:
        found = text_string_to_metric_families(text.decode())
    return sum(len(f.samples) for f in found)


def _scrape_case(how: str, timing: bool = False) -> tuple[Callable[[], bytes], list[Any]]:
    """A scrape of PIPELINES pipelines `how`, and what must stay alive while it runs."""
    registry = CollectorRegistry()
    collector = ResilioCollector(registry)
    pipelines = _pipelines(timing)  # held: the collector holds them weakly
    for p in pipelines:
        collector.add(p)
    scrape: Callable[[], bytes]
    if how == "generate_latest":
        scrape = partial(generate_latest, registry)
    elif how == "openmetrics":
        scrape = partial(openmetrics_latest, registry)
    else:
        scrape = collector.render
    return scrape, [registry, collector, pipelines]


@pytest.mark.parametrize("timing", [False, True], ids=["standard", "standard+timing"])
@pytest.mark.parametrize("how", ["generate_latest", "openmetrics", "render"])
def test_scrape(benchmark: Any, per_op: Any, how: str, timing: bool) -> None:
    scrape, _keep = _scrape_case(how, timing)
    series = _series(scrape())  # unmeasured: lays the series out once, checks the text
    assert series == PIPELINES * (38 if timing else 21)

    benchmark.group = f"prometheus: scrape of {PIPELINES:,} pipelines"
    benchmark(scrape)
    median = per_op(
        benchmark,
        1,
        how=how,
        pipelines=PIPELINES,
        series=series,
        core_impl=resilio.core_impl,
        target_ms=TARGET_SCRAPE_MS,
    )
    if median is not None:
        benchmark.extra_info["ms_per_scrape"] = round(median / 1e6, 2)


# ---- the call path ----------------------------------------------------------------------


async def _ok() -> None:
    return None


def _gates() -> Pipeline:
    return Pipeline(
        RateLimiter(rate=1e9, burst=1_000_000), CircuitBreaker(), Bulkhead(100), name="calls"
    )


def _build(case: str) -> tuple[Batch, list[Any]]:
    """The batch of OPS calls for `case`, and what must stay alive while it runs."""
    if case == "timing":
        pipeline = Pipeline(Timing(), *_gates().strategies, name="calls")
    else:
        pipeline = _gates()
    # Every case holds the same 1,000 other pipelines, so the heap the garbage
    # collector walks is the same size and only the collector itself differs.
    others = _pipelines(False)
    keep: list[Any] = [pipeline, others]
    if case == "collector":
        registry = CollectorRegistry()
        collector = ResilioCollector(registry)
        for p in [pipeline, *others]:
            collector.add(p)
        generate_latest(registry)
        keep += [registry, collector]
    execute = pipeline.execute

    async def batch() -> None:
        for _ in range(OPS):
            await execute(_ok)

    return batch, keep


CASES = {
    "bare": "a pipeline of gates, no collector",
    "collector": "the same pipeline, exposed by a registered collector",
    "timing": "the same pipeline with a Timing gate first",
}


@pytest.mark.parametrize("case", list(CASES))
def test_call_path(benchmark: Any, loop: asyncio.AbstractEventLoop, per_op: Any, case: str) -> None:
    batch, keep = _build(case)
    run_until_complete = loop.run_until_complete
    run_until_complete(batch())  # unmeasured: warms caches, fails outside the timing

    benchmark.group = "prometheus: call path"
    benchmark(lambda: run_until_complete(batch()))
    per_op(benchmark, OPS, case=case, how=CASES[case], core_impl=resilio.core_impl)
    del keep


# ---- instruction counts (python benchmarks/test_prometheus.py --instructions) -----------

#: Rounds counted per case.
ROUNDS = 2
#: A C function only the measured code enters: callgrind counts inside it alone.
MARKER = "_operator_call"
#: Scrapes counted by instructions (of the 1,000 standard pipelines).
SCRAPES = {
    "generate_latest": "prometheus_client.generate_latest(registry)",
    "openmetrics": "prometheus_client.openmetrics.exposition.generate_latest(registry)",
    "render": "collector.render()",
}


def _child(case: str, rounds: int) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    one: Callable[[], object]
    if case in SCRAPES:
        one, keep = _scrape_case(case)
    else:
        batch, keep = _build(case)
        run_until_complete = loop.run_until_complete

        def one_round() -> object:
            return run_until_complete(batch())

        one = one_round

    for _ in range(3):
        one()
    # From an empty young generation in every case, so each runs the same collections.
    gc.collect()

    def measured(k: int) -> None:
        for _ in range(k):
            one()

    operator.call(measured, rounds)
    loop.close()
    del keep


def _count(case: str) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={os.devnull}",
        "--collect-atstart=no",
        f"--toggle-collect={MARKER}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        case,
        str(ROUNDS),
    ]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not m or int(m.group(1)) == 0:
        raise RuntimeError(f"{case}: callgrind failed (exit {proc.returncode}): {proc.stderr}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    every = [*CASES, *SCRAPES]
    ap.add_argument(
        "--cases", default=",".join(every), help="comma-separated, of: " + ", ".join(every)
    )
    ap.add_argument("--child", nargs=2, metavar=("CASE", "ROUNDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    if not args.instructions:
        ap.error("run the timed suite with pytest; this script only counts --instructions")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    base = None
    for case in args.cases.split(","):
        if case in SCRAPES:
            per_scrape = _count(case) / ROUNDS
            print(f"{case:16} {per_scrape:>13,.0f} instructions/scrape  {SCRAPES[case]}")
            continue
        per_call = _count(case) / (ROUNDS * OPS)
        base = per_call if base is None else base
        delta = f"({per_call - base:+,.0f})"
        print(f"{case:16} {per_call:>13,.0f} instructions/call  {delta:>8}  {CASES[case]}")


if __name__ == "__main__":
    main()
