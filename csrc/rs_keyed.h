/* Keyed token buckets in fixed memory: one GCRA bucket per client key.
 *
 * Header-only C11 (<stdatomic.h> through rs_atomic.h), no Python.h, no
 * pointers inside the structs: a table may live in a shared mapping and be
 * used by several processes at once. Lock-free: no mutex, and no loop waits
 * for another thread without a bound (a stalled or killed thread costs the
 * others at most RS_KEYED_SPIN reloads per slot, never progress).
 *
 * Layout. A header, then `capacity` entries of 32 bytes whatever the key
 * length: the table keeps the key's 128-bit SipHash-2-4 fingerprint under a
 * per-table secret (rs_siphash.h), never the key bytes, so a client choosing
 * keys can neither aim collisions nor pile keys onto one probe window.
 * 1,000,000 keys take 32 MiB. Keys of any length are hashed here; the Python
 * layer refuses keys longer than RS_KEYED_MAX_KEY bytes.
 *
 * Slot. home = ((fp0 >> 32) * capacity) >> 32 (portable: no 128-bit type;
 * hence capacity <= 2^32 - 1). A key lives in the window home, home+1, ...
 * (mod capacity) of `probe` = min(capacity, 16) slots.
 *
 * Entry words.
 *   seq  0 = never used (entries never go back to 0, so a lookup that meets
 *        a 0 knows its key is not further on). Otherwise
 *        (tag << 32) | (gen << 1) | busy, where tag = fp1 >> 32 of the key
 *        the entry holds (or is being written for), gen (1 .. 2^31-1) counts
 *        reuses of the slot and busy (odd) means a writer owns the entry.
 *        Putting the tag in the word a writer claims is what lets a lookup
 *        that meets a busy entry know at once whether its own key is being
 *        written there: other keys skip it without waiting, and the key's
 *        own lookups help the writer instead of inserting the key again.
 *   fp0, fp1  the fingerprint; written only while seq is busy, published by
 *        the release store of the ready (even) seq. Read as a seqlock.
 *   tat  the GCRA word of rs_token_bucket.h (time the bucket is full again;
 *        <= now means full). Two reserved ranges never reached by a real
 *        tat (every tat a decision can produce is < 2^59 + 2^61):
 *          RS_KEYED_FRESH(g) = INT64_MIN + g   full bucket of generation g,
 *                                              unique per reuse (defeats ABA);
 *          RS_KEYED_SENT(g)  = 2^62 + g        sentinel: the slot is being
 *                                              (re)written for generation g.
 *        A never-used entry holds SENT(1).
 *
 * Decisions. The GCRA arithmetic is rs_gcra_step / rs_gcra_refund /
 * rs_gcra_available of rs_token_bucket.h, run on a private copy of the tat
 * (an atomic on the stack); the result is then installed with our own CAS on
 * the entry's tat, from the value the decision was made on. That way a
 * decision never runs on a sentinel (rs_gcra_step reloads the word after a
 * failed CAS and would happily compute on, and overwrite, a sentinel) and we
 * know the exact value every decision was made on.
 *
 * Lookup of key K (fingerprint fp, tag): scan the window:
 *   - seq 0: K is absent. Insert here: CAS seq 0 -> busy(tag, gen 1), write
 *     fp, install K's first tat (the result of this very request on a full
 *     bucket) by CAS SENT(1) -> tat, release-store seq = ready.
 *   - seq with another tag: another key's entry; next slot (no fp read).
 *   - busy with K's tag: K is being inserted here by another thread. Spin
 *     (bounded) for the writer to publish; if it does not, help it: CAS tat
 *     SENT(g) -> FRESH(g), then decide on that entry. The writer's own CAS
 *     from SENT(g) then fails and it decides on what the helpers left. K is
 *     therefore never inserted twice just because a writer got preempted.
 *   - ready with K's tag: compare fp0/fp1 under the seqlock (acquire loads,
 *     re-read seq). On a match read tat and re-read seq; a sentinel means the
 *     entry is being taken from K: spin (bounded) then skip it.
 * If the window has neither K nor a never-used slot, take one: the first
 * entry whose tat <= now (full: no information lost); if none,
 *   RS_KEYED_EVICT: the entry with the smallest tat (nearest to full; first
 *     in window order on ties), counted in `evicted`;
 *   RS_KEYED_REJECT: refuse, wait = smallest tat - now (the time until a slot
 *     of the window is reclaimable), change nothing.
 * Taking entry e (validated at seq s, tat v) for K: CAS tat v -> SENT(g),
 * g = next gen (deciders, whose CAS expects a real value, now fail and look
 * again); re-read seq: if it is not s the slot was reused meanwhile and only
 * happens to hold v: CAS the sentinel back to v and rescan. Else store
 * busy(K's tag, g), write fp, CAS SENT(g) -> K's first tat, store ready.
 *
 * After a decision made on entry e, seq is re-read: if the entry changed
 * generation meanwhile, the charge landed on the entry's next occupant
 * (whose tat happened to equal the value we decided on). That only ever
 * makes the other key stricter, never looser; we then look K up again.
 *
 * Guarantee. While a key keeps its entry (capacity suffices: no reclaim or
 * eviction of it), its admitted tokens over any set of decisions are
 * <= burst + (max now - min now) / interval, exactly as one rs_bucket, under
 * any interleaving and any preemption of threads.
 * Known imprecisions, all confined to tables that churn (entries reclaimed
 * or evicted) and to rare races, each costing at most one bucket's burst:
 *   - two threads inserting the same new key into a full window at the same
 *     instant with different clocks may take two different slots; the copy
 *     later in the window is never looked up again and its first charge is
 *     forgotten;
 *   - a refund racing with the reclaim of its key's entry can be credited to
 *     the new occupant if that occupant's tat equals the refunded key's;
 *   - a thread stalled between taking a slot and re-reading its seq, when the
 *     slot was reused and its tat equals the stale value (ABA), holds a
 *     sentinel on another key's entry until it resumes; that key's lookups
 *     skip the entry meanwhile and may re-insert the key elsewhere;
 *   - a busy entry is matched on its 32-bit tag alone while its writer is
 *     stalled (probability 2^-32 of deciding on a different key then).
 * A writer killed while it owned an entry (shared memory) leaves that one
 * slot unusable for other keys; lookups of the key it was writing help and
 * keep using it.
 *
 * Preconditions (the Python layer checks them): 1 <= interval_ns,
 * 1 <= burst, burst * interval_ns <= RS_KEYED_MAX_TOLERANCE (2^60 ns),
 * 1 <= capacity <= 2^32 - 1, 0 <= now_ns < RS_KEYED_MAX_NOW (2^59),
 * 1 <= n <= burst. max_wait_ns is clamped to [0, RS_KEYED_MAX_WAIT].
 * Initialise a shared table once (rs_keyed_init) before other threads or
 * processes use it; attaching processes only need the same bytes.
 */
