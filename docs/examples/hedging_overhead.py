"""What a hedged call costs when the primary answers before the delay.

Run it with `python docs/examples/hedging_overhead.py`; pass a number of calls
(default 20000) to measure longer. It prints the best time per call over several
rounds for a bare `await f()`, an empty pipeline and a pipeline with `Hedging`.
For a noise-free count, run it under
`valgrind --tool=callgrind --callgrind-out-file=/dev/null python ...` with two numbers
of calls and divide the difference in instructions by the difference in calls.
"""

import sys
import time

import anyio

from resilio import Hedging, Pipeline


async def f() -> int:
    return 1


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    empty = Pipeline().execute
    hedged = Pipeline(Hedging(delay=0.05, max_attempts=2)).execute
    best = {"await f()": float("inf"), "Pipeline()": float("inf"), "Hedging": float("inf")}
    for _ in range(5):
        for label, call in (("await f()", None), ("Pipeline()", empty), ("Hedging", hedged)):
            t = time.perf_counter()
            for _ in range(n // 500):
                for _ in range(500):
                    await (f() if call is None else call(f))
                await anyio.sleep(0)  # let the loop run, as a server's would
            best[label] = min(best[label], (time.perf_counter() - t) / n)
    for label, seconds in best.items():
        print(f"{label:12s} {seconds * 1e9:8.0f} ns per call")


if __name__ == "__main__":
    anyio.run(main)
