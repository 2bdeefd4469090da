"""Types of the compiled shared-memory layer (resilio/_shm_c.pyx, csrc/rs_shm.h)."""

from collections.abc import Sequence
from typing import Any, Final

from resilio._core_c import Circuit, Counters, Gate, KeyedBuckets, TokenBucket

MAGIC: Final[bytes]
VERSION: Final[int]
ABI: Final[int]
ALIGN: Final[int]
HEADER_SIZE: Final[int]
OBJECT_SIZE: Final[int]
NAME_MAX: Final[int]
PARAMS: Final[int]

BUCKET: Final[int]
KEYED: Final[int]
CIRCUIT: Final[int]
GATE: Final[int]
COUNTERS: Final[int]

EMPTY: Final[int]
INIT: Final[int]
READY: Final[int]

OK: Final[int]
E_MAGIC: Final[int]
E_VERSION: Final[int]
E_ABI: Final[int]
E_SIZE: Final[int]
E_TABLE: Final[int]

BUCKET_SIZE: Final[int]
CIRCUIT_SIZE: Final[int]
GATE_SIZE: Final[int]
COUNTERS_SIZE: Final[int]

def heap_offset(slot_count: int) -> int: ...
def keyed_size(capacity: int) -> int: ...
def init_header(
    buf: Any, total_size: int, slot_count: int, secret: bytes, unix_ns: int, pid: int
) -> None: ...
def check_header(data: bytes, file_size: int) -> tuple[int, dict[str, Any]]: ...

class Mapping:
    def __init__(self, buf: Any) -> None: ...
    def check(self) -> int: ...
    def header(self) -> dict[str, Any]: ...
    def name_key(self, kind: int, name: bytes) -> int: ...
    def table_secret(self, name: bytes) -> bytes: ...
    def count_object(self) -> None: ...
    def count_takeover(self) -> None: ...
    def slot_find(self, key: int, probe: int) -> tuple[int, int] | None: ...
    def slot_state(self, idx: int) -> int: ...
    def slot_cas(self, idx: int, expected: int, desired: int) -> tuple[bool, int]: ...
    def alloc(self, size: int) -> int: ...
    def write_object(
        self,
        offset: int,
        kind: int,
        name: bytes,
        params: Sequence[int],
        struct_size: int,
        claim: int,
    ) -> None: ...
    def read_object(self, offset: int) -> tuple[int, bytes, tuple[int, ...], int, int]: ...
    def init_bucket(self, offset: int, interval_ns: int, burst: int) -> None: ...
    def bucket_at(self, offset: int, rate: float) -> TokenBucket: ...
    def init_keyed(
        self,
        offset: int,
        interval_ns: int,
        burst: int,
        capacity: int,
        secret: bytes,
        on_full: int,
    ) -> None: ...
    def keyed_at(self, offset: int, rate: float, capacity: int) -> KeyedBuckets: ...
    def init_circuit(
        self,
        offset: int,
        failure_ppm: int,
        slow_ppm: int,
        min_throughput: int,
        sampling_ns: int,
        buckets: int,
        break_ns: int,
        max_break_ns: int,
        half_open_calls: int,
        now_ns: int,
    ) -> None: ...
    def circuit_at(self, offset: int) -> Circuit: ...
    def init_gate(self, offset: int, limit: int) -> None: ...
    def gate_at(self, offset: int) -> Gate: ...
    def init_counters(self, offset: int, n: int) -> None: ...
    def counters_at(self, offset: int) -> Counters: ...
