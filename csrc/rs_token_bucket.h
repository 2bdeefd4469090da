/* Token bucket as GCRA on one atomic int64 (the theoretical arrival time).
 *
 * State is a single word `tat`: the time at which the bucket would be full
 * again. A request for n tokens at `now` is admitted when
 *     max(tat, now) + n*interval - burst*interval <= now
 * and moves tat forward by n*interval. `tat <= now` means full. The initial
 * value RS_TAT_FULL is below any clock reading, so the bucket starts full at
 * any clock time, including a fake clock at 0.
 *
 * Exactness: `interval_ns` is the nanoseconds per token, rounded up by the
 * caller (ceil(1e9 / rate)), so the bucket admits at most
 * burst + floor(T / interval) <= burst + rate*T tokens in any interval T.
 *
 * All operations take now_ns; nothing reads a clock. now_ns must be >= 0.
 */
#ifndef RS_TOKEN_BUCKET_H
#define RS_TOKEN_BUCKET_H

#include "rs_atomic.h"

#define RS_TAT_FULL INT64_MIN

typedef struct {
    rs_atomic_i64 tat;
    int64_t interval_ns; /* ns per token, >= 1 */
    int64_t burst;       /* capacity in tokens, >= 1 */
    rs_atomic_u64 admitted;
    rs_atomic_u64 rejected;
} rs_bucket;

RS_INLINE void rs_bucket_init(rs_bucket *b, int64_t interval_ns, int64_t burst) {
    b->interval_ns = interval_ns;
    b->burst = burst;
    rs_store_relaxed_i64(&b->tat, RS_TAT_FULL);
    rs_store_relaxed_u64(&b->admitted, 0);
    rs_store_relaxed_u64(&b->rejected, 0);
}

/* One GCRA decision on a tat word. Shared by the single bucket and the keyed
 * table so both have exactly the same arithmetic.
 *
 * Admits when the wait (time until the request could be admitted without a
 * wait) is <= max_wait_ns. Returns the wait (>= 0) when admitted, or
 * -(wait) (< 0) when refused; a refusal changes nothing. *observed receives
 * the tat value the decision was made on (the keyed table uses it). */
RS_INLINE int64_t rs_gcra_step(rs_atomic_i64 *tat_word, int64_t interval_ns, int64_t burst,
                               int64_t now_ns, int64_t n, int64_t max_wait_ns) {
    int64_t tat = rs_load_acquire_i64(tat_word);
    int64_t cost = n * interval_ns;
    int64_t tolerance = burst * interval_ns;
    for (;;) {
        int64_t base = tat > now_ns ? tat : now_ns;
        int64_t new_tat = base + cost;
        int64_t wait = new_tat - tolerance - now_ns;
        if (wait < 0) wait = 0;
        if (wait > max_wait_ns) return -wait;
        if (rs_cas_acq_rel_i64(tat_word, &tat, new_tat)) return wait;
        /* tat now holds the value another thread installed; decide again. */
    }
}

/* Admit n tokens now or not at all. Returns 0 when admitted, else the
 * nanoseconds until n tokens would be available. */
RS_INLINE int64_t rs_bucket_try_acquire(rs_bucket *b, int64_t now_ns, int64_t n) {
    int64_t r = rs_gcra_step(&b->tat, b->interval_ns, b->burst, now_ns, n, 0);
    if (r == 0) {
        rs_add_relaxed_u64(&b->admitted, 1);
        return 0;
    }
    rs_add_relaxed_u64(&b->rejected, 1);
    return -r;
}

/* Reserve n tokens if they are available within max_wait_ns. Returns the
 * wait (>= 0) the caller must sleep before using them, or -(wait needed)
 * (< 0) when refused. */
RS_INLINE int64_t rs_bucket_reserve(rs_bucket *b, int64_t now_ns, int64_t n,
                                    int64_t max_wait_ns) {
    int64_t r = rs_gcra_step(&b->tat, b->interval_ns, b->burst, now_ns, n, max_wait_ns);
    if (r >= 0)
        rs_add_relaxed_u64(&b->admitted, 1);
    else
        rs_add_relaxed_u64(&b->rejected, 1);
    return r;
}

/* Give back n tokens of a reservation that was never used (a cancelled
 * waiter). Never raises the bucket above full. */
RS_INLINE void rs_gcra_refund(rs_atomic_i64 *tat_word, int64_t interval_ns, int64_t n,
                              int64_t now_ns) {
    int64_t tat = rs_load_acquire_i64(tat_word);
    int64_t cost = n * interval_ns;
    for (;;) {
        if (tat <= now_ns) return; /* already full: nothing to give back */
        int64_t new_tat = tat - cost;
        if (new_tat < now_ns) new_tat = now_ns;
        if (rs_cas_acq_rel_i64(tat_word, &tat, new_tat)) return;
    }
}

RS_INLINE void rs_bucket_refund(rs_bucket *b, int64_t now_ns, int64_t n) {
    rs_gcra_refund(&b->tat, b->interval_ns, n, now_ns);
}

/* Whole tokens available at now_ns (0..burst). */
RS_INLINE int64_t rs_gcra_available(int64_t tat, int64_t interval_ns, int64_t burst,
                                    int64_t now_ns) {
    if (tat <= now_ns) return burst;
    int64_t debt = tat - now_ns; /* > 0 */
    int64_t free_ns = burst * interval_ns - debt;
    if (free_ns <= 0) return 0;
    return free_ns / interval_ns;
}

RS_INLINE int64_t rs_bucket_available(rs_bucket *b, int64_t now_ns) {
    return rs_gcra_available(rs_load_acquire_i64(&b->tat), b->interval_ns, b->burst, now_ns);
}

#endif /* RS_TOKEN_BUCKET_H */