#ifndef RS_KEYED_H
#define RS_KEYED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rs_atomic.h"
#include "rs_siphash.h"
#include "rs_token_bucket.h"

#if ATOMIC_LLONG_LOCK_FREE != 2
#error "rs_keyed needs always-lock-free 64-bit atomics (tables may live in shared memory)"
#endif

typedef struct {
    rs_atomic_u64 seq;
    rs_atomic_u64 fp0;
    rs_atomic_u64 fp1;
    rs_atomic_i64 tat;
} rs_keyed_entry; /* 32 bytes */

typedef struct {
    int64_t interval_ns; /* ns per token, >= 1 */
    int64_t burst;       /* tokens per key, >= 1 */
    uint64_t capacity;   /* entries, 1 .. 2^32-1 */
    uint32_t on_full;    /* RS_KEYED_EVICT or RS_KEYED_REJECT */
    uint32_t probe;      /* probe window length: min(capacity, RS_KEYED_PROBE) */
    uint8_t secret[16];  /* SipHash key */
    rs_atomic_u64 admitted, rejected, evicted, inserted;
    rs_keyed_entry entries[]; /* capacity entries */
} rs_keyed;

_Static_assert(sizeof(rs_keyed_entry) == 32, "rs_keyed_entry must be 32 bytes");

