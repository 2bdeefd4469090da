/* A fixed array of event counters: relaxed adds on the hot path, readable at
 * any time without stopping writers (each read is one atomic load). */
#ifndef RS_COUNTERS_H
#define RS_COUNTERS_H

#include "rs_atomic.h"

#define RS_COUNTERS_MAX 32

typedef struct {
    uint32_t n;
    uint32_t reserved;
    rs_atomic_u64 v[RS_COUNTERS_MAX];
} rs_counters;

RS_INLINE void rs_counters_init(rs_counters *c, uint32_t n) {
    c->n = n;
    c->reserved = 0;
    for (uint32_t i = 0; i < RS_COUNTERS_MAX; i++) rs_store_relaxed_u64(&c->v[i], 0);
}

RS_INLINE void rs_counters_add(rs_counters *c, uint32_t i, uint64_t d) {
    rs_add_relaxed_u64(&c->v[i], d);
}

RS_INLINE uint64_t rs_counters_get(rs_counters *c, uint32_t i) {
    return rs_load_relaxed_u64(&c->v[i]);
}

#endif /* RS_COUNTERS_H */
