/* Circuit breaker state machine on one atomic 64-bit state word.
 *
 *   bits  0-1   state: CLOSED, OPEN, HALF_OPEN, ISOLATED
 *   bits  2-5   consecutive opens (saturates at 15; drives break growth)
 *   bits  6-10  half-open probes in flight
 *   bits 11-15  successful probes in this half-open period
 *   bits 16-19  generation (wraps), bumped by every transition
 *   bits 20-63  time in units of 2^16 ns (65.536 us):
 *               CLOSED/ISOLATED: when the state began (identity only)
 *               OPEN:            when the break ends (rounded up: never early)
 *               HALF_OPEN:       when the probe lease expires (rounded up); a
 *                                lease lasts the current break, break_for(opens)
 *
 * Only CLOSED and HALF_OPEN words are handed out as tickets, and their time
 * stays below 2^43 units, so bit 63 is clear and a ticket is >= 0 as an
 * int64_t. An OPEN word's break end may use all 44 bits: it is never early.
 *
 * An admission returns the word it was admitted under as a ticket. The
 * ticket's identity (everything but the probe counts) names the state period;
 * an outcome whose ticket identity no longer matches the word belongs to an
 * earlier period and moves nothing. Every transition is one CAS from a word
 * of that identity, so exactly one caller wins it.
 *
 * OPEN -> HALF_OPEN happens lazily in admit once the break has ended; there
 * is no timer. A probe that never reports (lost task, killed process) blocks
 * the half-open state only until its lease ends, after which the next admit
 * starts a fresh half-open period.
 *
 * now_ns must be in [0, 2^59). Nothing here reads a clock.
 */
#ifndef RS_CIRCUIT_H
#define RS_CIRCUIT_H

#include "rs_atomic.h"
#include "rs_window.h"

#define RS_CS_CLOSED 0u
#define RS_CS_OPEN 1u
#define RS_CS_HALF_OPEN 2u
#define RS_CS_ISOLATED 3u

#define RS_CW_OPENS_SHIFT 2
#define RS_CW_PERMITS_SHIFT 6
#define RS_CW_SUCC_SHIFT 11
#define RS_CW_GEN_SHIFT 16
#define RS_CW_TIME_SHIFT 20
#define RS_CW_UNIT_SHIFT 16 /* time unit = 2^16 ns */
#define RS_CW_MAX_OPENS 15u
#define RS_CW_MAX_PROBES 31u
#define RS_CW_PERMITS_MASK ((uint64_t)0x1F << RS_CW_PERMITS_SHIFT)
#define RS_CW_SUCC_MASK ((uint64_t)0x1F << RS_CW_SUCC_SHIFT)
#define RS_CW_ID_MASK (~(RS_CW_PERMITS_MASK | RS_CW_SUCC_MASK))

/* admit() result for ISOLATED: rejected with no time hint. */
#define RS_ADMIT_ISOLATED INT64_MIN
/* record() result when the outcome caused no transition. */
#define RS_NO_TRANSITION (-1)

typedef struct {
    rs_atomic_u64 word;
    uint64_t failure_ppm;    /* failure ratio in millionths, 1..1000000 */
    uint64_t slow_ppm;       /* slow-call ratio in millionths; > 1000000 disables */
    uint64_t min_throughput; /* calls in the window before ratios count, >= 1 */
    int64_t break_ns;
    int64_t max_break_ns; /* 0: constant break; else doubling up to this */
    uint32_t half_open_calls;
    uint32_t reserved;
    rs_atomic_u64 admitted, rejected, successes, failures, slow;
    rs_atomic_u64 opened, half_opened, closed, isolated, stale;
    rs_twindow window;
} rs_circuit;

RS_INLINE uint32_t rs_cw_state(uint64_t w) { return (uint32_t)(w & 3u); }
RS_INLINE uint32_t rs_cw_opens(uint64_t w) { return (uint32_t)((w >> RS_CW_OPENS_SHIFT) & 0xFu); }
RS_INLINE uint32_t rs_cw_permits(uint64_t w) {
    return (uint32_t)((w >> RS_CW_PERMITS_SHIFT) & 0x1Fu);
}
RS_INLINE uint32_t rs_cw_succ(uint64_t w) { return (uint32_t)((w >> RS_CW_SUCC_SHIFT) & 0x1Fu); }
RS_INLINE uint32_t rs_cw_gen(uint64_t w) { return (uint32_t)((w >> RS_CW_GEN_SHIFT) & 0xFu); }
RS_INLINE int64_t rs_cw_time_ns(uint64_t w) {
    return (int64_t)((w >> RS_CW_TIME_SHIFT) << RS_CW_UNIT_SHIFT);
}