#define RS_KEYED_EVICT 0  /* table full of live keys: evict the entry nearest to full */
#define RS_KEYED_REJECT 1 /* table full of live keys: refuse the new key */

#define RS_KEYED_PROBE 16u
#define RS_KEYED_MAX_KEY 64 /* enforced by the Python layer */
#define RS_KEYED_MAX_CAPACITY UINT64_C(0xFFFFFFFF)
#define RS_KEYED_MAX_NOW (INT64_C(1) << 59)
#define RS_KEYED_MAX_TOLERANCE (INT64_C(1) << 60)
#define RS_KEYED_MAX_WAIT (INT64_C(1) << 60)
#define RS_KEYED_GEN_MAX UINT32_C(0x7FFFFFFF)
#define RS_KEYED_SENT_BASE (INT64_C(1) << 62)
#define RS_KEYED_FRESH(g) (INT64_MIN + (int64_t)(g))
#define RS_KEYED_SENT(g) (RS_KEYED_SENT_BASE + (int64_t)(g))
/* Reloads spent waiting on one slot held by another thread before helping or
 * skipping it. */
#define RS_KEYED_SPIN 64u
/* Lookups one operation may restart because other threads changed the
 * window under it; past that it refuses (wait = one interval). */
#define RS_KEYED_ROUNDS 256u

/* Test hook: the points where a thread that owns an entry (or is taking
 * one) could be preempted. Stress tests define it to stall there, to drive
 * the helping and skipping paths; it compiles to nothing otherwise. */
#ifndef RS_KEYED_STALL_POINT
#define RS_KEYED_STALL_POINT() ((void)0)
#endif

/* ---- small helpers ------------------------------------------------------ */

RS_INLINE uint64_t rs_keyed_seq_make(uint64_t tag, uint32_t gen, uint64_t busy) {
    return (tag << 32) | ((uint64_t)gen << 1) | busy;
}
RS_INLINE uint32_t rs_keyed_seq_gen(uint64_t s) { return (uint32_t)(s >> 1) & RS_KEYED_GEN_MAX; }
RS_INLINE uint32_t rs_keyed_next_gen(uint32_t g) { return g >= RS_KEYED_GEN_MAX ? 1u : g + 1u; }
RS_INLINE bool rs_keyed_is_sent(int64_t tat) { return tat >= RS_KEYED_SENT_BASE; }
/* Same generation of the same entry: s is tok, or tok's busy/ready twin. */
RS_INLINE bool rs_keyed_same_gen(uint64_t s, uint64_t tok) { return (s | 1u) == (tok | 1u); }

RS_INLINE uint64_t rs_keyed_home(uint64_t fp0, uint64_t capacity) {
    return ((fp0 >> 32) * capacity) >> 32; /* capacity < 2^32: no overflow */
}

/* Bytes needed for a table of `capacity` entries (0 if that overflows). */
RS_INLINE size_t rs_keyed_size(uint64_t capacity) {
    if (capacity > (SIZE_MAX - sizeof(rs_keyed)) / sizeof(rs_keyed_entry)) return 0;
    return sizeof(rs_keyed) + (size_t)capacity * sizeof(rs_keyed_entry);
}

/* 0 when the arguments meet the preconditions above, else -1. */
RS_INLINE int rs_keyed_check(int64_t interval_ns, int64_t burst, uint64_t capacity,
                             uint32_t on_full) {
    if (interval_ns < 1 || burst < 1) return -1;
    if (burst > RS_KEYED_MAX_TOLERANCE / interval_ns) return -1;
    if (capacity < 1 || capacity > RS_KEYED_MAX_CAPACITY) return -1;
    if (on_full != RS_KEYED_EVICT && on_full != RS_KEYED_REJECT) return -1;
    return 0;
}

