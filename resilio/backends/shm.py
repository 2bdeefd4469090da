"""Shared-memory backend: limiter and breaker state shared by the processes of one host.

`SharedState(path)` maps a file (under ``/dev/shm``: memory, never written to disk)
holding the core structs themselves, so every worker of a pre-fork server (gunicorn,
``uvicorn --workers``, multiprocessing) decides on the same token bucket, keyed table
or circuit, with the same lock-free C operations as in-process::

    state = SharedState("/dev/shm/resilio-myapp")
    bucket = state.token_bucket("api", rate=100.0, burst=100)  # a _core_c.TokenBucket
    breaker = CircuitBreaker(name="payments", backend=state)  # or "shm:/dev/shm/..."

Objects are created or attached by (kind, name): the first process to ask creates
the object, later ones attach to it, and asking with other parameters is a
ValueError. Creation is race-free and lock-free across processes (csrc/rs_shm.h): a
registry slot is claimed by CAS (EMPTY -> INIT), the claimant builds the object in
heap memory of its own and publishes it by CAS (INIT -> READY, release); attachers
wait on INIT and, when the claimant has died or made no progress for
`init_timeout` seconds, take the claim over by CAS and build the object afresh. A
process killed at any instant leaves no lock held, at worst a few leaked bytes.

Needs the compiled core: the pure-Python twin has no shared memory.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import mmap
import os
import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from resilio import _core
from resilio import _core_args as _args
from resilio import _keyed_py as _kp
from resilio.errors import ResilioError

if TYPE_CHECKING:
    from types import ModuleType

    from resilio._core_c import Circuit, Counters, Gate, KeyedBuckets, TokenBucket

__all__ = [
    "DEFAULT_INIT_TIMEOUT",
    "DEFAULT_MAX_OBJECTS",
    "DEFAULT_SIZE",
    "SharedObject",
    "SharedState",
    "SharedStateFullError",
    "open_backend",
    "shared_state",
]

#: Bytes of a new file when no size is given. Pages of /dev/shm are only allocated
#: when first touched, so an unused heap costs address space, not memory.
DEFAULT_SIZE = 64 * 1024 * 1024
#: Registry slots of a new file when no max_objects is given (16 bytes each).
DEFAULT_MAX_OBJECTS = 1024
#: Seconds an attacher waits on an object whose creator makes no progress before it
#: takes the creation over (sooner when the creator is seen to be dead).
DEFAULT_INIT_TIMEOUT = 5.0
#: Bounds of `size` and `max_objects`.
MIN_HEAP = 4096
MAX_SIZE = 1 << 44
MAX_OBJECTS = 1 << 20

KIND_NAMES = {1: "token_bucket", 2: "keyed_buckets", 3: "circuit", 4: "gate", 5: "counters"}

# Claim tokens: (pid << 40) | (pid namespace << 8) | nonce, 62 bits. Linux pids are
# below 2**22 (PID_MAX_LIMIT); the namespace says whether the pid can be asked about.
_PID_SHIFT = 40
_NS_SHIFT = 8
_nonces = itertools.count(1)
# Polls of a slot being created back off from _SPIN_MIN to _SPIN_MAX seconds.
_SPIN_MIN = 20e-6
_SPIN_MAX = 0.01
# Attempts to open-or-create a file that keeps appearing and disappearing (unlinked
# between our create and open by someone else): past that, give up.
_OPEN_ATTEMPTS = 50

#: Test hook: called with the object's name after its struct is initialized and
#: before it is published (tests stall or kill a creator there).
_after_init: Callable[[str], None] | None = None


class SharedStateFullError(ResilioError):
    """The shared-memory file has no room for another object (registry or heap)."""


class SharedObject(NamedTuple):
    """One object of a shared-memory file, as `SharedState.objects()` lists it."""

    kind: str
    name: str
    offset: int
    size: int
    params: dict[str, Any]


def _native() -> ModuleType:
    """Return resilio._shm_c, or raise a RuntimeError that says why it cannot be used."""
    from resilio import _core

    if _core.NO_EXTENSIONS:
        raise RuntimeError(
            "shared-memory state needs the compiled core, and RESILIO_NO_EXTENSIONS is set "
            "(the pure-Python core has no shared memory): unset it, or use the 'memory' backend"
        )
    try:
        from resilio import _shm_c  # cimports resilio._core_c: fails without it
    except ImportError as exc:
        raise RuntimeError(
            f"shared-memory state needs the compiled core, which cannot be imported ({exc}); "
            "build it with `pip install -e .`"
        ) from exc
    return _shm_c


def _f64(x: float) -> int:
    return int.from_bytes(struct.pack("<d", x), "little")


def _from_f64(bits: int) -> float:
    value: float = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    return value


def _pid_ns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino & 0xFFFF_FFFF
    except OSError:
        return 0  # no pid namespaces here: every pid is ours to ask about


def _claim_word() -> int:
    token = (
        ((os.getpid() & 0x3F_FFFF) << _PID_SHIFT)
        | (_pid_ns() << _NS_SHIFT)
        | (next(_nonces) & 0xFF)
    )
    return (token << 2) | 1


def _claimant_alive(word: int) -> bool | None:
    """Whether the process that made INIT word `word` is alive (None: cannot tell)."""
    token = word >> 2
    pid = token >> _PID_SHIFT
    if (token >> _NS_SHIFT) & 0xFFFF_FFFF != _pid_ns():
        return None  # another pid namespace: its pids mean nothing here
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    try:
        # A killed child that its parent has not reaped yet still answers kill(0).
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")
    except (OSError, ValueError):
        return True


def _name_bytes(name: object, name_max: int) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    data = name.encode()
    if not 1 <= len(data) <= name_max:
        raise ValueError(f"name must be 1 to {name_max} bytes of UTF-8, got {name!r}")
    return data


def _int_arg(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {value!r}")
    return value


def _keyed_args(rate: float, burst: int, max_keys: int, on_full: int) -> tuple[int, int, int, int]:
    """KeyedBuckets' own checks, in its order and with its messages."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(_kp.MSG_RATE_TYPE.format(rate))
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(_kp.MSG_RATE.format(rate))
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise TypeError(_kp.MSG_BURST_TYPE.format(burst))
    if not 1 <= burst <= _kp.MAX_BURST:
        raise ValueError(_kp.MSG_BURST.format(burst))
    interval = _args.ceil_period_ns(rate)
    if burst * interval > _kp.MAX_TOLERANCE_NS:
        raise ValueError(_kp.MSG_TOLERANCE.format(burst, rate))
    if isinstance(max_keys, bool) or not isinstance(max_keys, int):
        raise TypeError(_kp.MSG_MAX_KEYS_TYPE.format(max_keys))
    if not 1 <= max_keys <= _kp.MAX_KEYS:
        raise ValueError(_kp.MSG_MAX_KEYS.format(max_keys))
    if type(on_full) is not int or on_full not in (_kp.KEYED_EVICT, _kp.KEYED_REJECT):
        raise ValueError(_kp.MSG_ON_FULL.format(on_full))
    return interval, burst, max_keys, on_full