RS_INLINE uint64_t rs_cw_units_floor(int64_t ns) { return (uint64_t)ns >> RS_CW_UNIT_SHIFT; }
/* Probe lease end (a ticket word): saturates at the largest time the word holds
 * with bit 63 clear, so a ticket is always >= 0. Only a lease ending past
 * 2^59 - 2^16 ns (18 years) is cut short, so that it ends at that instant. */
#define RS_CW_MAX_UNITS (((uint64_t)1 << 43) - 1)
RS_INLINE uint64_t rs_cw_units_ceil(int64_t ns) {
    uint64_t u = ((uint64_t)ns + ((1u << RS_CW_UNIT_SHIFT) - 1)) >> RS_CW_UNIT_SHIFT;
    return u < RS_CW_MAX_UNITS ? u : RS_CW_MAX_UNITS;
}
/* Break end (an OPEN word, never a ticket): the whole 44-bit field. now_ns <
 * 2^59 and a break <= 2^59 give ns < 2^60, whose ceiling is at most 2^44; the
 * saturated value, 2^60 - 2^16 ns, is still past every valid now_ns, so a break
 * never ends early. */
#define RS_CW_MAX_BREAK_UNITS (((uint64_t)1 << 44) - 1)
RS_INLINE uint64_t rs_cw_break_units_ceil(int64_t ns) {
    uint64_t u = ((uint64_t)ns + ((1u << RS_CW_UNIT_SHIFT) - 1)) >> RS_CW_UNIT_SHIFT;
    return u < RS_CW_MAX_BREAK_UNITS ? u : RS_CW_MAX_BREAK_UNITS;
}

RS_INLINE uint64_t rs_cw_make(uint32_t state, uint32_t opens, uint32_t permits, uint32_t succ,
                              uint32_t gen, uint64_t time_units) {
    return (uint64_t)state | ((uint64_t)opens << RS_CW_OPENS_SHIFT) |
           ((uint64_t)permits << RS_CW_PERMITS_SHIFT) | ((uint64_t)succ << RS_CW_SUCC_SHIFT) |
           ((uint64_t)(gen & 0xFu) << RS_CW_GEN_SHIFT) | (time_units << RS_CW_TIME_SHIFT);
}

RS_INLINE void rs_circuit_init(rs_circuit *c, uint64_t failure_ppm, uint64_t slow_ppm,
                               uint64_t min_throughput, int64_t sampling_ns, uint32_t buckets,
                               int64_t break_ns, int64_t max_break_ns, uint32_t half_open_calls,
                               int64_t now_ns) {
    c->failure_ppm = failure_ppm;
    c->slow_ppm = slow_ppm;
    c->min_throughput = min_throughput;
    c->break_ns = break_ns;
    c->max_break_ns = max_break_ns;
    c->half_open_calls = half_open_calls;
    c->reserved = 0;
    rs_twindow_init(&c->window, sampling_ns, buckets);
    rs_atomic_u64 *ctr[] = {&c->admitted, &c->rejected, &c->successes, &c->failures, &c->slow,
                            &c->opened,   &c->half_opened, &c->closed, &c->isolated, &c->stale};
    for (unsigned i = 0; i < sizeof(ctr) / sizeof(ctr[0]); i++) rs_store_relaxed_u64(ctr[i], 0);
    /* Release: a circuit placed in shared memory is published by this store. */
    rs_store_release_u64(&c->word, rs_cw_make(RS_CS_CLOSED, 0, 0, 0, 0, rs_cw_units_floor(now_ns)));
}

/* Break length for the n-th consecutive open (n >= 1). */
RS_INLINE int64_t rs_circuit_break_for(const rs_circuit *c, uint32_t opens) {
    if (c->max_break_ns <= 0) return c->break_ns;
    int64_t b = c->break_ns;
    for (uint32_t i = 1; i < opens && b < c->max_break_ns; i++) {
        b = (b > c->max_break_ns / 2) ? c->max_break_ns : b * 2;
    }
    return b < c->max_break_ns ? b : c->max_break_ns;
}

RS_INLINE uint64_t rs_circuit_open_word(const rs_circuit *c, uint64_t from, int64_t now_ns) {
    uint32_t opens = rs_cw_opens(from);
    if (opens < RS_CW_MAX_OPENS) opens++;
    int64_t until = now_ns + rs_circuit_break_for(c, opens);
    return rs_cw_make(RS_CS_OPEN, opens, 0, 0, rs_cw_gen(from) + 1, rs_cw_break_units_ceil(until));
}

/* A fresh half-open period from `from` (OPEN, or HALF_OPEN with every lease run
 * out): one permit taken, and a lease as long as the current break (the one
 * that has just ended: break_for(opens), not the base break). */