RS_INLINE void rs_keyed_init(rs_keyed *t, int64_t interval_ns, int64_t burst, uint64_t capacity,
                             const uint8_t secret[16], uint32_t on_full) {
    t->interval_ns = interval_ns;
    t->burst = burst;
    t->capacity = capacity;
    t->on_full = on_full;
    t->probe = capacity < RS_KEYED_PROBE ? (uint32_t)capacity : RS_KEYED_PROBE;
    for (int i = 0; i < 16; i++) t->secret[i] = secret[i];
    /* Relaxed stores throughout: the table is not shared yet; whoever shares
     * it (thread start, a flag in the mapping) provides the ordering. */
    rs_store_relaxed_u64(&t->admitted, 0);
    rs_store_relaxed_u64(&t->rejected, 0);
    rs_store_relaxed_u64(&t->evicted, 0);
    rs_store_relaxed_u64(&t->inserted, 0);
    for (uint64_t i = 0; i < capacity; i++) {
        rs_keyed_entry *e = &t->entries[i];
        rs_store_relaxed_u64(&e->seq, 0);
        rs_store_relaxed_u64(&e->fp0, 0);
        rs_store_relaxed_u64(&e->fp1, 0);
        rs_store_relaxed_i64(&e->tat, RS_KEYED_SENT(1)); /* what gen 1's writer expects */
    }
}

/* ---- internals ------------------------------------------------------------ */

typedef struct {
    uint64_t fp0, fp1, tag, home;
    int64_t now, n, max_wait;
    bool insert;
} rs_keyed_req;

typedef struct {
    rs_keyed_entry *e;
    uint64_t tok; /* seq word the entry was validated under */
    int64_t tat;  /* tat read under that validation */
} rs_keyed_hit;

enum {
    RS_KEYED_R_NEXT,    /* not this slot */
    RS_KEYED_R_EMPTY,   /* never-used slot met: the key is absent */
    RS_KEYED_R_FOUND,   /* hit filled: decide on it */
    RS_KEYED_R_DECIDED, /* inserted with this request's charge: *out holds the result */
    RS_KEYED_R_FULL,    /* REJECT policy, window full of live keys: *out = wait */
    RS_KEYED_R_RETRY    /* the window changed under us: look again */
};

/* GCRA decision on a private copy of tat: returns rs_gcra_step's result and
 * the tat it would install in *next (unchanged on a refusal). */
RS_INLINE int64_t rs_keyed_step(const rs_keyed *t, int64_t tat, const rs_keyed_req *q,
                                int64_t *next) {
    rs_atomic_i64 scratch;
    rs_store_relaxed_i64(&scratch, tat); /* relaxed: private to this call */
    int64_t r = rs_gcra_step(&scratch, t->interval_ns, t->burst, q->now, q->n, q->max_wait);
    *next = rs_load_relaxed_i64(&scratch); /* relaxed: private to this call */
    return r;
}

/* Finish writing an entry we own (seq == busy, tat == SENT(gen)): the
 * fingerprint, then the key's first tat (this request decided on a full
 * bucket), then the ready seq. Returns true with *out when that first charge
 * went in; false (hit filled) when helpers installed a tat first. */
RS_INLINE bool rs_keyed_publish(rs_keyed *t, rs_keyed_entry *e, uint64_t busy,
                                const rs_keyed_req *q, rs_keyed_hit *h, int64_t *out) {
    uint32_t g = rs_keyed_seq_gen(busy);
    /* release: a reader that loads the new fp also sees our busy seq, so its
     * seqlock re-check fails */
    rs_store_release_u64(&e->fp0, q->fp0);
    rs_store_release_u64(&e->fp1, q->fp1); /* release: as for fp0 */
    RS_KEYED_STALL_POINT();
    int64_t first;
    int64_t r = rs_keyed_step(t, RS_KEYED_FRESH(g), q, &first);
    int64_t expected = RS_KEYED_SENT(g);
    /* acq_rel: installs the key's bucket for deciders; fails when a helper
     * already installed FRESH(g) (and perhaps charged it): keep theirs */
    bool ours = rs_cas_strong_acq_rel_i64(&e->tat, &expected, first);
    rs_store_release_u64(&e->seq, busy ^ 1u); /* release: publishes fp and tat to seq readers */
    if (ours) {
        *out = r;
        return true;
    }
    h->e = e;
    h->tok = busy ^ 1u;
    h->tat = expected;
    return false;
}

/* Help a writer stalled on an entry that carries our tag: install the fresh
 * bucket it was about to install, so we can decide on the entry now. */
