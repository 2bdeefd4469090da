"""Instructions per call of the overhead cases, counted by callgrind: noise-free.

Wall-clock figures on a shared 2-core machine swing by 3-4x with the load; the number
of instructions a call executes does not. This runs each case of
benchmarks/compare/test_overhead.py (same builders, same batch of N awaits on one
persistent loop) under `valgrind --tool=callgrind`, counting only inside the measured
rounds, and prints instructions per call and added over bare `await f()`.

    python benchmarks/instructions.py                  # resilio cases + a few peers
    python benchmarks/instructions.py --cases bare,resilio-timeout --keep
    callgrind_annotate benchmarks/results/callgrind.resilio-timeout.out | head -40

Instructions are not nanoseconds (allocation, cache misses and syscalls cost more per
instruction), so this complements the timed suite; it does not replace it. Results go
to benchmarks/results/instructions.json, which report.py renders when present.
Needs valgrind (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CASES_FILE = ROOT / "benchmarks" / "compare" / "test_overhead.py"
#: Rounds counted per case (each round is N awaits).
ROUNDS = 2
#: A C function the measured code enters and nothing else in the process calls:
#: callgrind counts only inside it (--toggle-collect).
MARKER = "_operator_call"

DEFAULT_PEERS = [
    "asyncio-timeout",
    "asyncio-Semaphore",
    "aiolimiter",
    "circuitbreaker",
    "tenacity-retry",
    "peer-stack",
]


def load_cases() -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("_overhead_cases", CASES_FILE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def child(case_id: str, rounds: int) -> None:
    """Build one case, warm it up, then run `rounds` rounds inside the marker."""
    mod = load_cases()
    case = next(c for c in mod.CASES if c.id == case_id)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        built = case.build()
    except BaseException as e:  # pytest.skip raises a BaseException subclass
        print(f"SKIP {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
    batch = loop.run_until_complete(built) if asyncio.iscoroutine(built) else built
    run_until_complete = loop.run_until_complete
    for _ in range(3):
        run_until_complete(batch())

    def measured(k: int) -> None:
        for _ in range(k):
            run_until_complete(batch())

    operator.call(measured, rounds)
    loop.close()


def count(case_id: str, rounds: int, out: str) -> tuple[int | None, str]:
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
        str(rounds),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode == 3:
        skip = [ln for ln in proc.stderr.splitlines() if ln.startswith("SKIP")]
        return None, skip[-1] if skip else "skipped"
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not m:
        return None, f"failed (exit {proc.returncode}): {proc.stderr[-500:]}"
    n = int(m.group(1))
    if n == 0:
        return None, f"no instructions counted: this libpython lacks the symbol {MARKER}"
    return n, ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("CASE", "ROUNDS"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--cases", default="", help="comma-separated case ids (default: resilio + a few peers)"
    )
    ap.add_argument("--all", action="store_true", help="every case, peers included")
    ap.add_argument(
        "--keep", action="store_true", help="keep callgrind.<case>.out files in results/"
    )
    ap.add_argument("-j", "--jobs", type=int, default=2, help="cases run at once")
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    mod = load_cases()
    n_calls = mod.N
    cases = {c.id: c for c in mod.CASES}
    if args.cases:
        ids = [i.strip() for i in args.cases.split(",") if i.strip()]
    elif args.all:
        ids = list(cases)
    else:
        ids = [c.id for c in mod.CASES if c.library.startswith("resilio") or c.id == "bare"]
        ids += [i for i in DEFAULT_PEERS if i in cases]
    if "bare" not in ids:
        ids.insert(0, "bare")
    RESULTS.mkdir(parents=True, exist_ok=True)

    from concurrent.futures import ThreadPoolExecutor

    def one(cid: str) -> tuple[str, int | None, str, float]:
        out = str(RESULTS / f"callgrind.{cid}.out") if args.keep else os.devnull
        t0 = time.monotonic()
        n, why = count(cid, ROUNDS, out)
        return cid, n, why, time.monotonic() - t0

    results: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for cid, n, why, secs in ex.map(one, ids):
            c = cases[cid]
            per_call = None if n is None else n / (ROUNDS * n_calls)
            results[cid] = {
                "job": c.job,
                "library": c.library,
                "how": c.how,
                "instructions_per_call": per_call,
                "note": why,
            }
            shown = "-" if per_call is None else f"{per_call:,.0f}"
            print(f"{cid:28} {shown:>12} instr/call  ({secs:.0f} s){'  ' + why if why else ''}")
    bare = results.get("bare", {}).get("instructions_per_call")
    for r in results.values():
        ipc = r["instructions_per_call"]
        r["added"] = None if ipc is None or bare is None or r["job"] == "baseline" else ipc - bare
    payload = {
        "python": sys.version.split()[0],
        "calls_per_round": n_calls,
        "rounds": ROUNDS,
        "command": "python benchmarks/instructions.py"
        + (f" --cases {args.cases}" if args.cases else "")
        + (" --all" if args.all else ""),
        "cases": results,
    }
    (RESULTS / "instructions.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nbare await: {bare:,.0f} instr/call" if bare else "")
    for cid, r in results.items():
        if r["added"] is not None:
            print(f"  {cid:28} +{r['added']:,.0f}")
    print(f"wrote {(RESULTS / 'instructions.json').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