RS_INLINE uint64_t rs_circuit_probe_word(const rs_circuit *c, uint64_t from, int64_t now_ns) {
    uint32_t opens = rs_cw_opens(from);
    int64_t lease_end = now_ns + rs_circuit_break_for(c, opens);
    return rs_cw_make(RS_CS_HALF_OPEN, opens, 1, 0, rs_cw_gen(from) + 1,
                      rs_cw_units_ceil(lease_end));
}

/* Ask to run a call. Returns a ticket (>= 0) when admitted. When rejected
 * returns -(wait_ns) - 1, wait_ns being the time until a probe could be
 * admitted, or RS_ADMIT_ISOLATED. */
RS_INLINE int64_t rs_circuit_admit(rs_circuit *c, int64_t now_ns) {
    uint64_t w = rs_load_acquire_u64(&c->word);
    for (;;) {
        uint32_t st = rs_cw_state(w);
        if (st == RS_CS_CLOSED) {
            rs_add_relaxed_u64(&c->admitted, 1);
            return (int64_t)w;
        }
        if (st == RS_CS_ISOLATED) {
            rs_add_relaxed_u64(&c->rejected, 1);
            return RS_ADMIT_ISOLATED;
        }
        int64_t t = rs_cw_time_ns(w);
        uint64_t nw;
        if (st == RS_CS_OPEN) {
            if (now_ns < t) {
                rs_add_relaxed_u64(&c->rejected, 1);
                return -(t - now_ns) - 1;
            }
            nw = rs_circuit_probe_word(c, w, now_ns);
        } else if (rs_cw_permits(w) < c->half_open_calls && rs_cw_succ(w) < c->half_open_calls) {
            nw = w + ((uint64_t)1 << RS_CW_PERMITS_SHIFT);
        } else if (now_ns >= t) {
            /* Every probe's lease has run out: start a fresh half-open period;
             * the lost probes' tickets no longer match. */
            nw = rs_circuit_probe_word(c, w, now_ns);
        } else {
            rs_add_relaxed_u64(&c->rejected, 1);
            return -(t - now_ns) - 1;
        }
        if (rs_cas_acq_rel_u64(&c->word, &w, nw)) {
            if (rs_cw_permits(nw) == 1 && rs_cw_succ(nw) == 0 && rs_cw_gen(nw) != rs_cw_gen(w))
                rs_add_relaxed_u64(&c->half_opened, 1);
            rs_add_relaxed_u64(&c->admitted, 1);
            return (int64_t)nw;
        }
    }
}

RS_INLINE bool rs_circuit_should_trip(const rs_circuit *c, rs_wsnapshot s) {
    if (s.calls < c->min_throughput || s.calls == 0) return false;
    if (s.failures * 1000000u >= c->failure_ppm * s.calls) return true;
    if (c->slow_ppm <= 1000000u && s.slow * 1000000u >= c->slow_ppm * s.calls) return true;
    return false;
}

/* Report the outcome of an admitted call (outcome: RS_OUTCOME_* flags, 0 for
 * a plain success). Returns the state this report moved the circuit to, or
 * RS_NO_TRANSITION. */