RS_INLINE int rs_keyed_help(rs_keyed_entry *e, uint64_t s, rs_keyed_hit *h) {
    uint32_t g = rs_keyed_seq_gen(s);
    /* acquire: the busy seq we saw was release-stored after the writer's
     * sentinel, so we see SENT(g) or a later value */
    int64_t v = rs_load_acquire_i64(&e->tat);
    if (v == RS_KEYED_SENT(g)) {
        int64_t expected = v;
        /* acq_rel: publishes the fresh bucket to the writer and other helpers */
        v = rs_cas_strong_acq_rel_i64(&e->tat, &expected, RS_KEYED_FRESH(g)) ? RS_KEYED_FRESH(g)
                                                                             : expected;
    }
    if (rs_keyed_is_sent(v)) return RS_KEYED_R_NEXT; /* someone else's stale claim: skip */
    h->e = e;
    h->tok = s;
    h->tat = v;
    return RS_KEYED_R_FOUND;
}

/* Look at one slot for the key of q. With q->insert, a never-used slot is
 * claimed and the key inserted there (R_DECIDED or R_FOUND). */
RS_INLINE int rs_keyed_examine(rs_keyed *t, rs_keyed_entry *e, const rs_keyed_req *q,
                               rs_keyed_hit *h, int64_t *out) {
    unsigned spins = 0;
    /* acquire: pairs with the release store that made this seq value, so the
     * fp and tat written before it are visible */
    uint64_t s = rs_load_acquire_u64(&e->seq);
    for (;;) {
        if (s == 0) {
            if (!q->insert) return RS_KEYED_R_EMPTY;
            uint64_t busy = rs_keyed_seq_make(q->tag, 1, 1);
            uint64_t expected = 0;
            /* acq_rel: claims the slot; on failure we see what the winner wrote */
            if (rs_cas_strong_acq_rel_u64(&e->seq, &expected, busy)) {
                RS_KEYED_STALL_POINT();
                rs_add_relaxed_u64(&t->inserted, 1); /* relaxed: a tally */
                return rs_keyed_publish(t, e, busy, q, h, out) ? RS_KEYED_R_DECIDED
                                                               : RS_KEYED_R_FOUND;
            }
            s = expected;
            continue;
        }
        if ((s >> 32) != q->tag) return RS_KEYED_R_NEXT; /* another key, settled or in writing */
        if (s & 1u) {
            /* Our tag is being written here: most likely our key, by another
             * thread. Wait a little for it, then help rather than skip (a
             * skip would insert the key a second time further on). */
            uint64_t s2 = rs_load_acquire_u64(&e->seq); /* acquire: as above */
            if (s2 != s) {
                s = s2;
                continue;
            }
            if (++spins < RS_KEYED_SPIN) continue;
            int r = rs_keyed_help(e, s, h);
            if (r == RS_KEYED_R_NEXT) return r;
            s2 = rs_load_acquire_u64(&e->seq); /* acquire: validates the tat read by help */
            if (rs_keyed_same_gen(s2, s)) return r;
            s = s2;
            continue;
        }
        /* acquire (both): a fp written by a later writer carries its busy seq */
        uint64_t f0 = rs_load_acquire_u64(&e->fp0);
        uint64_t f1 = rs_load_acquire_u64(&e->fp1); /* acquire: as fp0 */
        uint64_t s2 = rs_load_acquire_u64(&e->seq); /* acquire: seqlock re-check after the reads */
        if (s2 != s) {
            s = s2;
            continue;
        }
        if (f0 != q->fp0 || f1 != q->fp1) return RS_KEYED_R_NEXT;
        /* acquire: a tat installed under a later generation carries that
         * generation's seq, which the re-check below then sees */
        int64_t v = rs_load_acquire_i64(&e->tat);
        s2 = rs_load_acquire_u64(&e->seq); /* acquire: re-check after reading tat */
        if (s2 != s) {
            s = s2;
            continue;
        }
        if (rs_keyed_is_sent(v)) {
            /* the entry is being taken from our key (or a stale claim is
             * about to be undone): wait a little, then treat it as gone */
            if (++spins < RS_KEYED_SPIN) {
                s = rs_load_acquire_u64(&e->seq); /* acquire: as above */
                continue;
            }
            return RS_KEYED_R_NEXT;
        }
        h->e = e;
        h->tok = s;
        h->tat = v;
        return RS_KEYED_R_FOUND;
    }
}

