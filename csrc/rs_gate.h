/* Concurrency gate: an atomic in-flight count against a limit that may be
 * changed at run time. Lowering the limit never evicts calls already in;
 * it only stops new ones until the count falls below it. */
#ifndef RS_GATE_H
#define RS_GATE_H

#include "rs_atomic.h"

typedef struct {
    rs_atomic_i64 in_flight;
    rs_atomic_i64 limit;
    rs_atomic_u64 admitted;
    rs_atomic_u64 rejected;
} rs_gate;

RS_INLINE void rs_gate_init(rs_gate *g, int64_t limit) {
    rs_store_relaxed_i64(&g->in_flight, 0);
    rs_store_relaxed_u64(&g->admitted, 0);
    rs_store_relaxed_u64(&g->rejected, 0);
    rs_store_release_i64(&g->limit, limit);
}

/* Returns true and takes a slot when one is free. */
RS_INLINE bool rs_gate_try_enter(rs_gate *g) {
    /* Relaxed limit: a limit change may take effect one decision late. */
    int64_t limit = rs_load_relaxed_i64(&g->limit);
    int64_t n = rs_load_acquire_i64(&g->in_flight);
    for (;;) {
        if (n >= limit) {
            rs_add_relaxed_u64(&g->rejected, 1);
            return false;
        }
        if (rs_cas_acq_rel_i64(&g->in_flight, &n, n + 1)) {
            rs_add_relaxed_u64(&g->admitted, 1);
            return true;
        }
    }
}

/* Gives a slot back. An exit without a matching enter (nothing in flight)
 * does nothing: the count never goes below 0, which would let the next
 * try_enter calls past the limit. */
RS_INLINE void rs_gate_exit(rs_gate *g) {
    /* Relaxed: only the CAS's first guess (a failed CAS reloads with acquire);
     * a matched exit cannot read a stale 0, its own enter precedes it in
     * this word's modification order. */
    int64_t n = rs_load_relaxed_i64(&g->in_flight);
    while (n > 0) {
        /* Acq_rel: the release publishes the slot holder's writes to the next
         * enterer, whose CAS reads this value with acquire. */
        if (rs_cas_acq_rel_i64(&g->in_flight, &n, n - 1)) return;
    }
}

RS_INLINE void rs_gate_set_limit(rs_gate *g, int64_t limit) {
    rs_store_release_i64(&g->limit, limit);
}

#endif /* RS_GATE_H */