RS_INLINE int32_t rs_circuit_record(rs_circuit *c, int64_t ticket, int64_t now_ns,
                                    uint32_t outcome) {
    uint64_t t = (uint64_t)ticket;
    bool failed = (outcome & RS_OUTCOME_FAILURE) != 0;
    if (failed)
        rs_add_relaxed_u64(&c->failures, 1);
    else
        rs_add_relaxed_u64(&c->successes, 1);
    if (outcome & RS_OUTCOME_SLOW) rs_add_relaxed_u64(&c->slow, 1);

    uint64_t w = rs_load_acquire_u64(&c->word);
    if ((w & RS_CW_ID_MASK) != (t & RS_CW_ID_MASK)) {
        rs_add_relaxed_u64(&c->stale, 1);
        return RS_NO_TRANSITION;
    }
    if (rs_cw_state(t) == RS_CS_CLOSED) {
        rs_twindow_record(&c->window, now_ns, outcome);
        if (!rs_circuit_should_trip(c, rs_twindow_snapshot(&c->window, now_ns)))
            return RS_NO_TRANSITION;
        uint64_t nw = rs_circuit_open_word(c, w, now_ns);
        for (;;) {
            if (rs_cas_acq_rel_u64(&c->word, &w, nw)) {
                rs_add_relaxed_u64(&c->opened, 1);
                return (int32_t)RS_CS_OPEN;
            }
            if ((w & RS_CW_ID_MASK) != (t & RS_CW_ID_MASK)) return RS_NO_TRANSITION;
        }
    }
    /* HALF_OPEN probe. */
    for (;;) {
        if (failed) {
            if (rs_cas_acq_rel_u64(&c->word, &w, rs_circuit_open_word(c, w, now_ns))) {
                rs_add_relaxed_u64(&c->opened, 1);
                return (int32_t)RS_CS_OPEN;
            }
        } else {
            uint32_t succ = rs_cw_succ(w);
            if (succ >= c->half_open_calls) return RS_NO_TRANSITION; /* another probe is closing */
            uint32_t permits = rs_cw_permits(w);
            succ++;
            uint64_t nw = (w & RS_CW_ID_MASK) |
                          ((uint64_t)(permits ? permits - 1 : 0) << RS_CW_PERMITS_SHIFT) |
                          ((uint64_t)succ << RS_CW_SUCC_SHIFT);
            if (rs_cas_acq_rel_u64(&c->word, &w, nw)) {
                if (succ < c->half_open_calls) return RS_NO_TRANSITION;
                /* This success completed the quota, so this thread alone
                 * closes. No CLOSED period exists yet: clearing the window
                 * cannot wipe anything the new period recorded. */
                rs_twindow_reset(&c->window, now_ns);
                uint64_t cur = nw;
                for (;;) {
                    uint64_t cl = rs_cw_make(RS_CS_CLOSED, 0, 0, 0, rs_cw_gen(cur) + 1,
                                             rs_cw_units_floor(now_ns));
                    if (rs_cas_acq_rel_u64(&c->word, &cur, cl)) {
                        rs_add_relaxed_u64(&c->closed, 1);
                        return (int32_t)RS_CS_CLOSED;
                    }
                    /* A probe failure, isolate(), reset() or a lease restart got
                     * there first. */
                    if ((cur & RS_CW_ID_MASK) != (nw & RS_CW_ID_MASK)) return RS_NO_TRANSITION;
                }
            }
        }
        if ((w & RS_CW_ID_MASK) != (t & RS_CW_ID_MASK)) return RS_NO_TRANSITION;
    }
}

/* Give back a ticket without an outcome (the call was cancelled). */
RS_INLINE void rs_circuit_release(rs_circuit *c, int64_t ticket) {
    uint64_t t = (uint64_t)ticket;
    if (rs_cw_state(t) != RS_CS_HALF_OPEN) return;
    uint64_t w = rs_load_acquire_u64(&c->word);
    for (;;) {
        if ((w & RS_CW_ID_MASK) != (t & RS_CW_ID_MASK) || rs_cw_permits(w) == 0) return;
        if (rs_cas_acq_rel_u64(&c->word, &w, w - ((uint64_t)1 << RS_CW_PERMITS_SHIFT))) return;
    }
}

RS_INLINE void rs_circuit_isolate(rs_circuit *c, int64_t now_ns) {
    uint64_t w = rs_load_acquire_u64(&c->word);
    for (;;) {
        if (rs_cw_state(w) == RS_CS_ISOLATED) return;
        uint64_t nw = rs_cw_make(RS_CS_ISOLATED, 0, 0, 0, rs_cw_gen(w) + 1, rs_cw_units_floor(now_ns));
        if (rs_cas_acq_rel_u64(&c->word, &w, nw)) {
            rs_add_relaxed_u64(&c->isolated, 1);
            return;
        }
    }
}

RS_INLINE void rs_circuit_reset(rs_circuit *c, int64_t now_ns) {
    rs_twindow_reset(&c->window, now_ns);
    uint64_t w = rs_load_acquire_u64(&c->word);
    for (;;) {
        uint64_t nw = rs_cw_make(RS_CS_CLOSED, 0, 0, 0, rs_cw_gen(w) + 1, rs_cw_units_floor(now_ns));
        if (rs_cas_acq_rel_u64(&c->word, &w, nw)) {
            if (rs_cw_state(w) != RS_CS_CLOSED) rs_add_relaxed_u64(&c->closed, 1);
            return;
        }
    }
}

RS_INLINE uint32_t rs_circuit_state(rs_circuit *c) {
    return rs_cw_state(rs_load_acquire_u64(&c->word));
}

/* Nanoseconds until a call could be admitted: 0 when one would be now,
 * -1 when ISOLATED (only reset() admits again). */
RS_INLINE int64_t rs_circuit_retry_after(rs_circuit *c, int64_t now_ns) {
    uint64_t w = rs_load_acquire_u64(&c->word);
    uint32_t st = rs_cw_state(w);
    if (st == RS_CS_CLOSED) return 0;
    if (st == RS_CS_ISOLATED) return -1;
    if (st == RS_CS_HALF_OPEN && rs_cw_permits(w) < c->half_open_calls) return 0;
    int64_t t = rs_cw_time_ns(w);
    return t > now_ns ? t - now_ns : 0;
}

#endif /* RS_CIRCUIT_H */