/* Take entry e (validated at seq s with tat v) for the key of q. */
RS_INLINE int rs_keyed_claim(rs_keyed *t, rs_keyed_entry *e, uint64_t s, int64_t v, bool evict,
                             const rs_keyed_req *q, rs_keyed_hit *h, int64_t *out) {
    uint32_t g = rs_keyed_next_gen(rs_keyed_seq_gen(s));
    int64_t expected = v;
    /* acq_rel: taking the slot is atomic against deciders' CAS on this word
     * (they expect a real value and fail on the sentinel) */
    if (!rs_cas_strong_acq_rel_i64(&e->tat, &expected, RS_KEYED_SENT(g))) return RS_KEYED_R_RETRY;
    RS_KEYED_STALL_POINT();
    /* acquire: after our CAS read the latest tat, this sees the seq of whoever
     * wrote that tat (a reused slot shows its new generation) */
    if (rs_load_acquire_u64(&e->seq) != s) {
        /* ABA: the slot was reused and its tat merely equals v: undo */
        expected = RS_KEYED_SENT(g);
        rs_cas_strong_acq_rel_i64(&e->tat, &expected, v); /* acq_rel: as above */
        return RS_KEYED_R_RETRY;
    }
    uint64_t busy = rs_keyed_seq_make(q->tag, g, 1);
    /* release: a helper that sees this busy word also sees our SENT(g) */
    rs_store_release_u64(&e->seq, busy);
    RS_KEYED_STALL_POINT();
    rs_add_relaxed_u64(&t->inserted, 1); /* relaxed: a tally */
    if (evict) rs_add_relaxed_u64(&t->evicted, 1); /* relaxed: a tally */
    return rs_keyed_publish(t, e, busy, q, h, out) ? RS_KEYED_R_DECIDED : RS_KEYED_R_FOUND;
}

/* The window holds neither the key nor a never-used slot: reclaim, evict or
 * refuse. */
RS_INLINE int rs_keyed_take(rs_keyed *t, const rs_keyed_req *q, rs_keyed_hit *h, int64_t *out) {
    rs_keyed_entry *reclaim = NULL, *victim = NULL;
    uint64_t reclaim_s = 0, victim_s = 0;
    int64_t reclaim_v = 0, victim_v = 0;
    uint64_t idx = q->home;
    for (uint32_t i = 0; i < t->probe; i++) {
        rs_keyed_entry *e = &t->entries[idx];
        idx = idx + 1 == t->capacity ? 0 : idx + 1;
        unsigned spins = 0;
        uint64_t s = rs_load_acquire_u64(&e->seq); /* acquire: as in examine */
        for (;;) {
            if (s == 0) return RS_KEYED_R_RETRY; /* was used a moment ago: cannot be */
            if (s & 1u) {
                /* being written: for our key means it is there now */
                if ((s >> 32) == q->tag) return RS_KEYED_R_RETRY;
                break;
            }
            bool ours = false;
            if ((s >> 32) == q->tag) {
                uint64_t f0 = rs_load_acquire_u64(&e->fp0); /* acquire: seqlock read */
                uint64_t f1 = rs_load_acquire_u64(&e->fp1); /* acquire: seqlock read */
                ours = f0 == q->fp0 && f1 == q->fp1;
            }
            int64_t v = rs_load_acquire_i64(&e->tat); /* acquire: as in examine */
            uint64_t s2 = rs_load_acquire_u64(&e->seq); /* acquire: seqlock re-check */
            if (s2 != s) {
                s = s2;
                continue;
            }
            if (rs_keyed_is_sent(v)) {
                /* someone is taking it (from our key, if ours), maybe for our
                 * key: wait for its tag, then leave it out */
                if (++spins < RS_KEYED_SPIN) {
                    s = rs_load_acquire_u64(&e->seq); /* acquire: as above */
                    continue;
                }
                break;
            }
            if (ours) return RS_KEYED_R_RETRY; /* our key was inserted meanwhile */
            if (v <= q->now) {
                if (!reclaim) {
                    reclaim = e;
                    reclaim_s = s;
                    reclaim_v = v;
                }
            } else if (!victim || v < victim_v) {
                victim = e;
                victim_s = s;
                victim_v = v;
            }
            break;
        }
    }
    if (reclaim) return rs_keyed_claim(t, reclaim, reclaim_s, reclaim_v, false, q, h, out);
    if (!victim) return RS_KEYED_R_RETRY; /* every slot in transition */
    if (t->on_full == RS_KEYED_REJECT) {
        *out = victim_v - q->now;
        return RS_KEYED_R_FULL;
    }
    return rs_keyed_claim(t, victim, victim_s, victim_v, true, q, h, out);
}

