/* Atomic helpers for the resilio core.
 *
 * Header-only C11, no Python.h. Every helper names its memory order so a
 * reader sees at the call site which ordering a primitive relies on.
 * The structs built on these are plain data: they may live in process memory
 * or in a shared mapping, so no helper allocates or keeps hidden state.
 */
#ifndef RS_ATOMIC_H
#define RS_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdbool.h>

typedef _Atomic int64_t rs_atomic_i64;
typedef _Atomic uint64_t rs_atomic_u64;

#define RS_INLINE static inline __attribute__((always_inline))

/* Relaxed: counters and values whose readers tolerate a momentarily stale
 * view and which publish nothing else. */
RS_INLINE int64_t rs_load_relaxed_i64(rs_atomic_i64 *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}
RS_INLINE uint64_t rs_load_relaxed_u64(rs_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}
RS_INLINE void rs_store_relaxed_i64(rs_atomic_i64 *p, int64_t v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}
RS_INLINE void rs_store_relaxed_u64(rs_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

/* Acquire: the loaded word guards other fields written before its release
 * store (a key published under a sequence word, a window cleared before a
 * state change). */
RS_INLINE int64_t rs_load_acquire_i64(rs_atomic_i64 *p) {
    return atomic_load_explicit(p, memory_order_acquire);
}
RS_INLINE uint64_t rs_load_acquire_u64(rs_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_acquire);
}

/* Release: publishes the plain writes made before it to acquire readers. */
RS_INLINE void rs_store_release_i64(rs_atomic_i64 *p, int64_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}
RS_INLINE void rs_store_release_u64(rs_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}

/* Acq_rel CAS: a successful CAS both consumes the state it replaces and
 * publishes the state it installs; on failure we reload with acquire so the
 * retry sees everything the winner published. Weak CAS is fine: every caller
 * loops. */
RS_INLINE bool rs_cas_acq_rel_i64(rs_atomic_i64 *p, int64_t *expected, int64_t desired) {
    return atomic_compare_exchange_weak_explicit(p, expected, desired, memory_order_acq_rel,
                                                 memory_order_acquire);
}
RS_INLINE bool rs_cas_acq_rel_u64(rs_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_weak_explicit(p, expected, desired, memory_order_acq_rel,
                                                 memory_order_acquire);
}
/* Strong CAS for one-shot attempts (no retry loop around it). */
RS_INLINE bool rs_cas_strong_acq_rel_u64(rs_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_acq_rel,
                                                   memory_order_acquire);
}
RS_INLINE bool rs_cas_strong_acq_rel_i64(rs_atomic_i64 *p, int64_t *expected, int64_t desired) {
    return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_acq_rel,
                                                   memory_order_acquire);
}

/* Relaxed add: event counters are independent tallies; nothing is ordered
 * against them. */
RS_INLINE uint64_t rs_add_relaxed_u64(rs_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}
RS_INLINE int64_t rs_add_relaxed_i64(rs_atomic_i64 *p, int64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}
/* Acq_rel add/exchange: used where the old value decides what the caller
 * may do next (in-flight counts, ring slots). */
RS_INLINE int64_t rs_add_acq_rel_i64(rs_atomic_i64 *p, int64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_acq_rel);
}
RS_INLINE uint64_t rs_exchange_acq_rel_u64(rs_atomic_u64 *p, uint64_t v) {
    return atomic_exchange_explicit(p, v, memory_order_acq_rel);
}

RS_INLINE int64_t rs_max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
RS_INLINE int64_t rs_min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

#endif /* RS_ATOMIC_H */
