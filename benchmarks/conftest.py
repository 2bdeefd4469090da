"""Shared fixtures and hooks for the pytest-benchmark suites in benchmarks/.

Run on purpose, never by default (pyproject's testpaths = tests):

    python -m pytest benchmarks -p no:cacheprovider --benchmark-only
    python benchmarks/report.py          # both suites + docs/benchmarks.md

Every benchmark body is a tight loop of `OPS` operations, so pytest-benchmark's
figures are per *round*; the per-operation figure (round / OPS, loop overhead
included) is stored in `extra_info["ns_per_op"]` and is what report.py renders.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import resilio
from resilio import _core_py

try:
    from resilio import _core_c
except ImportError as exc:  # not built: its benchmarks skip, the twin's still run
    _core_c = None
    _C_MISSING = f"resilio._core_c is not built ({exc}); run: pip install -e ."

#: Operations per benchmark round (per-op figure = round time / OPS).
OPS = 1000

IMPLS = [
    pytest.param(
        _core_c,
        id="c",
        marks=[pytest.mark.c_extension]
        + ([pytest.mark.skip(reason=_C_MISSING)] if _core_c is None else []),
    ),
    pytest.param(_core_py, id="py"),
]


@pytest.fixture(params=IMPLS)
def core(request: pytest.FixtureRequest) -> Any:
    """Each core implementation in turn: the compiled one (c) and the twin (py)."""
    return request.param


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a whole module: a round is `loop.run_until_complete(batch())`,
    so no benchmark pays for creating or closing a loop."""
    lp = asyncio.new_event_loop()
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        lp.run_until_complete(lp.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        lp.close()


@pytest.fixture
def per_op() -> Any:
    """The `record_per_op` helper, as a fixture (test modules need no import path)."""
    return record_per_op


def record_per_op(benchmark: Any, ops: int = OPS, **extra: Any) -> float | None:
    """Store ns per operation (median, min, IQR of rounds / ops) in extra_info; return the
    median, or None when benchmarking is disabled."""
    benchmark.extra_info["ops_per_round"] = ops
    benchmark.extra_info.update(extra)
    meta = getattr(benchmark, "stats", None)
    stats = getattr(meta, "stats", None)
    if stats is None:
        return None
    median = stats.median * 1e9 / ops
    benchmark.extra_info["ns_per_op"] = round(median, 2)
    benchmark.extra_info["ns_per_op_min"] = round(stats.min * 1e9 / ops, 2)
    benchmark.extra_info["ns_per_op_iqr"] = round(stats.iqr * 1e9 / ops, 2)
    return median


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    machine_info["cpu_model"] = cpu_model()
    machine_info["cores"] = os.cpu_count()
    machine_info["python"] = sys.version.split()[0]
    machine_info["resilio_core_impl"] = resilio.core_impl
    machine_info["load_average_at_start"] = load_average()


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    output_json["machine_info"]["load_average_at_end"] = load_average()