/* Find the key of q in its window (inserting it when q->insert). */
RS_INLINE int rs_keyed_find(rs_keyed *t, const rs_keyed_req *q, rs_keyed_hit *h, int64_t *out) {
    uint64_t idx = q->home;
    for (uint32_t i = 0; i < t->probe; i++) {
        int r = rs_keyed_examine(t, &t->entries[idx], q, h, out);
        if (r != RS_KEYED_R_NEXT) return r;
        idx = idx + 1 == t->capacity ? 0 : idx + 1;
    }
    if (!q->insert) return RS_KEYED_R_EMPTY;
    return rs_keyed_take(t, q, h, out);
}

/* GCRA decision on a found entry. Returns true with *out, or false when the
 * entry changed generation under us (look the key up again). */
RS_INLINE bool rs_keyed_decide(rs_keyed *t, const rs_keyed_hit *h, const rs_keyed_req *q,
                               int64_t *out) {
    rs_keyed_entry *e = h->e;
    int64_t v = h->tat;
    for (;;) {
        /* a sentinel is never decided on (publish can hand us one when a
         * stale claim hit a busy entry): look again */
        if (rs_keyed_is_sent(v)) return false;
        int64_t next;
        int64_t r = rs_keyed_step(t, v, q, &next);
        if (r < 0) { /* a refusal changes nothing; v is our key's validated tat */
            *out = r;
            return true;
        }
        /* acq_rel: our charge is the new state; on failure we acquire the
         * value that beat us. Weak: we loop. */
        if (rs_cas_acq_rel_i64(&e->tat, &v, next)) {
            /* acquire: a reuse of the slot before our CAS shows here */
            if (rs_keyed_same_gen(rs_load_acquire_u64(&e->seq), h->tok)) {
                *out = r;
                return true;
            }
            return false; /* charged the next occupant (stricter for it): retry ours */
        }
        /* acquire: validates v, the value another thread installed */
        if (!rs_keyed_same_gen(rs_load_acquire_u64(&e->seq), h->tok)) return false;
    }
}

RS_INLINE void rs_keyed_req_init(rs_keyed *t, rs_keyed_req *q, const uint8_t *key, size_t len,
                                 int64_t now_ns) {
    uint64_t fp[2];
    rs_siphash128(key, len, t->secret, fp);
    q->fp0 = fp[0];
    q->fp1 = fp[1];
    q->tag = fp[1] >> 32;
    q->home = rs_keyed_home(fp[0], t->capacity);
    q->now = now_ns;
    q->n = 1;
    q->max_wait = 0;
    q->insert = false;
}

/* >= 0: admitted with that wait; < 0: refused, -(wait needed). */
RS_INLINE int64_t rs_keyed_acquire(rs_keyed *t, rs_keyed_req *q) {
    q->insert = true;
    for (unsigned round = 0; round < RS_KEYED_ROUNDS; round++) {
        rs_keyed_hit h;
        int64_t out = 0;
        int r = rs_keyed_find(t, q, &h, &out);
        if (r == RS_KEYED_R_DECIDED) return out;
        if (r == RS_KEYED_R_FULL) return -out;
        if (r == RS_KEYED_R_FOUND && rs_keyed_decide(t, &h, q, &out)) return out;
    }
    return -t->interval_ns; /* the window kept changing under us: refuse, retry soon */
}

/* ---- public API -------------------------------------------------------------- */

