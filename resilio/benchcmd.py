"""`resilio bench`: what each strategy adds to a call that succeeds, on this machine.

For each core implementation available (the compiled `resilio._core_c`, the
pure-Python twin `resilio._core_py`), the selector `resilio._core` is switched
to it (as the test suite's `core` fixture does) and every case of
`resilio._bench.CASES` is built anew and timed: rounds of 1,000 awaits on one
event loop; the figure is the median ns per call, and "added" is that minus
the bare `await f()` of the same implementation's run. The full, comparable
suite (peers included, pytest-benchmark) is benchmarks/compare/test_overhead.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Final, TextIO

__all__ = ["DEFAULT_ROUNDS", "bench_main", "configure", "execute", "run_bench", "using_core"]

#: Rounds per case (each round: 1,000 calls); the default run takes a few seconds.
DEFAULT_ROUNDS: Final = 15

_MODULES: Final = {"c": "resilio._core_c", "py": "resilio._core_py"}
_IMPL_NAMES: Final = {"c": "cython", "py": "python"}


@contextlib.contextmanager
def using_core(which: str) -> Iterator[None]:
    """Switch `resilio._core` to the compiled ("c") or Python ("py") core, then back."""
    import resilio._core as selector

    module = importlib.import_module(_MODULES[which])
    names = [*module.__all__, "core_impl"]
    saved = {n: getattr(selector, n) for n in names if hasattr(selector, n)}
    try:
        for n in module.__all__:
            setattr(selector, n, getattr(module, n))
        selector.core_impl = _IMPL_NAMES[which]  # type: ignore[assignment]
        yield
    finally:
        for n, v in saved.items():
            setattr(selector, n, v)


def available_cores() -> list[str]:
    """The core implementations importable here, compiled first."""
    out = []
    for which, name in _MODULES.items():
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        out.append(which)
    return out


def run_bench(
    rounds: int, cores: Sequence[str], cases: Sequence[str] | None = None
) -> dict[str, Any]:
    """Measure every case on every core in `cores`; return the figures as plain data."""
    from resilio._bench import CASES, TARGETS, measure

    chosen = [c for c in CASES if cases is None or c.id in cases or c.id == "bare"]
    results: dict[str, Any] = {"cores": list(cores), "rounds": rounds, "cases": []}
    per_core: dict[str, dict[str, float]] = {}
    loop = asyncio.new_event_loop()
    try:
        for which in cores:
            with using_core(which):
                figures: dict[str, float] = {}
                for case in chosen:
                    figures[case.id] = statistics.median(measure(case.build(), loop, rounds))
                # The baseline again, last: the lower of the two is the quieter machine.
                again = statistics.median(measure(chosen[0].build(), loop, rounds))
                figures["bare"] = min(figures["bare"], again)
            per_core[which] = figures
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    for case in chosen:
        row: dict[str, Any] = {
            "id": case.id,
            "job": case.job,
            "how": case.how,
            "target_added_ns": TARGETS.get(case.job) if case.id != "bare" else None,
        }
        for which, figures in per_core.items():
            row[f"{which}_ns"] = round(figures[case.id], 1)
            row[f"{which}_added_ns"] = round(figures[case.id] - figures["bare"], 1)
        results["cases"].append(row)
    results["machine"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": _load(),
    }
    return results


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def format_table(results: dict[str, Any]) -> str:
    """The figures as a text table."""
    cores: list[str] = results["cores"]
    head = ["case"]
    for which in cores:
        head += [f"{which} ns/call", f"{which} added"]
    head += ["target", "how"]
    rows = [head]
    for row in results["cases"]:
        line = [row["id"]]
        for which in cores:
            line.append(f"{row[f'{which}_ns']:.0f}")
            line.append("-" if row["id"] == "bare" else f"{row[f'{which}_added_ns']:+.0f}")
        target = row["target_added_ns"]
        line.append("-" if target is None else f"<= {target}")
        line.append(row["how"])
        rows.append(line)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    out = []
    for r in rows:
        cells = [
            r[i].rjust(widths[i]) if 0 < i < len(widths) else r[i].ljust(widths[i])
            for i in range(len(widths))
        ]
        out.append("  ".join(cells) + "  " + r[-1])
    return "\n".join(out)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `resilio bench` options to `parser`."""
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"rounds of 1,000 calls per case (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--core",
        choices=("both", "c", "py"),
        default="both",
        help="which core implementation (default: both, when the compiled one is built)",
    )
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the benchmark for parsed arguments; return the exit status."""
    from resilio._bench import CASES

    if args.rounds < 1:
        print(f"resilio bench: --rounds must be >= 1, got {args.rounds}", file=err)
        return 2
    known = {c.id for c in CASES}
    unknown = [c for c in args.case or () if c not in known]
    if unknown:
        print(
            f"resilio bench: unknown case(s) {unknown}; known: {sorted(known)}",
            file=err,
        )
        return 2
    have = available_cores()
    cores = have if args.core == "both" else [args.core]
    if args.core != "both" and args.core not in have:
        print(f"resilio bench: the {args.core!r} core is not importable here", file=err)
        return 2
    if "c" not in have and args.core == "both":
        print("resilio bench: the compiled core is not built; timing the Python core", file=err)
    results = run_bench(args.rounds, cores, args.case)
    if args.json:
        print(json.dumps(results, indent=2), file=out)
    else:
        print(
            f"success-path cost per call, median of {args.rounds} rounds of 1,000 calls; "
            "added = minus bare await",
            file=out,
        )
        print(format_table(results), file=out)
        load = results["machine"]["load_average"]
        if load is not None:
            print(f"load average {load[0]:.2f} on {results['machine']['cpus']} CPUs", file=out)
    return 0


def bench_main(argv: Sequence[str] | None = None) -> int:
    """`resilio bench` as a function: parse `argv`, run, return the exit status."""
    parser = argparse.ArgumentParser(prog="resilio bench", description=__doc__)
    configure(parser)
    return execute(parser.parse_args(argv), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(bench_main())
