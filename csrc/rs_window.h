/* Sliding windows of call outcomes.
 *
 * Time window: `nbuckets` buckets of `width_ns` each. Every counter word
 * packs (bucket index tag << 32 | count): a word whose tag is not the bucket
 * index being written is stale and restarts at 1, so buckets reset lazily
 * with one CAS and no lock, and a reader ignores words whose tag lies outside
 * the window. Tags are the low 32 bits of now_ns / width_ns; a slot would
 * have to sit untouched for 2^32 buckets (49 days at 1 ms buckets) to alias.
 *
 * Count window: the last `size` outcomes in a ring; each slot is exchanged
 * atomically and the running totals are adjusted by the difference between
 * the outcome written and the one it replaced, so totals stay exact under
 * concurrency once every writer has finished.
 *
 * now_ns must be >= 0. Nothing here reads a clock.
 */
#ifndef RS_WINDOW_H
#define RS_WINDOW_H

#include "rs_atomic.h"

#define RS_WINDOW_MAX_BUCKETS 64
#define RS_COUNT_WINDOW_MAX 1024

#define RS_OUTCOME_FAILURE 1u
#define RS_OUTCOME_SLOW 2u

typedef struct {
    rs_atomic_u64 calls;
    rs_atomic_u64 failures;
    rs_atomic_u64 slow;
} rs_wbucket;

typedef struct {
    int64_t width_ns;
    uint32_t nbuckets;
    uint32_t reserved;
    rs_wbucket buckets[RS_WINDOW_MAX_BUCKETS];
} rs_twindow;

typedef struct {
    uint64_t calls;
    uint64_t failures;
    uint64_t slow;
} rs_wsnapshot;

RS_INLINE void rs_twindow_clear_to(rs_twindow *w, uint32_t tag) {
    uint64_t stale = (uint64_t)tag << 32;
    for (uint32_t i = 0; i < RS_WINDOW_MAX_BUCKETS; i++) {
        rs_exchange_acq_rel_u64(&w->buckets[i].calls, stale);
        rs_exchange_acq_rel_u64(&w->buckets[i].failures, stale);
        rs_exchange_acq_rel_u64(&w->buckets[i].slow, stale);
    }
}

/* duration_ns is split into nbuckets buckets of ceil(duration/nbuckets). */
RS_INLINE void rs_twindow_init(rs_twindow *w, int64_t duration_ns, uint32_t nbuckets) {
    w->nbuckets = nbuckets;
    w->reserved = 0;
    w->width_ns = (duration_ns + (int64_t)nbuckets - 1) / (int64_t)nbuckets;
    /* Tag 0xFFFFFFFF with count 0 reads as empty for any window near 0. */
    rs_twindow_clear_to(w, 0xFFFFFFFFu);
}

/* Add one to a tagged counter word; drop the update if the slot already
 * holds a newer bucket (a caller whose now_ns lags a whole window). */
RS_INLINE void rs_tagged_inc(rs_atomic_u64 *word, uint32_t tag) {
    uint64_t w = rs_load_relaxed_u64(word);
    for (;;) {
        uint32_t wtag = (uint32_t)(w >> 32);
        uint64_t nw;
        if (wtag == tag) {
            if ((uint32_t)w == 0xFFFFFFFFu) return; /* saturated */
            nw = w + 1;
        } else {
            if ((int32_t)(wtag - tag) > 0 && (w & 0xFFFFFFFFu) != 0) return;
            nw = ((uint64_t)tag << 32) | 1u;
        }
        if (rs_cas_acq_rel_u64(word, &w, nw)) return;
    }
}

RS_INLINE void rs_twindow_record(rs_twindow *w, int64_t now_ns, uint32_t outcome) {
    uint64_t idx = (uint64_t)(now_ns / w->width_ns);
    rs_wbucket *b = &w->buckets[idx % w->nbuckets];
    uint32_t tag = (uint32_t)idx;
    /* The call is counted before its failure/slow mark, and a snapshot reads
     * marks before calls, so a snapshot never sees more failures than calls. */
    rs_tagged_inc(&b->calls, tag);
    if (outcome & RS_OUTCOME_FAILURE) rs_tagged_inc(&b->failures, tag);
    if (outcome & RS_OUTCOME_SLOW) rs_tagged_inc(&b->slow, tag);
}

RS_INLINE uint64_t rs_tagged_read(rs_atomic_u64 *word, uint32_t tag) {
    uint64_t v = rs_load_acquire_u64(word);
    return ((uint32_t)(v >> 32) == tag) ? (v & 0xFFFFFFFFu) : 0;
}

