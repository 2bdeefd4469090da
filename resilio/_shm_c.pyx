# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=False
"""Compiled half of the shared-memory backend: the file layout of csrc/rs_shm.h.

`Mapping` holds a writable buffer export of a mapped file (so the mapping cannot be
closed under it) and offers the atomic steps of the registry protocol, the object
descriptors, the initialization of each core struct in place, and the placing of the
compiled core classes (`resilio._core_c.TokenBucket`, ...) over a struct in the file.

A placed object is an ordinary instance of the compiled class: its struct pointer
points into the mapping, its `_mem` is NULL (it owns no memory) and its `_owner` is
the `Mapping`, so the mapping outlives every object placed in it. Every method runs
the same C as on a private struct.

The protocol itself (waits, timeouts, liveness, errors) is in resilio/backends/shm.py.
Every offset handed in is checked against the mapping, so a damaged file raises
ValueError rather than touching memory outside it.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy

from resilio._core_c cimport (
    Circuit, Counters, Gate, KeyedBuckets, TokenBucket, RS_COUNTERS_MAX, RS_KEYED_EVICT,
    RS_KEYED_MAX_CAPACITY, RS_KEYED_PROBE, RS_KEYED_REJECT, RS_WINDOW_MAX_BUCKETS, rs_bucket,
    rs_bucket_init, rs_circuit, rs_circuit_init, rs_counters, rs_counters_init, rs_gate,
    rs_gate_init, rs_keyed, rs_keyed_check, rs_keyed_init, rs_keyed_size, rs_siphash128,
    rs_add_relaxed_u64, rs_load_relaxed_u64, rs_atomic_u64,
)


cdef extern from "rs_shm.h" nogil:
    const char *RS_SHM_MAGIC
    enum:
        RS_SHM_MAGIC_LEN
        RS_SHM_VERSION
        RS_SHM_ALIGN
        RS_SHM_HEADER_SIZE
        RS_SHM_OBJECT_SIZE
        RS_SHM_NAME_MAX
        RS_SHM_PARAMS
        RS_SHM_BUCKET
        RS_SHM_KEYED
        RS_SHM_CIRCUIT
        RS_SHM_GATE
        RS_SHM_COUNTERS
        RS_SHM_EMPTY
        RS_SHM_INIT
        RS_SHM_READY
        RS_SHM_OK
        RS_SHM_E_MAGIC
        RS_SHM_E_VERSION
        RS_SHM_E_ABI
        RS_SHM_E_SIZE
        RS_SHM_E_TABLE

    ctypedef struct rs_shm_header:
        uint8_t magic[8]
        uint32_t version
        uint32_t header_size
        uint64_t total_size
        uint64_t abi
        uint32_t slot_count
        uint32_t object_size
        uint64_t slots_offset
        uint64_t heap_offset
        uint8_t secret[16]
        int64_t created_unix_ns
        uint64_t creator_pid
        rs_atomic_u64 heap_next
        rs_atomic_u64 objects
        rs_atomic_u64 takeovers

    ctypedef struct rs_shm_object:
        uint32_t kind
        uint32_t name_len
        uint64_t struct_size
        uint64_t claim
        uint64_t params[12]
        uint8_t name[128]

    uint64_t rs_shm_abi()
    uint64_t rs_shm_heap_offset(uint32_t slot_count)
    void rs_shm_header_init(rs_shm_header *h, uint64_t total_size, uint32_t slot_count,
                            const uint8_t *secret, int64_t unix_ns, uint64_t pid)
    int rs_shm_header_check(const rs_shm_header *h, uint64_t file_size)
    int64_t rs_shm_slot_find(rs_shm_header *h, uint64_t key, uint32_t *probe)
    uint64_t rs_shm_slot_state(rs_shm_header *h, uint64_t idx)
    bint rs_shm_slot_cas(rs_shm_header *h, uint64_t idx, uint64_t *expected, uint64_t desired)
    uint64_t rs_shm_alloc(rs_shm_header *h, uint64_t size)


MAGIC = PyBytes_FromStringAndSize(RS_SHM_MAGIC, RS_SHM_MAGIC_LEN)
VERSION = RS_SHM_VERSION
ABI = rs_shm_abi()
ALIGN = RS_SHM_ALIGN
HEADER_SIZE = RS_SHM_HEADER_SIZE
OBJECT_SIZE = RS_SHM_OBJECT_SIZE
NAME_MAX = RS_SHM_NAME_MAX
PARAMS = RS_SHM_PARAMS

BUCKET = RS_SHM_BUCKET
KEYED = RS_SHM_KEYED
CIRCUIT = RS_SHM_CIRCUIT
GATE = RS_SHM_GATE
COUNTERS = RS_SHM_COUNTERS

EMPTY = RS_SHM_EMPTY
INIT = RS_SHM_INIT
READY = RS_SHM_READY

OK = RS_SHM_OK
E_MAGIC = RS_SHM_E_MAGIC
E_VERSION = RS_SHM_E_VERSION
E_ABI = RS_SHM_E_ABI
E_SIZE = RS_SHM_E_SIZE
E_TABLE = RS_SHM_E_TABLE

BUCKET_SIZE = sizeof(rs_bucket)
CIRCUIT_SIZE = sizeof(rs_circuit)
GATE_SIZE = sizeof(rs_gate)
COUNTERS_SIZE = sizeof(rs_counters)

if sizeof(rs_shm_header) != RS_SHM_HEADER_SIZE or sizeof(rs_shm_object) != RS_SHM_OBJECT_SIZE:
    raise ImportError("resilio._shm_c: declarations differ from csrc/rs_shm.h")


def heap_offset(slot_count):
    """First heap byte of a file whose registry has slot_count slots."""
    return rs_shm_heap_offset(<uint32_t>slot_count)


def keyed_size(uint64_t capacity):
    """Bytes of a keyed table of `capacity` entries."""
    if capacity < 1 or capacity > RS_KEYED_MAX_CAPACITY:
        raise ValueError(f"capacity out of range: {capacity}")
    return rs_keyed_size(capacity)


def init_header(buf, uint64_t total_size, uint32_t slot_count, bytes secret, int64_t unix_ns,
                uint64_t pid):
    """Write the header of a new, zero-filled file mapped as `buf` (still private)."""
    cdef Py_buffer view
    if PyBytes_GET_SIZE(secret) != 16:
        raise ValueError("secret must be 16 bytes")
    PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
    try:
        if (<uintptr_t>view.buf) % RS_SHM_ALIGN:
            raise ValueError("the mapping is not 64-byte aligned")
        if <uint64_t>view.len != total_size or total_size < rs_shm_heap_offset(slot_count):
            raise ValueError("total_size does not fit the mapping")
        rs_shm_header_init(<rs_shm_header *>view.buf, total_size, slot_count,
                           <const uint8_t *>PyBytes_AS_STRING(secret), unix_ns, pid)
    finally:
        PyBuffer_Release(&view)


cdef dict _header_dict(rs_shm_header *h):
    return {
        "magic": PyBytes_FromStringAndSize(<char *>h.magic, RS_SHM_MAGIC_LEN),
        "version": h.version,
        "header_size": h.header_size,
        "total_size": h.total_size,
        "abi": h.abi,
        "slot_count": h.slot_count,
        "object_size": h.object_size,
        "slots_offset": h.slots_offset,
        "heap_offset": h.heap_offset,
        "created_unix_ns": h.created_unix_ns,
        "creator_pid": h.creator_pid,
        "heap_next": rs_load_relaxed_u64(&h.heap_next),
        "objects": rs_load_relaxed_u64(&h.objects),
        "takeovers": rs_load_relaxed_u64(&h.takeovers),
    }


def check_header(bytes data, uint64_t file_size):
    """(OK or the E_* reason a file cannot be used, its header's fields) for a copy of
    the file's first HEADER_SIZE bytes: checked before the file is mapped."""
    cdef rs_shm_header h
    if PyBytes_GET_SIZE(data) != RS_SHM_HEADER_SIZE:
        raise ValueError("a header is HEADER_SIZE bytes")
    memcpy(&h, PyBytes_AS_STRING(data), RS_SHM_HEADER_SIZE)
    return rs_shm_header_check(&h, file_size), _header_dict(&h)


cdef class Mapping:
    """Mapping(buf)
--

A writable buffer export of a mapped resilio file: while it (or any object placed
through it) lives, the mapping stays mapped (mmap.close() raises BufferError)."""

    cdef Py_buffer _view
    cdef bint _held
    cdef char *base
    cdef uint64_t size
    cdef rs_shm_header *h

    def __cinit__(self, buf):
        PyObject_GetBuffer(buf, &self._view, PyBUF_WRITABLE)
        self._held = True
        self.base = <char *>self._view.buf
        self.size = <uint64_t>self._view.len
        self.h = <rs_shm_header *>self.base
        if (<uintptr_t>self.base) % RS_SHM_ALIGN:
            raise ValueError("the mapping is not 64-byte aligned")
        if self.size < RS_SHM_HEADER_SIZE:
            raise ValueError("the mapping is smaller than a header")

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._view)
            self._held = False

    # ---- header ----

    def check(self):
        """OK, or the E_* reason this file cannot be used by this build."""
        return rs_shm_header_check(self.h, self.size)

    def header(self):
        """The header's fields, as a dict (magic as bytes, secret left out)."""
        return _header_dict(self.h)

    def name_key(self, uint32_t kind, bytes name):
        """Registry key of (kind, name): SipHash under the file's secret, never 0."""
        cdef uint64_t fp[2]
        cdef bytes data = bytes([kind & 0xFF]) + name
        rs_siphash128(<const uint8_t *>PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data),
                      self.h.secret, fp)
        return fp[0] if fp[0] != 0 else 1

    def table_secret(self, bytes name):
        """SipHash key of the keyed table `name`, derived from the file's secret."""
        cdef uint64_t fp[2]
        cdef bytes data = b"keyed-secret\x00" + name
        cdef uint8_t out[16]
        cdef int i
        rs_siphash128(<const uint8_t *>PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data),
                      self.h.secret, fp)
        for i in range(8):
            out[i] = <uint8_t>(fp[0] >> (8 * i))
            out[8 + i] = <uint8_t>(fp[1] >> (8 * i))
        return PyBytes_FromStringAndSize(<char *>out, 16)

    def count_object(self):
        rs_add_relaxed_u64(&self.h.objects, 1)  # relaxed: a tally

    def count_takeover(self):
        rs_add_relaxed_u64(&self.h.takeovers, 1)  # relaxed: a tally

    # ---- registry ----

    def slot_find(self, uint64_t key, uint32_t probe):
        """(slot index, probe position) of key from probe position `probe` on,
        claiming a free slot on the way; None when the registry has no room."""
        cdef int64_t idx = rs_shm_slot_find(self.h, key, &probe)
        if idx < 0:
            return None
        return idx, probe

    def slot_state(self, uint64_t idx):
        """The slot's state word (acquire)."""
        if idx >= self.h.slot_count:
            raise IndexError("slot index out of range")
        return rs_shm_slot_state(self.h, idx)

    def slot_cas(self, uint64_t idx, uint64_t expected, uint64_t desired):
        """(True, desired) if the state word was `expected` and is now `desired`;
        else (False, the current word)."""
        if idx >= self.h.slot_count:
            raise IndexError("slot index out of range")
        if rs_shm_slot_cas(self.h, idx, &expected, desired):
            return True, desired
        return False, expected

    def alloc(self, uint64_t size):
        """Offset of `size` fresh heap bytes, or 0 when the file is full."""
        return rs_shm_alloc(self.h, size)

    # ---- descriptors ----

    cdef char *_region(self, uint64_t offset, uint64_t struct_size) except NULL:
        """The descriptor at offset, once checked to lie in the heap with its struct."""
        cdef uint64_t heap = self.h.heap_offset
        if (offset % RS_SHM_ALIGN or offset < heap or offset > self.size
                or struct_size > self.size
                or self.size - offset < RS_SHM_OBJECT_SIZE + struct_size):
            raise ValueError(
                f"object at offset {offset} (+{RS_SHM_OBJECT_SIZE + struct_size} bytes) lies "
                f"outside the heap [{heap}, {self.size}): the file is damaged"
            )
        return self.base + offset

    def write_object(self, uint64_t offset, uint32_t kind, bytes name, params,
                     uint64_t struct_size, uint64_t claim):
        """Fill the descriptor of a region this process allocated (not yet published)."""
        cdef rs_shm_object *o = <rs_shm_object *>self._region(offset, struct_size)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
        cdef Py_ssize_t i
        if n < 1 or n > RS_SHM_NAME_MAX or len(params) > RS_SHM_PARAMS:
            raise ValueError("bad descriptor")
        o.kind = kind
        o.name_len = <uint32_t>n
        o.struct_size = struct_size
        o.claim = claim
        for i in range(RS_SHM_PARAMS):
            o.params[i] = params[i] if i < len(params) else 0
        memcpy(o.name, PyBytes_AS_STRING(name), <size_t>n)

    def read_object(self, uint64_t offset):
        """(kind, name, params, struct_size, claim) of a published descriptor."""
        cdef rs_shm_object *o = <rs_shm_object *>self._region(offset, 0)
        cdef uint32_t n = o.name_len
        if n < 1 or n > RS_SHM_NAME_MAX:
            raise ValueError(f"object at offset {offset} has a bad name length: damaged file")
        self._region(offset, o.struct_size)
        name = PyBytes_FromStringAndSize(<char *>o.name, n)
        params = tuple([o.params[i] for i in range(RS_SHM_PARAMS)])
        return o.kind, name, params, o.struct_size, o.claim

    # ---- structs: initialize in place (creator), place a compiled object (everyone) ----

    cdef void *_struct(self, uint64_t offset, uint64_t struct_size) except NULL:
        return self._region(offset, struct_size) + RS_SHM_OBJECT_SIZE

    def init_bucket(self, uint64_t offset, int64_t interval_ns, int64_t burst):
        rs_bucket_init(<rs_bucket *>self._struct(offset, sizeof(rs_bucket)), interval_ns, burst)

    def bucket_at(self, uint64_t offset, double rate):
        cdef rs_bucket *b = <rs_bucket *>self._struct(offset, sizeof(rs_bucket))
        cdef TokenBucket o = TokenBucket.__new__(TokenBucket)
        PyMem_Free(o._mem)
        o._mem = NULL
        o.b = b
        o._owner = self
        o._rate = rate
        return o

    def init_keyed(self, uint64_t offset, int64_t interval_ns, int64_t burst, uint64_t capacity,
                   bytes secret, uint32_t on_full):
        if PyBytes_GET_SIZE(secret) != 16:
            raise ValueError("secret must be 16 bytes")
        if rs_keyed_check(interval_ns, burst, capacity, on_full) != 0:
            raise ValueError("keyed table arguments out of range")
        cdef rs_keyed *t = <rs_keyed *>self._struct(offset, rs_keyed_size(capacity))
        rs_keyed_init(t, interval_ns, burst, capacity,
                      <const uint8_t *>PyBytes_AS_STRING(secret), on_full)

    def keyed_at(self, uint64_t offset, double rate, uint64_t capacity):
        if capacity < 1 or capacity > RS_KEYED_MAX_CAPACITY:
            raise ValueError(f"keyed table at offset {offset}: bad capacity {capacity}")
        cdef rs_keyed *t = <rs_keyed *>self._struct(offset, rs_keyed_size(capacity))
        # The C indexes entries by these fields: they must be what the region was sized for.
        cdef uint32_t probe = <uint32_t>(capacity if capacity < RS_KEYED_PROBE else RS_KEYED_PROBE)
        if (t.capacity != capacity or t.probe != probe
                or rs_keyed_check(t.interval_ns, t.burst, t.capacity, t.on_full) != 0):
            raise ValueError(f"keyed table at offset {offset} does not match its descriptor")
        cdef KeyedBuckets o = KeyedBuckets.__new__(KeyedBuckets)
        PyMem_Free(o._mem)
        o._mem = NULL
        o.t = t
        o._owner = self
        o._rate = rate
        return o

    def init_circuit(self, uint64_t offset, uint64_t failure_ppm, uint64_t slow_ppm,
                     uint64_t min_throughput, int64_t sampling_ns, uint32_t buckets,
                     int64_t break_ns, int64_t max_break_ns, uint32_t half_open_calls,
                     int64_t now_ns):
        if buckets < 1 or buckets > RS_WINDOW_MAX_BUCKETS or sampling_ns < 1:
            raise ValueError("circuit window arguments out of range")
        rs_circuit_init(<rs_circuit *>self._struct(offset, sizeof(rs_circuit)), failure_ppm,
                        slow_ppm, min_throughput, sampling_ns, buckets, break_ns, max_break_ns,
                        half_open_calls, now_ns)

    def circuit_at(self, uint64_t offset):
        cdef rs_circuit *c = <rs_circuit *>self._struct(offset, sizeof(rs_circuit))
        if (c.window.nbuckets < 1 or c.window.nbuckets > RS_WINDOW_MAX_BUCKETS
                or c.window.width_ns < 1):
            raise ValueError(f"circuit at offset {offset} has a bad window: damaged file")
        cdef Circuit o = Circuit.__new__(Circuit)
        PyMem_Free(o._mem)
        o._mem = NULL
        o.c = c
        o._owner = self
        return o

    def init_gate(self, uint64_t offset, int64_t limit):
        rs_gate_init(<rs_gate *>self._struct(offset, sizeof(rs_gate)), limit)

    def gate_at(self, uint64_t offset):
        cdef rs_gate *g = <rs_gate *>self._struct(offset, sizeof(rs_gate))
        cdef Gate o = Gate.__new__(Gate)
        PyMem_Free(o._mem)
        o._mem = NULL
        o.g = g
        o._owner = self
        return o

    def init_counters(self, uint64_t offset, uint32_t n):
        if n < 1 or n > RS_COUNTERS_MAX:
            raise ValueError("counters size out of range")
        rs_counters_init(<rs_counters *>self._struct(offset, sizeof(rs_counters)), n)

    def counters_at(self, uint64_t offset):
        cdef rs_counters *c = <rs_counters *>self._struct(offset, sizeof(rs_counters))
        if c.n < 1 or c.n > RS_COUNTERS_MAX:
            raise ValueError(f"counters at offset {offset} have a bad size: damaged file")
        cdef Counters o = Counters.__new__(Counters)
        PyMem_Free(o._mem)
        o._mem = NULL
        o.c = c
        o._owner = self
        return o
