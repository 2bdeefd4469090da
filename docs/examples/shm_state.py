"""The shared-memory file itself: create or attach objects by name, inspect the file.

`SharedState(path)` maps a file under /dev/shm holding the core structs; its objects
are the compiled core classes, placed in the file, so every process that maps it
decides on the same memory with the same lock-free C.
"""

from __future__ import annotations

import multiprocessing
import os

from resilio import CircuitBreaker, CircuitState
from resilio.backends.shm import SharedState

PATH = f"/dev/shm/resilio-example-{os.getpid()}"
NOW = 1_000_000_000  # the core takes the time as an argument: a fixed clock here


def take(path: str, client: str, n: int) -> int:
    """A worker: attach to the file (never create it) and spend n requests of a client."""
    state = SharedState(path, create=False)
    clients = state.keyed_buckets("per-client", rate=1.0, burst=3, max_keys=100_000)
    return sum(1 for _ in range(n) if clients.try_acquire(client, NOW) == 0)


def tour() -> None:
    state = SharedState(PATH, size=64 * 2**20)  # create or open
    bucket = state.token_bucket("api", rate=100.0, burst=100)
    clients = state.keyed_buckets("per-client", rate=1.0, burst=3, max_keys=100_000)
    circuit = state.circuit("db", 0.5, 20, 30 * 10**9, 5 * 10**9)  # as _core.Circuit(...)
    slots = state.gate("db-slots", limit=16)
    events = state.counters("events", n=8)
    breaker = CircuitBreaker(name="db", backend=state)  # a backend object too

    print(type(bucket).__module__, type(bucket).__name__)  # resilio._core_c TokenBucket
    assert bucket.try_acquire(NOW) == 0 and slots.try_enter()
    events.add(3)
    # The breaker's defaults are the circuit's parameters, so it attached to "db".
    breaker.isolate()
    assert CircuitState(circuit.state) == CircuitState.ISOLATED
    breaker.reset()

    # Two processes spend alice's requests: she gets her burst of 3 in all.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        admitted = pool.starmap(take, [(PATH, "alice", 3), (PATH, "alice", 3)])
    print("alice admitted:", sum(admitted), "| left:", clients.available("alice", NOW))
    assert sum(admitted) == 3

    # Attaching with other parameters is an error, never a silent second object.
    try:
        state.token_bucket("api", rate=50.0, burst=100)
    except ValueError as exc:
        print("ValueError:", exc.args[0].split(": ", 1)[1])

    for obj in state.objects():
        print(f"{obj.kind:14} {obj.name:11} offset {obj.offset:7}  {obj.params}")
    stats = state.stats()
    print(f"{stats['objects']} objects, {stats['used_bytes']:,} of {stats['size']:,} bytes")


def main() -> None:
    try:
        tour()
    finally:
        os.unlink(PATH)  # the name goes; mappings still open stay valid


if __name__ == "__main__":
    main()