RS_INLINE rs_wsnapshot rs_twindow_snapshot(rs_twindow *w, int64_t now_ns) {
    rs_wsnapshot s = {0, 0, 0};
    uint64_t cur = (uint64_t)(now_ns / w->width_ns);
    uint32_t n = w->nbuckets;
    for (uint32_t i = 0; i < n && i <= cur; i++) {
        uint64_t idx = cur - i;
        rs_wbucket *b = &w->buckets[idx % n];
        uint32_t tag = (uint32_t)idx;
        uint64_t f = rs_tagged_read(&b->failures, tag);
        uint64_t sl = rs_tagged_read(&b->slow, tag);
        uint64_t cw = rs_load_acquire_u64(&b->calls);
        /* The marks count only while the bucket's calls word still carries
         * this bucket: a newer bucket that reused the slot restarts the calls
         * word at its first call but the failure/slow words only at its first
         * failure/slow call, so stale marks can outlive their calls. */
        if ((uint32_t)(cw >> 32) != tag) continue;
        s.failures += f;
        s.slow += sl;
        s.calls += cw & 0xFFFFFFFFu;
    }
    return s;
}

/* Forget everything: tag every word with the index one full window back,
 * which no current or future bucket of this window can carry. */
RS_INLINE void rs_twindow_reset(rs_twindow *w, int64_t now_ns) {
    uint64_t cur = (uint64_t)(now_ns / w->width_ns);
    rs_twindow_clear_to(w, (uint32_t)(cur - w->nbuckets));
}

/* ---- count window ---- */

#define RS_SLOT_VALID 4u

typedef struct {
    uint32_t size;
    uint32_t reserved;
    rs_atomic_u64 pos;
    rs_atomic_i64 calls;
    rs_atomic_i64 failures;
    rs_atomic_i64 slow;
    rs_atomic_u64 ring[RS_COUNT_WINDOW_MAX];
} rs_cwindow;

RS_INLINE void rs_cwindow_init(rs_cwindow *w, uint32_t size) {
    w->size = size;
    w->reserved = 0;
    rs_store_relaxed_u64(&w->pos, 0);
    rs_store_relaxed_i64(&w->calls, 0);
    rs_store_relaxed_i64(&w->failures, 0);
    rs_store_relaxed_i64(&w->slow, 0);
    for (uint32_t i = 0; i < RS_COUNT_WINDOW_MAX; i++) rs_store_relaxed_u64(&w->ring[i], 0);
}

/* Apply the difference between the slot's new and old contents. Relaxed:
 * totals are tallies; each slot value is owned by whoever exchanged it. */
RS_INLINE void rs_cwindow_apply(rs_cwindow *w, uint64_t added, uint64_t removed) {
    int64_t dc = (int64_t)((added & RS_SLOT_VALID) != 0) - (int64_t)((removed & RS_SLOT_VALID) != 0);
    int64_t df = (int64_t)((added & RS_OUTCOME_FAILURE) != 0) -
                 (int64_t)((removed & RS_OUTCOME_FAILURE) != 0);
    int64_t ds = (int64_t)((added & RS_OUTCOME_SLOW) != 0) - (int64_t)((removed & RS_OUTCOME_SLOW) != 0);
    if (dc) rs_add_relaxed_i64(&w->calls, dc);
    if (df) rs_add_relaxed_i64(&w->failures, df);
    if (ds) rs_add_relaxed_i64(&w->slow, ds);
}

RS_INLINE void rs_cwindow_record(rs_cwindow *w, uint32_t outcome) {
    uint64_t p = rs_add_relaxed_u64(&w->pos, 1) % w->size;
    uint64_t v = RS_SLOT_VALID | (outcome & (RS_OUTCOME_FAILURE | RS_OUTCOME_SLOW));
    uint64_t old = rs_exchange_acq_rel_u64(&w->ring[p], v);
    rs_cwindow_apply(w, v, old);
}

RS_INLINE rs_wsnapshot rs_cwindow_snapshot(rs_cwindow *w) {
    rs_wsnapshot s;
    int64_t c = rs_load_relaxed_i64(&w->calls);
    int64_t f = rs_load_relaxed_i64(&w->failures);
    int64_t sl = rs_load_relaxed_i64(&w->slow);
    /* Mid-update totals can dip below zero for an instant; clamp. */
    s.calls = c > 0 ? (uint64_t)c : 0;
    s.failures = f > 0 ? (uint64_t)f : 0;
    s.slow = sl > 0 ? (uint64_t)sl : 0;
    return s;
}

RS_INLINE void rs_cwindow_reset(rs_cwindow *w) {
    for (uint32_t i = 0; i < w->size; i++) {
        uint64_t old = rs_exchange_acq_rel_u64(&w->ring[i], 0);
        rs_cwindow_apply(w, 0, old);
    }
}

#endif /* RS_WINDOW_H */