/* Admit n tokens for key now or not at all: 0 when admitted, else the wait
 * in ns (> 0). */
RS_INLINE int64_t rs_keyed_try_acquire(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns,
                                       int64_t n) {
    rs_keyed_req q;
    rs_keyed_req_init(t, &q, key, len, now_ns);
    q.n = n;
    int64_t r = rs_keyed_acquire(t, &q);
    if (r == 0) {
        rs_add_relaxed_u64(&t->admitted, 1); /* relaxed: a tally */
        return 0;
    }
    rs_add_relaxed_u64(&t->rejected, 1); /* relaxed: a tally */
    return -r;
}

/* Reserve n tokens for key usable within max_wait_ns: the wait (>= 0) when
 * admitted, -(wait needed) (< 0) when refused. */
RS_INLINE int64_t rs_keyed_reserve(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns,
                                   int64_t n, int64_t max_wait_ns) {
    rs_keyed_req q;
    rs_keyed_req_init(t, &q, key, len, now_ns);
    q.n = n;
    q.max_wait = max_wait_ns < 0                   ? 0
                 : max_wait_ns > RS_KEYED_MAX_WAIT ? RS_KEYED_MAX_WAIT
                                                   : max_wait_ns;
    int64_t r = rs_keyed_acquire(t, &q);
    if (r >= 0)
        rs_add_relaxed_u64(&t->admitted, 1); /* relaxed: a tally */
    else
        rs_add_relaxed_u64(&t->rejected, 1); /* relaxed: a tally */
    return r;
}

/* Give back n tokens of an unused reservation. No-op for an unknown key;
 * never raises a bucket above full. */
RS_INLINE void rs_keyed_refund(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns,
                               int64_t n) {
    rs_keyed_req q;
    rs_keyed_req_init(t, &q, key, len, now_ns);
    for (unsigned round = 0; round < RS_KEYED_ROUNDS; round++) {
        rs_keyed_hit h;
        int64_t out;
        if (rs_keyed_find(t, &q, &h, &out) != RS_KEYED_R_FOUND) return;
        rs_keyed_entry *e = h.e;
        int64_t v = h.tat;
        for (;;) {
            rs_atomic_i64 scratch;
            rs_store_relaxed_i64(&scratch, v); /* relaxed: private to this call */
            rs_gcra_refund(&scratch, t->interval_ns, n, now_ns);
            int64_t next = rs_load_relaxed_i64(&scratch); /* relaxed: private */
            if (next == v) return; /* already full */
            /* acq_rel: as in decide. Weak: we loop. */
            if (rs_cas_acq_rel_i64(&e->tat, &v, next)) return;
            /* acquire: validates v, the value another thread installed */
            if (rs_keyed_is_sent(v) || !rs_keyed_same_gen(rs_load_acquire_u64(&e->seq), h.tok))
                break; /* the entry changed hands: look the key up again */
        }
    }
}

/* Whole tokens available to key at now_ns; burst for an unknown key. */
RS_INLINE int64_t rs_keyed_available(rs_keyed *t, const uint8_t *key, size_t len, int64_t now_ns) {
    rs_keyed_req q;
    rs_keyed_req_init(t, &q, key, len, now_ns);
    rs_keyed_hit h;
    int64_t out;
    if (rs_keyed_find(t, &q, &h, &out) != RS_KEYED_R_FOUND) return t->burst;
    return rs_gcra_available(h.tat, t->interval_ns, t->burst, now_ns);
}

/* Entries holding a live (not full) bucket at now_ns. O(capacity): for
 * metrics and tests. */
RS_INLINE uint64_t rs_keyed_count(rs_keyed *t, int64_t now_ns) {
    uint64_t live = 0;
    for (uint64_t i = 0; i < t->capacity; i++) {
        rs_keyed_entry *e = &t->entries[i];
        /* relaxed: a momentary census, nothing is read through these */
        if (rs_load_relaxed_u64(&e->seq) == 0) continue;
        int64_t v = rs_load_relaxed_i64(&e->tat); /* relaxed: as above */
        if (v > now_ns && !rs_keyed_is_sent(v)) live++;
    }
    return live;
}

#endif /* RS_KEYED_H */
