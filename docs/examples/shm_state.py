"""The shared-memory file itself: create or attach objects by name, inspect the file.

`SharedState(path)` maps a file under /dev/shm holding the core structs; its objects
are the compiled core classes, placed in the file, so every process that maps it
decides on the same memory with the same lock-free C.
"""

from __future__ import annotations

import multiprocessing
import os

from resilio.backends.shm import SharedState

PATH = f"/dev/shm/resilio-example-{os.getpid()}"
NOW = 1_000_000_000  # the core takes the time as an argument: a fixed clock here


def take(path: str, client: str, n: int) -> int:
    """A worker: attach to the file (never create it) and spend n requests of a client."""
    state = SharedState(path, create=False)
    per_client = state.keyed_buckets("per-client", rate=1.0, burst=3, max_keys=10_000)
    return sum(1 for _ in range(n) if per_client.try_acquire(client, NOW) == 0)


def main() -> None:
    state = SharedState(PATH, size=16 * 2**20)  # created here; 16 MiB, allocated lazily
    try:
        bucket = state.token_bucket("api", rate=100.0, burst=100)
        print(type(bucket).__module__, type(bucket).__name__)  # resilio._core_c TokenBucket
        per_client = state.keyed_buckets("per-client", rate=1.0, burst=3, max_keys=10_000)

        # Two processes spend alice's requests: she gets her burst of 3 in all.
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            admitted = pool.starmap(take, [(PATH, "alice", 3), (PATH, "alice", 3)])
        print("alice admitted:", sum(admitted), "| left:", per_client.available("alice", NOW))

        # Attaching with other parameters is an error, never a silent second object.
        try:
            state.token_bucket("api", rate=50.0, burst=100)
        except ValueError as exc:
            print("ValueError:", exc.args[0].split(": ", 1)[1])

        for obj in state.objects():
            print(f"{obj.kind:14} {obj.name:11} offset {obj.offset:6}  {obj.params}")
        stats = state.stats()
        print(f"{stats['objects']} objects, {stats['used_bytes']:,} of {stats['size']:,} bytes")
    finally:
        state.unlink()  # the name goes; mappings still open stay valid


if __name__ == "__main__":
    main()