def _describe(kind: int, params: tuple[int, ...]) -> dict[str, Any]:
    """The creation parameters of a descriptor, under the names users pass them by."""
    p = params
    if kind == 1:
        return {"rate": _from_f64(p[0]), "burst": p[1]}
    if kind == 2:
        return {"rate": _from_f64(p[0]), "burst": p[1], "max_keys": p[2], "on_full": p[3]}
    if kind == 3:
        return {
            "failure_ratio": p[0] / 1e6,
            "slow_call_ratio": None if p[1] > 1_000_000 else p[1] / 1e6,
            "minimum_throughput": p[2],
            "sampling_duration_ns": p[3],
            "buckets": p[4],
            "break_duration_ns": p[5],
            "max_break_duration_ns": p[6],
            "half_open_calls": p[7],
        }
    if kind == 4:
        return {"limit": p[0]}
    if kind == 5:
        return {"n": p[0]}
    return {"params": p}


def _show(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


class SharedState:
    """A named shared-memory file holding core objects for the processes of one host.

    `path` names the file (e.g. ``/dev/shm/resilio-myapp``). It is created if absent
    (exclusively: racing creators agree on one file) with `size` bytes (default
    `DEFAULT_SIZE`) and a registry of `max_objects` names (default
    `DEFAULT_MAX_OBJECTS`), owner-only unless `mode` says otherwise; with
    `create=False` a missing file is FileNotFoundError. An existing file is opened
    and checked: another magic, layout version, build layout or size (when `size` or
    `max_objects` is given) is a ValueError naming the file and the mismatch.

    `token_bucket`, `keyed_buckets`, `circuit`, `gate` and `counters` create or
    attach by name (names are per kind) and return the compiled core classes,
    placed in the file. Objects are never removed; `unlink()` removes the file for
    processes that open it later. The objects keep the mapping alive: `close()` only
    drops this object's references.

    All processes must read time from the same clock for the shared buckets and
    circuits to agree (the system clock is CLOCK_MONOTONIC, host-wide).
    """

    __slots__ = ("_init_timeout", "_ino", "_map", "_mm", "_native", "_objects", "_path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        *,
        max_objects: int | None = None,
        init_timeout: float = DEFAULT_INIT_TIMEOUT,
        mode: int = 0o600,
        create: bool = True,
    ) -> None:
        native = _native()
        self._native = native
        self._path = os.fspath(path)
        if size is not None:
            size = _int_arg("size", size, 1, MAX_SIZE)
        if max_objects is not None:
            max_objects = _int_arg("max_objects", max_objects, 1, MAX_OBJECTS)
        if (
            isinstance(init_timeout, bool)
            or not isinstance(init_timeout, (int, float))
            or not (math.isfinite(init_timeout) and init_timeout > 0)
        ):
            raise ValueError(
                f"init_timeout must be a finite number of seconds > 0, got {init_timeout!r}"
            )
        self._init_timeout = float(init_timeout)
        self._objects: dict[tuple[int, bytes], tuple[Any, tuple[int, ...]]] = {}
        self._mm: mmap.mmap | None
        self._mm, self._map, self._ino = self._open(size, max_objects, mode, create)

    # ---- opening ------------------------------------------------------------------

    def _open(
        self, size: int | None, max_objects: int | None, mode: int, create: bool
    ) -> tuple[mmap.mmap, Any, tuple[int, int]]:
        path = self._path
        for _ in range(_OPEN_ATTEMPTS):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if not create:
                    raise
                # FileExistsError: another process published it first; open theirs.
                with contextlib.suppress(FileExistsError):
                    self._create_file(
                        size if size is not None else DEFAULT_SIZE,
                        max_objects if max_objects is not None else DEFAULT_MAX_OBJECTS,
                        mode,
                    )
                continue
            try:
                st = os.fstat(fd)
                # Check a copy of the header before mapping: an error leaves nothing mapped.
                header_size: int = self._native.HEADER_SIZE
                if st.st_size < header_size:
                    raise ValueError(
                        f"{path}: not a resilio shared-memory file ({st.st_size} bytes, "
                        f"smaller than its {header_size}-byte header)"
                    )
                self._check(os.pread(fd, header_size, 0), st.st_size, size, max_objects)
                mm = mmap.mmap(fd, st.st_size)
                # A big keyed table is TLB-bound on random keys; where tmpfs allows
                # huge pages (shmem_enabled=advise), ask for them.
                with contextlib.suppress(AttributeError, OSError):
                    mm.madvise(mmap.MADV_HUGEPAGE)
            finally:
                os.close(fd)
            m = self._native.Mapping(mm)
            return mm, m, (st.st_dev, st.st_ino)
        raise OSError(errno.EAGAIN, f"{path}: the file kept disappearing while being opened")

    def _create_file(self, size: int, max_objects: int, mode: int) -> None:
        """Publish a new file at path: built in a private file, then link()ed into place
        (which, like O_EXCL, fails when the path exists), so no process ever opens a
        file whose header is half written."""
        native = self._native
        floor = native.heap_offset(max_objects) + MIN_HEAP
        if size < floor:
            raise ValueError(
                f"{self._path}: size must be at least {floor} bytes for "
                f"max_objects={max_objects}, got {size}"
            )
        folder, base = os.path.split(self._path)
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.init")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as mm:
                native.init_header(
                    mm, size, max_objects, os.urandom(16), time.time_ns(), os.getpid()
                )
            os.link(tmp, self._path)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _check(
        self, header: bytes, file_size: int, size: int | None, max_objects: int | None
    ) -> None:
        native = self._native
        path = self._path
        code, h = native.check_header(header, file_size)
        if code == native.E_MAGIC:
            raise ValueError(
                f"{path}: not a resilio shared-memory file (magic {h['magic']!r}, "
                f"expected {native.MAGIC!r})"
            )
        if code == native.E_VERSION:
            raise ValueError(
                f"{path}: layout version {h['version']}, but this resilio reads version "
                f"{native.VERSION} (the file was made by another resilio release; "
                "stop its users and unlink it)"
            )
        if code == native.E_ABI:
            raise ValueError(
                f"{path}: made by a resilio build with another struct layout (ABI "
                f"{h['abi']:#x}, this build {native.ABI:#x}); every process must run the "
                "same build"
            )
        if code == native.E_SIZE:
            raise ValueError(
                f"{path}: the header says {h['total_size']} bytes but the file has "
                f"{file_size}: truncated or damaged"
            )
        if code != native.OK:
            raise ValueError(f"{path}: damaged header (table of contents out of bounds)")
        if size is not None and h["total_size"] != size:
            raise ValueError(f"{path}: size is {h['total_size']} bytes, asked for {size}")
        if max_objects is not None and h["slot_count"] != max_objects:
            raise ValueError(f"{path}: max_objects is {h['slot_count']}, asked for {max_objects}")

    # ---- properties and housekeeping ------------------------------------------------

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def closed(self) -> bool:
        return self._map is None

    def _mapping(self) -> Any:
        m = self._map
        if m is None:
            raise ValueError(f"{self._path}: SharedState is closed")
        return m

    @property
    def size(self) -> int:
        """Bytes of the file."""
        size: int = self._mapping().header()["total_size"]
        return size

    @property
    def max_objects(self) -> int:
        """Registry slots: the most objects the file can hold."""
        n: int = self._mapping().header()["slot_count"]
        return n

    def stats(self) -> dict[str, int]:
        """Sizes and tallies: size, used and free heap bytes, objects, takeovers..."""
        h = self._mapping().header()
        used = h["heap_next"] - h["heap_offset"]
        return {
            "version": h["version"],
            "size": h["total_size"],
            "max_objects": h["slot_count"],
            "heap_bytes": h["total_size"] - h["heap_offset"],
            "used_bytes": used,
            "free_bytes": h["total_size"] - h["heap_next"],
            "objects": h["objects"],
            "takeovers": h["takeovers"],
            "created_unix_ns": h["created_unix_ns"],
            "creator_pid": h["creator_pid"],
        }

    def objects(self) -> list[SharedObject]:
        """Every object published in the file, in registry order."""
        m = self._mapping()
        native = self._native
        out = []
        for idx in range(m.header()["slot_count"]):
            word = m.slot_state(idx)
            if word & 3 != native.READY:
                continue
            off = word & ~3
            kind, name, params, size, _claim = m.read_object(off)
            out.append(
                SharedObject(
                    KIND_NAMES.get(kind, str(kind)),
                    name.decode(errors="replace"),
                    off,
                    size,
                    _describe(kind, params),
                )
            )
        return out

    def close(self) -> None:
        """Drop this object's references to the mapping. Objects placed in it keep
        working; the file is unmapped once the last of them is gone."""
        self._objects.clear()
        mm = self._mm
        self._map = None
        self._mm = None
        if mm is not None:
            # BufferError: objects still point into it; unmapped when the last one goes.
            with contextlib.suppress(BufferError):
                mm.close()

    def unlink(self) -> None:
        """Remove the file's name: processes that open the path later get a new file;
        those that have it mapped keep using the old one."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._ino:
            os.unlink(self._path)

    def __enter__(self) -> SharedState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # A spawned worker opens the same file by path (never creates a new one).
        return (_attach, (self._path, self._init_timeout))

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"{len(self._objects)} objects attached"
        return f"SharedState({self._path!r}, {state})"

    # ---- objects ------------------------------------------------------------------

    def token_bucket(self, name: str, rate: float, burst: int) -> TokenBucket:
        """The token bucket `name` (created with `rate` and `burst` if absent)."""
        native = self._native
        interval, burst_ = _args.bucket_args(rate, burst)
        rate_f = float(rate)
        obj: TokenBucket = self._place(
            native.BUCKET,
            name,
            (_f64(rate_f), burst_),
            native.BUCKET_SIZE,
            lambda m, off: m.init_bucket(off, interval, burst_),
            lambda m, off: m.bucket_at(off, rate_f),
        )
        return obj

    def keyed_buckets(
        self, name: str, rate: float, burst: int, max_keys: int, *, on_full: int = 0
    ) -> KeyedBuckets:
        """The keyed table `name` (created if absent). Its SipHash key is derived from
        the file's secret, so every process hashes client keys alike."""
        native = self._native
        interval, burst_, capacity, on_full_ = _keyed_args(rate, burst, max_keys, on_full)
        rate_f = float(rate)
        secret = self._mapping().table_secret(_name_bytes(name, native.NAME_MAX))
        obj: KeyedBuckets = self._place(
            native.KEYED,
            name,
            (_f64(rate_f), burst_, capacity, on_full_),
            native.keyed_size(capacity),
            lambda m, off: m.init_keyed(off, interval, burst_, capacity, secret, on_full_),
            lambda m, off: m.keyed_at(off, rate_f, capacity),
        )
        return obj

    def circuit(
        self,
        name: str,
        failure_ratio: float,
        minimum_throughput: int,
        sampling_duration_ns: int,
        break_duration_ns: int,
        *,
        max_break_duration_ns: int = 0,
        half_open_calls: int = 1,
        slow_call_ratio: float | None = None,
        buckets: int = 10,
        now_ns: int = 0,
    ) -> Circuit:
        """The circuit `name`, with its sliding window (created if absent; `now_ns`
        only matters to the creator)."""
        native = self._native
        *params, now = _args.circuit_args(
            failure_ratio,
            minimum_throughput,
            sampling_duration_ns,
            break_duration_ns,
            max_break_duration_ns,
            half_open_calls,
            slow_call_ratio,
            buckets,
            now_ns,
        )
        obj: Circuit = self._place(
            native.CIRCUIT,
            name,
            tuple(params),
            native.CIRCUIT_SIZE,
            lambda m, off: m.init_circuit(off, *params, now),
            lambda m, off: m.circuit_at(off),
        )
        return obj

    def gate(self, name: str, limit: int) -> Gate:
        """The concurrency gate `name` (created with `limit` if absent). The limit a
        process sets later is shared; attaching compares the creation limit."""
        native = self._native
        limit_ = _args.gate_limit(limit)
        obj: Gate = self._place(
            native.GATE,
            name,
            (limit_,),
            native.GATE_SIZE,
            lambda m, off: m.init_gate(off, limit_),
            lambda m, off: m.gate_at(off),
        )
        return obj

    def counters(self, name: str, n: int) -> Counters:
        """The array of `n` event counters `name` (created if absent)."""
        native = self._native
        n_ = _args.counters_size(n)
        obj: Counters = self._place(
            native.COUNTERS,
            name,
            (n_,),
            native.COUNTERS_SIZE,
            lambda m, off: m.init_counters(off, n_),
            lambda m, off: m.counters_at(off),
        )
        return obj

    def factory(self, name: str | None) -> SharedFactory:
        """The backend factory that builds a strategy's primitives as object `name`."""
        if name is None:
            raise ValueError(
                f"shared-memory state at {self._path} is shared by name: give the "
                "strategy a name= (it names the shared object)"
            )
        return SharedFactory(self, name)

    # ---- the registry protocol (csrc/rs_shm.h) ----------------------------------------

    def _place(
        self,
        kind: int,
        name: str,
        params: tuple[int, ...],
        struct_size: int,
        init: Callable[[Any, int], None],
        build: Callable[[Any, int], Any],
    ) -> Any:
        native = self._native
        m = self._mapping()
        nb = _name_bytes(name, native.NAME_MAX)
        want = params + (0,) * (native.PARAMS - len(params))
        cached = self._objects.get((kind, nb))
        if cached is not None:
            if cached[1] != want:
                raise self._mismatch(kind, name, cached[1], want)
            return cached[0]
        key = m.name_key(kind, nb)
        probe = 0
        while True:
            found = m.slot_find(key, probe)
            if found is None:
                raise SharedStateFullError(
                    f"{self._path}: no registry slot left for {KIND_NAMES[kind]} {name!r} "
                    f"(max_objects={m.header()['slot_count']}); create the file with a "
                    "larger max_objects"
                )
            idx, probe = found
            off = self._ready(m, idx, kind, name, nb, want, struct_size, init)
            have_kind, have_name, have, have_size, _claim = m.read_object(off)
            if have_kind != kind or have_name != nb:
                probe += 1  # another (kind, name) with the same 64-bit key: probe on
                continue
            if have != want or have_size != struct_size:
                raise self._mismatch(kind, name, have, want)
            obj = build(m, off)
            self._objects[(kind, nb)] = (obj, want)
            return obj

    def _mismatch(
        self, kind: int, name: str, have: tuple[int, ...], want: tuple[int, ...]
    ) -> ValueError:
        return ValueError(
            f"{self._path}: {KIND_NAMES[kind]} {name!r} exists with "
            f"{_show(_describe(kind, have))}; asked for {_show(_describe(kind, want))}"
        )

    def _ready(
        self,
        m: Any,
        idx: int,
        kind: int,
        name: str,
        nb: bytes,
        params: tuple[int, ...],
        struct_size: int,
        init: Callable[[Any, int], None],
    ) -> int:
        """Wait for slot idx to be READY, creating its object if nobody is; return the
        object's offset."""
        native = self._native
        timeout = self._init_timeout
        start = time.monotonic()
        deadline = start + 10 * timeout
        seen = -1
        since = start
        delay = _SPIN_MIN
        word: int = m.slot_state(idx)
        while True:
            phase = word & 3
            if phase == native.READY:
                return word & ~3
            claim = 0
            if phase == native.EMPTY:
                claim = _claim_word()
                ok, word = m.slot_cas(idx, native.EMPTY, claim)
                if not ok:
                    continue
            else:
                now = time.monotonic()
                if word != seen:
                    seen, since = word, now  # a new claim: its creator gets a full timeout
                elif now - since >= timeout or _claimant_alive(word) is False:
                    claim = _claim_word()
                    ok, word = m.slot_cas(idx, seen, claim)
                    if not ok:
                        continue
                    m.count_takeover()
                if not claim:
                    if now >= deadline:
                        raise TimeoutError(
                            f"{self._path}: {KIND_NAMES[kind]} {name!r} was still being "
                            f"created after {now - start:.1f} s"
                        )
                    time.sleep(delay)
                    delay = min(delay * 2, _SPIN_MAX)
                    word = m.slot_state(idx)
                    continue
            off = self._create(m, idx, claim, kind, name, nb, params, struct_size, init)
            if off:
                return off
            word = m.slot_state(idx)  # our claim was taken over: follow the new one

    def _create(
        self,
        m: Any,
        idx: int,
        claim: int,
        kind: int,
        name: str,
        nb: bytes,
        params: tuple[int, ...],
        struct_size: int,
        init: Callable[[Any, int], None],
    ) -> int:
        """Build the object of our claim in fresh heap memory and publish it: its
        offset, or 0 when another process took the claim over meanwhile."""
        native = self._native
        try:
            off: int = m.alloc(native.OBJECT_SIZE + struct_size)
            if not off:
                h = m.header()
                raise SharedStateFullError(
                    f"{self._path}: no room for {KIND_NAMES[kind]} {name!r} "
                    f"({native.OBJECT_SIZE + struct_size} bytes; "
                    f"{h['total_size'] - h['heap_next']} of {h['total_size']} left); "
                    "create the file with a larger size"
                )
            m.write_object(off, kind, nb, params, struct_size, claim)
            init(m, off)
            if _after_init is not None:
                _after_init(name)
        except BaseException:
            # Give the claim back so others need not wait for a timeout to take it.
            m.slot_cas(idx, claim, native.EMPTY)
            raise
        ok, _ = m.slot_cas(idx, claim, off | native.READY)
        if not ok:
            return 0
        m.count_object()
        return off


class SharedFactory:
    """Builds one strategy's primitives in a `SharedState`, as the object `name`.

    Its results are the compiled classes; they are typed as `resilio._core`'s, whose
    API they share, so that strategies type-check alike on every backend.
    """

    __slots__ = ("name", "state")

    def __init__(self, state: SharedState, name: str) -> None:
        self.state = state
        self.name = name

    def token_bucket(self, rate: float, burst: int) -> _core.TokenBucket:
        return cast("_core.TokenBucket", self.state.token_bucket(self.name, rate, burst))

    def keyed_buckets(self, rate: float, burst: int, max_keys: int) -> _core.KeyedBuckets:
        obj = self.state.keyed_buckets(self.name, rate, burst, max_keys)
        return cast("_core.KeyedBuckets", obj)

    def circuit(
        self,
        failure_ratio: float,
        minimum_throughput: int,
        sampling_duration_ns: int,
        break_duration_ns: int,
        *,
        max_break_duration_ns: int = 0,
        half_open_calls: int = 1,
        slow_call_ratio: float | None = None,
        buckets: int = 10,
        now_ns: int = 0,
    ) -> _core.Circuit:
        obj = self.state.circuit(
            self.name,
            failure_ratio,
            minimum_throughput,
            sampling_duration_ns,
            break_duration_ns,
            max_break_duration_ns=max_break_duration_ns,
            half_open_calls=half_open_calls,
            slow_call_ratio=slow_call_ratio,
            buckets=buckets,
            now_ns=now_ns,
        )
        return cast("_core.Circuit", obj)

    def gate(self, limit: int) -> _core.Gate:
        return cast("_core.Gate", self.state.gate(self.name, limit))

    def counters(self, n: int) -> _core.Counters:
        return cast("_core.Counters", self.state.counters(self.name, n))

    def __repr__(self) -> str:
        return f"SharedFactory({self.state.path!r}, name={self.name!r})"


def _attach(path: str, init_timeout: float) -> SharedState:
    return shared_state(path, create=False, init_timeout=init_timeout)


# One SharedState per file and process, so the strategies of a process share a mapping.
_STATES: dict[str, SharedState] = {}


def shared_state(
    path: str | os.PathLike[str],
    size: int | None = None,
    *,
    create: bool = True,
    init_timeout: float = DEFAULT_INIT_TIMEOUT,
) -> SharedState:
    """This process's `SharedState` for `path`, opened (or created) on first use.

    A file unlinked and created again at the same path since is opened anew.
    """
    key = os.path.abspath(os.fspath(path))
    state = _STATES.get(key)
    if state is not None and not state.closed:
        try:
            st = os.stat(key)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == state._ino:
            if size is not None and state.size != size:
                raise ValueError(f"{key}: size is {state.size} bytes, asked for {size}")
            return state
    state = SharedState(key, size, create=create, init_timeout=init_timeout)
    _STATES[key] = state
    return state


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _parse_size(text: str, spec: str) -> int:
    digits = text.rstrip("kKmMgGiIbB")
    unit = text[len(digits) :].lower().removesuffix("b").removesuffix("i")
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"backend {spec!r}: size must be bytes, or a number with K, M or G")
    return int(digits) * _SIZE_UNITS[unit]


def open_backend(spec: str, name: str | None) -> SharedFactory:
    """The factory for ``backend="shm:/dev/shm/NAME[?size=64M]"`` and a strategy `name`."""
    rest = spec.removeprefix("shm:")
    if rest.startswith("//"):
        rest = rest[2:]  # the URL form shm:///dev/shm/NAME
    path, _, query = rest.partition("?")
    if not os.path.isabs(path):
        raise ValueError(f"backend {spec!r}: expected 'shm:' and an absolute path")
    size = None
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key != "size":
            raise ValueError(f"backend {spec!r}: unknown option {key!r} (only size=)")
        size = _parse_size(value, spec)
    if name is None:
        raise ValueError(
            f"backend {spec!r} shares state between processes by name: give the strategy "
            "a name= (it names the shared object)"
        )
    return shared_state(path, size).factory(name)
