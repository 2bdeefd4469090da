# cython: language_level=3
"""C declarations of the resilio core (csrc/*.h) and the compiled classes over it.

Only declarations live here (aiohttp ``_cparser.pxd``): the headers are header-only C11
with ``static inline`` functions, declared below as plain functions. Atomic words are
declared as their plain integer types; touch them only through the ``rs_*`` helpers.

Cython code can ``cimport resilio._core_c`` and call the C directly on a primitive's
struct, e.g. ``rs_bucket_try_acquire(bucket.b, now_ns, 1)`` with ``bucket`` typed as
``TokenBucket``. Each class keeps a pointer to its struct (not an embedded struct) so a
primitive can later live in memory it does not own (a shared mapping).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "rs_atomic.h" nogil:
    ctypedef int64_t rs_atomic_i64
    ctypedef uint64_t rs_atomic_u64

    int64_t rs_load_relaxed_i64(rs_atomic_i64 *p)
    uint64_t rs_load_relaxed_u64(rs_atomic_u64 *p)
    void rs_store_relaxed_i64(rs_atomic_i64 *p, int64_t v)
    void rs_store_relaxed_u64(rs_atomic_u64 *p, uint64_t v)
    int64_t rs_load_acquire_i64(rs_atomic_i64 *p)
    uint64_t rs_load_acquire_u64(rs_atomic_u64 *p)
    void rs_store_release_i64(rs_atomic_i64 *p, int64_t v)
    void rs_store_release_u64(rs_atomic_u64 *p, uint64_t v)
    bint rs_cas_acq_rel_i64(rs_atomic_i64 *p, int64_t *expected, int64_t desired)
    bint rs_cas_acq_rel_u64(rs_atomic_u64 *p, uint64_t *expected, uint64_t desired)
    bint rs_cas_strong_acq_rel_u64(rs_atomic_u64 *p, uint64_t *expected, uint64_t desired)
    bint rs_cas_strong_acq_rel_i64(rs_atomic_i64 *p, int64_t *expected, int64_t desired)
    uint64_t rs_add_relaxed_u64(rs_atomic_u64 *p, uint64_t v)
    int64_t rs_add_relaxed_i64(rs_atomic_i64 *p, int64_t v)
    int64_t rs_add_acq_rel_i64(rs_atomic_i64 *p, int64_t v)
    uint64_t rs_exchange_acq_rel_u64(rs_atomic_u64 *p, uint64_t v)
    int64_t rs_max_i64(int64_t a, int64_t b)
    int64_t rs_min_i64(int64_t a, int64_t b)


cdef extern from "rs_token_bucket.h" nogil:
    const int64_t RS_TAT_FULL

    ctypedef struct rs_bucket:
        rs_atomic_i64 tat
        int64_t interval_ns
        int64_t burst
        rs_atomic_u64 admitted
        rs_atomic_u64 rejected

    void rs_bucket_init(rs_bucket *b, int64_t interval_ns, int64_t burst)
    int64_t rs_gcra_step(rs_atomic_i64 *tat_word, int64_t interval_ns, int64_t burst,
                         int64_t now_ns, int64_t n, int64_t max_wait_ns)
    int64_t rs_bucket_try_acquire(rs_bucket *b, int64_t now_ns, int64_t n)
    int64_t rs_bucket_reserve(rs_bucket *b, int64_t now_ns, int64_t n, int64_t max_wait_ns)
    void rs_gcra_refund(rs_atomic_i64 *tat_word, int64_t interval_ns, int64_t n, int64_t now_ns)
    void rs_bucket_refund(rs_bucket *b, int64_t now_ns, int64_t n)
    int64_t rs_gcra_available(int64_t tat, int64_t interval_ns, int64_t burst, int64_t now_ns)
    int64_t rs_bucket_available(rs_bucket *b, int64_t now_ns)


cdef extern from "rs_window.h" nogil:
    enum:
        RS_WINDOW_MAX_BUCKETS
        RS_COUNT_WINDOW_MAX
        RS_OUTCOME_FAILURE
        RS_OUTCOME_SLOW
        RS_SLOT_VALID

    ctypedef struct rs_wbucket:
        rs_atomic_u64 calls
        rs_atomic_u64 failures
        rs_atomic_u64 slow

    ctypedef struct rs_twindow:
        int64_t width_ns
        uint32_t nbuckets
        uint32_t reserved
        rs_wbucket buckets[RS_WINDOW_MAX_BUCKETS]

    ctypedef struct rs_wsnapshot:
        uint64_t calls
        uint64_t failures
        uint64_t slow

    ctypedef struct rs_cwindow:
        uint32_t size
        uint32_t reserved
        rs_atomic_u64 pos
        rs_atomic_i64 calls
        rs_atomic_i64 failures
        rs_atomic_i64 slow
        rs_atomic_u64 ring[RS_COUNT_WINDOW_MAX]

    void rs_twindow_clear_to(rs_twindow *w, uint32_t tag)
    void rs_twindow_init(rs_twindow *w, int64_t duration_ns, uint32_t nbuckets)
    void rs_tagged_inc(rs_atomic_u64 *word, uint32_t tag)
    void rs_twindow_record(rs_twindow *w, int64_t now_ns, uint32_t outcome)
    uint64_t rs_tagged_read(rs_atomic_u64 *word, uint32_t tag)
    rs_wsnapshot rs_twindow_snapshot(rs_twindow *w, int64_t now_ns)
    void rs_twindow_reset(rs_twindow *w, int64_t now_ns)

    void rs_cwindow_init(rs_cwindow *w, uint32_t size)
    void rs_cwindow_apply(rs_cwindow *w, uint64_t added, uint64_t removed)
    void rs_cwindow_record(rs_cwindow *w, uint32_t outcome)
    rs_wsnapshot rs_cwindow_snapshot(rs_cwindow *w)
    void rs_cwindow_reset(rs_cwindow *w)


cdef extern from "rs_circuit.h" nogil:
    enum:
        RS_CS_CLOSED
        RS_CS_OPEN
        RS_CS_HALF_OPEN
        RS_CS_ISOLATED
        RS_CW_OPENS_SHIFT
        RS_CW_PERMITS_SHIFT
        RS_CW_SUCC_SHIFT
        RS_CW_GEN_SHIFT
        RS_CW_TIME_SHIFT
        RS_CW_UNIT_SHIFT
        RS_CW_MAX_OPENS
        RS_CW_MAX_PROBES
        RS_NO_TRANSITION
    const uint64_t RS_CW_PERMITS_MASK
    const uint64_t RS_CW_SUCC_MASK
    const uint64_t RS_CW_ID_MASK
    const uint64_t RS_CW_MAX_UNITS
    const uint64_t RS_CW_MAX_BREAK_UNITS
    const int64_t RS_ADMIT_ISOLATED

    ctypedef struct rs_circuit:
        rs_atomic_u64 word
        uint64_t failure_ppm
        uint64_t slow_ppm
        uint64_t min_throughput
        int64_t break_ns
        int64_t max_break_ns
        uint32_t half_open_calls
        uint32_t reserved
        rs_atomic_u64 admitted
        rs_atomic_u64 rejected
        rs_atomic_u64 successes
        rs_atomic_u64 failures
        rs_atomic_u64 slow
        rs_atomic_u64 opened
        rs_atomic_u64 half_opened
        rs_atomic_u64 closed
        rs_atomic_u64 isolated
        rs_atomic_u64 stale
        rs_twindow window

    uint32_t rs_cw_state(uint64_t w)
    uint32_t rs_cw_opens(uint64_t w)
    uint32_t rs_cw_permits(uint64_t w)
    uint32_t rs_cw_succ(uint64_t w)
    uint32_t rs_cw_gen(uint64_t w)
    int64_t rs_cw_time_ns(uint64_t w)
    uint64_t rs_cw_units_floor(int64_t ns)
    uint64_t rs_cw_units_ceil(int64_t ns)
    uint64_t rs_cw_break_units_ceil(int64_t ns)
    uint64_t rs_cw_make(uint32_t state, uint32_t opens, uint32_t permits, uint32_t succ,
                        uint32_t gen, uint64_t time_units)

    void rs_circuit_init(rs_circuit *c, uint64_t failure_ppm, uint64_t slow_ppm,
                         uint64_t min_throughput, int64_t sampling_ns, uint32_t buckets,
                         int64_t break_ns, int64_t max_break_ns, uint32_t half_open_calls,
                         int64_t now_ns)
    int64_t rs_circuit_break_for(const rs_circuit *c, uint32_t opens)
    uint64_t rs_circuit_open_word(const rs_circuit *c, uint64_t frm, int64_t now_ns)
    uint64_t rs_circuit_probe_word(const rs_circuit *c, uint64_t frm, int64_t now_ns)
    int64_t rs_circuit_admit(rs_circuit *c, int64_t now_ns)
    bint rs_circuit_should_trip(const rs_circuit *c, rs_wsnapshot s)
    int32_t rs_circuit_record(rs_circuit *c, int64_t ticket, int64_t now_ns, uint32_t outcome)
    void rs_circuit_release(rs_circuit *c, int64_t ticket)
    void rs_circuit_isolate(rs_circuit *c, int64_t now_ns)
    void rs_circuit_reset(rs_circuit *c, int64_t now_ns)
    uint32_t rs_circuit_state(rs_circuit *c)
    int64_t rs_circuit_retry_after(rs_circuit *c, int64_t now_ns)


cdef extern from "rs_gate.h" nogil:
    ctypedef struct rs_gate:
        rs_atomic_i64 in_flight
        rs_atomic_i64 limit
        rs_atomic_u64 admitted
        rs_atomic_u64 rejected

    void rs_gate_init(rs_gate *g, int64_t limit)
    bint rs_gate_try_enter(rs_gate *g)
    void rs_gate_exit(rs_gate *g)
    void rs_gate_set_limit(rs_gate *g, int64_t limit)


cdef extern from "rs_counters.h" nogil:
    enum:
        RS_COUNTERS_MAX

    ctypedef struct rs_counters:
        uint32_t n
        uint32_t reserved
        rs_atomic_u64 v[RS_COUNTERS_MAX]

    void rs_counters_init(rs_counters *c, uint32_t n)
    void rs_counters_add(rs_counters *c, uint32_t i, uint64_t d)
    uint64_t rs_counters_get(rs_counters *c, uint32_t i)


cdef extern from "rs_siphash.h" nogil:
    void rs_siphash128(const uint8_t *inp, size_t len, const uint8_t *k, uint64_t *out)


cdef extern from "rs_keyed.h" nogil:
    enum:
        RS_KEYED_EVICT
        RS_KEYED_REJECT
        RS_KEYED_PROBE
        RS_KEYED_MAX_KEY
        RS_KEYED_SPIN
        RS_KEYED_ROUNDS
    const uint64_t RS_KEYED_MAX_CAPACITY
    const int64_t RS_KEYED_MAX_NOW
    const int64_t RS_KEYED_MAX_TOLERANCE
    const int64_t RS_KEYED_MAX_WAIT
    const uint32_t RS_KEYED_GEN_MAX
    const int64_t RS_KEYED_SENT_BASE

    ctypedef struct rs_keyed_entry:
        rs_atomic_u64 seq
        rs_atomic_u64 fp0
        rs_atomic_u64 fp1
        rs_atomic_i64 tat

    ctypedef struct rs_keyed:
        int64_t interval_ns
        int64_t burst
        uint64_t capacity
        uint32_t on_full
        uint32_t probe
        uint8_t secret[16]
        rs_atomic_u64 admitted
        rs_atomic_u64 rejected
        rs_atomic_u64 evicted
        rs_atomic_u64 inserted
        rs_keyed_entry entries[1]  # C: a flexible array member of `capacity` entries

    size_t rs_keyed_size(uint64_t capacity)
    int rs_keyed_check(int64_t interval_ns, int64_t burst, uint64_t capacity, uint32_t on_full)
    void rs_keyed_init(rs_keyed *t, int64_t interval_ns, int64_t burst, uint64_t capacity,
                       const uint8_t *secret, uint32_t on_full)
    int64_t rs_keyed_try_acquire(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns,
                                 int64_t n)
    int64_t rs_keyed_reserve(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns,
                             int64_t n, int64_t max_wait_ns)
    void rs_keyed_refund(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns, int64_t n)
    int64_t rs_keyed_available(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns)
    uint64_t rs_keyed_count(rs_keyed *t, int64_t now_ns)


# ---- the compiled classes (their Python API mirrors resilio._core_py) ----
# `_mem` is the owned allocation the struct pointer points into (64-byte aligned inside
# it); it is NULL when the struct lives in memory the object does not own. `_owner` is
# then whatever keeps that memory valid for as long as the object lives (resilio._shm_c
# sets it to the holder of a buffer export of a shared mapping); None otherwise.

cdef class TokenBucket:
    cdef rs_bucket *b
    cdef void *_mem
    cdef object _owner
    cdef double _rate


cdef class TimeWindow:
    cdef rs_twindow *w
    cdef void *_mem
    cdef object _owner


cdef class CountWindow:
    cdef rs_cwindow *w
    cdef void *_mem
    cdef object _owner


cdef class Circuit:
    cdef rs_circuit *c
    cdef void *_mem
    cdef object _owner


cdef class Gate:
    cdef rs_gate *g
    cdef void *_mem
    cdef object _owner


cdef class Counters:
    cdef rs_counters *c
    cdef void *_mem
    cdef object _owner


cdef class KeyedBuckets:
    cdef rs_keyed *t
    cdef void *_mem
    cdef size_t _mapped
    cdef object _owner
    cdef double _rate
    cdef void _free(self)
