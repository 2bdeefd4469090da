/* Stress test for csrc/rs_token_bucket.h (GCRA on one atomic word).
 *
 * Usage: stress_bucket [ops_per_thread]   (default 1000000)
 * Exit 0 pass, 1 a check failed, 2 bad usage or a pthread error.
 *
 * Four parts, each 8 threads x ops_per_thread operations, started on a barrier:
 *
 *  A  fixed now, rounds: in each round every thread hammers try_acquire at one
 *     instant (n = 1, or a random 1..3 in mixed rounds). Exactly `burst` tokens
 *     are admitted (n = 1: sum == burst; mixed: sum + a 1-token drain == burst),
 *     admitted + rejected == ops, each refusal's wait is exact (n = 1: one
 *     interval), available() agrees, and b->admitted / b->rejected equal the
 *     per-thread tallies.
 *  B1 time advancing, deterministic: thread op j runs at t0 + (j+1)*step with
 *     step <= interval, threads kept within 2048 ops of each other so they
 *     compete for the same tokens. Main drains the bucket at t0 and at t1;
 *     because every
 *     thread's previous op left tat >= its next now, no token is ever wasted,
 *     so the total admitted is exactly burst + (t1 - t0) / interval (the GCRA
 *     upper bound, reached because demand always exceeds supply).
 *  B2 time advancing, shared clock: each op takes now = clock += step (threads
 *     tick the clock themselves, so nows reach the bucket out of order).
 *     interval >= 16 * step keeps every admission waste-free (at most 7 ops are
 *     in flight), so again total == burst + (t1 - t0) / interval exactly.
 *     After B1 and B2: tat == t0 + admitted * interval exactly, and
 *     available() at in-between times after t1 matches it.
 *  C  reserve + refund, rounds at a fixed now: threads reserve 1 token with
 *     max_wait and refund every second reservation they won (deferred, so
 *     refunds interleave with reservations). Afterwards tat == now +
 *     outstanding * interval exactly, available() == max(0, burst -
 *     outstanding), a drain brings outstanding to exactly burst +
 *     floor(max_wait / interval), every admitted wait is a multiple of the
 *     interval <= max_wait and every refusal reports the exact wait.
 */
#include "stress_common.h"

#include "rs_token_bucket.h"

static int64_t N;
static pthread_barrier_t start_bar; /* ST_THREADS workers + main */
static pthread_barrier_t end_bar;
static rs_bucket bk;
static st_rendezvous rv; /* workers spin here after the start barrier */

enum { MODE_FIXED, MODE_RESERVE, MODE_STOP };

/* Written by main between rounds; the barriers order it before the workers read. */
static struct {
    int mode;
    int mixed;
    int64_t now;
    int64_t ops;
    int64_t max_wait;
    int64_t cap; /* reserve: burst + floor(max_wait / interval) */
} plan;

typedef struct {
    uint64_t adm_req, adm_tok, rej, refunded;
} tally;
static tally tl[ST_THREADS];

/* Main's own bucket operations, so the bucket's counters can be checked exactly. */
static uint64_t main_admitted, main_rejected;

/* ---- A and C: rounds ---- */

static void round_fixed(int id, st_rng *rng) {
    tally t = {0, 0, 0, 0};
    const int64_t I = bk.interval_ns;
    for (int64_t j = 0; j < plan.ops; j++) {
        int64_t n = plan.mixed ? 1 + (int64_t)(st_next(rng) % 3) : 1;
        int64_t w = rs_bucket_try_acquire(&bk, plan.now, n);
        if (w == 0) {
            t.adm_req++;
            t.adm_tok += (uint64_t)n;
        } else {
            t.rej++;
            if (plan.mixed)
                CHECK(w >= I && w <= n * I && w % I == 0, "mixed refusal wait %" PRId64
                      " for n=%" PRId64 " interval %" PRId64, w, n, I);
            else
                CHECK_EQ_I64(w, I, "refusal of 1 token at a drained instant waits one interval");
        }
    }
    tl[id] = t;
}

static void round_reserve(int id, st_rng *rng) {
    tally t = {0, 0, 0, 0};
    const int64_t I = bk.interval_ns, B = bk.burst;
    const int64_t refuse = -((plan.cap + 1 - B) * I);
    uint64_t pending = 0;
    for (int64_t j = 0; j < plan.ops; j++) {
        int64_t r = rs_bucket_reserve(&bk, plan.now, 1, plan.max_wait);
        if (r >= 0) {
            CHECK(r <= plan.max_wait && r % I == 0, "reserve wait %" PRId64 " (max_wait %" PRId64
                  ", interval %" PRId64 ")", r, plan.max_wait, I);
            t.adm_req++;
            if ((t.adm_req & 1) == 0) pending++; /* refund every second one */
        } else {
            t.rej++;
            CHECK_EQ_I64(r, refuse, "refused reservation reports the exact wait");
        }
        if (pending && (st_next(rng) & 3) == 0) {
            rs_bucket_refund(&bk, plan.now, 1);
            pending--;
            t.refunded++;
        }
    }
    while (pending) {
        rs_bucket_refund(&bk, plan.now, 1);
        pending--;
        t.refunded++;
    }
    tl[id] = t;
}

static void *round_worker(void *p) {
    st_arg *a = p;
    st_rng rng = st_rng_seed(0xB0C4u + (uint64_t)a->id);
    uint64_t meet = 0;
    for (;;) {
        st_barrier_wait(&start_bar);
        if (plan.mode == MODE_STOP) return NULL;
        st_rendezvous_wait(&rv, &meet);
        if (plan.mode == MODE_FIXED)
            round_fixed(a->id, &rng);
        else
            round_reserve(a->id, &rng);
        st_barrier_wait(&end_bar);
    }
}

static tally sum_tallies(void) {
    tally s = {0, 0, 0, 0};
    for (int i = 0; i < ST_THREADS; i++) {
        s.adm_req += tl[i].adm_req;
        s.adm_tok += tl[i].adm_tok;
        s.rej += tl[i].rej;
        s.refunded += tl[i].refunded;
    }
    return s;
}

/* Take single tokens at `now` (with max_wait) until refused; returns how many. */
static int64_t drain(int64_t now, int64_t max_wait, int64_t *last_refusal) {
    int64_t d = 0;
    for (;;) {
        int64_t r = rs_bucket_reserve(&bk, now, 1, max_wait);
        if (r < 0) {
            main_rejected++;
            if (last_refusal) *last_refusal = r;
            return d;
        }
        main_admitted++;
        d++;
        CHECK(d <= (1 << 24), "drain never ends");
    }
}

static void check_counters(uint64_t worker_adm, uint64_t worker_rej, const char *part) {
    uint64_t a = rs_load_relaxed_u64(&bk.admitted), r = rs_load_relaxed_u64(&bk.rejected);
    CHECK(a == worker_adm + main_admitted && r == worker_rej + main_rejected,
          "%s: counters admitted=%" PRIu64 " rejected=%" PRIu64 ", tallies admitted=%" PRIu64
          " rejected=%" PRIu64, part, a, r, worker_adm + main_admitted, worker_rej + main_rejected);
}

static void part_rounds(void) {
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, round_worker, NULL);

    /* ---- A ---- */
    rs_bucket_init(&bk, 1000, 1);
    main_admitted = main_rejected = 0;
    int64_t rounds = N / 1000;
    if (rounds < 1) rounds = 1;
    if (rounds > 400) rounds = 400;
    uint64_t adm = 0, rej = 0, reqs = 0;
    for (int64_t r = 0; r < rounds; r++) {
        /* Plain config fields change only while the workers wait on the barrier. */
        bk.interval_ns = 1000 + r % 7;
        bk.burst = 1 + (r * 7919) % 1500;
        plan.mode = MODE_FIXED;
        plan.mixed = (int)(r & 1);
        plan.now = (r + 1) * 1000000000LL; /* far past the last tat: full */
        plan.ops = st_round_ops(N, rounds, r);
        CHECK_EQ_I64(rs_bucket_available(&bk, plan.now), bk.burst, "A: bucket full at round start");
        st_barrier_wait(&start_bar);
        st_barrier_wait(&end_bar);
        tally s = sum_tallies();
        CHECK_EQ_U64(s.adm_req + s.rej, (uint64_t)(ST_THREADS * plan.ops), "A: admitted + rejected");
        CHECK(s.adm_tok <= (uint64_t)bk.burst, "A round %" PRId64 ": %" PRIu64 " tokens > burst %"
              PRId64, r, s.adm_tok, bk.burst);
        CHECK_EQ_I64(rs_bucket_available(&bk, plan.now), bk.burst - (int64_t)s.adm_tok,
                     "A: available() after the round");
        if (!plan.mixed) CHECK_EQ_U64(s.adm_tok, bk.burst, "A: tokens admitted at one instant");
        int64_t d = drain(plan.now, 0, NULL);
        CHECK_EQ_I64((int64_t)s.adm_tok + d, bk.burst, "A: tokens admitted + drained");
        adm += s.adm_req;
        rej += s.rej;
        reqs += s.adm_req + s.rej;
    }
    CHECK_EQ_U64(reqs, (uint64_t)(ST_THREADS * N), "A: total requests");
    check_counters(adm, rej, "A");
    printf("  A fixed-now rounds: %" PRId64 " rounds, %" PRIu64 " requests, %" PRIu64
           " admitted, exact\n", rounds, reqs, adm);

    /* ---- C ---- */
    rs_bucket_init(&bk, 1000, 1);
    main_admitted = main_rejected = 0;
    adm = rej = reqs = 0;
    uint64_t refunded = 0;
    for (int64_t r = 0; r < rounds; r++) {
        const int64_t I = 1000;
        bk.interval_ns = I;
        bk.burst = 1 + (r * 31) % 64;
        plan.mode = MODE_RESERVE;
        plan.now = (r + 1) * 1000000000LL;
        plan.ops = st_round_ops(N, rounds, r);
        plan.max_wait = (r % 40) * I + I / 2; /* not a multiple: floor matters */
        plan.cap = bk.burst + plan.max_wait / I;
        st_barrier_wait(&start_bar);
        st_barrier_wait(&end_bar);
        tally s = sum_tallies();
        CHECK_EQ_U64(s.adm_req + s.rej, (uint64_t)(ST_THREADS * plan.ops), "C: admitted + rejected");
        for (int i = 0; i < ST_THREADS; i++)
            CHECK_EQ_U64(tl[i].refunded, tl[i].adm_req / 2, "C: refunded half");
        int64_t out = (int64_t)(s.adm_req - s.refunded);
        CHECK(out >= 1 && out <= plan.cap, "C: outstanding %" PRId64 " outside [1, %" PRId64 "]",
              out, plan.cap);
        CHECK_EQ_I64(rs_load_acquire_i64(&bk.tat), plan.now + out * I,
                     "C: tat == now + outstanding * interval (no refund lost or doubled)");
        int64_t want_avail = bk.burst - out > 0 ? bk.burst - out : 0;
        CHECK_EQ_I64(rs_bucket_available(&bk, plan.now), want_avail, "C: available()");
        int64_t last = 0;
        int64_t d = drain(plan.now, plan.max_wait, &last);
        CHECK_EQ_I64(out + d, plan.cap, "C: outstanding + drained == burst + max_wait/interval");
        CHECK_EQ_I64(last, -((plan.cap + 1 - bk.burst) * I), "C: refusal wait after drain");
        adm += s.adm_req;
        rej += s.rej;
        reqs += s.adm_req + s.rej;
        refunded += s.refunded;
    }
    CHECK_EQ_U64(reqs, (uint64_t)(ST_THREADS * N), "C: total requests");
    check_counters(adm, rej, "C");
    printf("  C reserve+refund rounds: %" PRId64 " rounds, %" PRIu64 " reservations won, %" PRIu64
           " refunded, exact\n", rounds, adm, refunded);

    plan.mode = MODE_STOP;
    st_barrier_wait(&start_bar);
    st_join(tids);
}

/* After the final drain at t1 of a waste-free run (every admission moved tat
 * by exactly one interval from t0): tat is exact, and available() follows it
 * at in-between times too (whole tokens only, never above burst). */
static void check_tail(int64_t t0, int64_t t1, int64_t total, int64_t I, int64_t B, const char *part) {
    int64_t tat = rs_load_acquire_i64(&bk.tat);
    CHECK(tat == t0 + total * I, "%s: tat %" PRId64 ", want t0 + admitted * interval = %" PRId64,
          part, tat, t0 + total * I);
    for (int64_t dt = 0; dt <= (B + 2) * I; dt += (dt % I == 0) ? 1 : I / 2) {
        int64_t t = t1 + dt, want;
        if (t >= tat) {
            want = B;
        } else {
            int64_t accrued = t - (tat - B * I); /* ns of tokens accrued since empty */
            want = accrued <= 0 ? 0 : accrued / I;
        }
        CHECK_EQ_I64(rs_bucket_available(&bk, t), want, part);
    }
}

/* ---- B1: deterministic per-op time ---- */

#define B1_T0 1000000000000LL
#define B1_STEP 16
#define B1_INTERVAL 64
#define B1_BURST 16

/* Threads keep within B1_LAG ops of each other, so their nows stay close and
 * they really compete for each token (a thread far ahead in time would take
 * every token while the others, far behind, were only refused). */
#define B1_LAG 2048
static _Atomic int64_t b1_progress[ST_THREADS];

static void b1_pace(int id, int64_t j) {
    atomic_store(&b1_progress[id], j);
    for (;;) {
        int64_t min = INT64_MAX;
        for (int i = 0; i < ST_THREADS; i++) {
            int64_t p = atomic_load(&b1_progress[i]);
            if (p < min) min = p;
        }
        if (min >= j - B1_LAG) return;
        sched_yield();
    }
}

static void *worker_b1(void *p) {
    st_arg *a = p;
    tally t = {0, 0, 0, 0};
    uint64_t meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        if ((j & 255) == 0) b1_pace(a->id, j);
        int64_t now = B1_T0 + (j + 1) * B1_STEP;
        if (rs_bucket_try_acquire(&bk, now, 1) == 0)
            t.adm_req++;
        else
            t.rej++;
    }
    atomic_store(&b1_progress[a->id], INT64_MAX); /* done: never hold others back */
    tl[a->id] = t;
    return NULL;
}

static void part_b1(void) {
    for (int i = 0; i < ST_THREADS; i++) atomic_store(&b1_progress[i], 0);
    rs_bucket_init(&bk, B1_INTERVAL, B1_BURST);
    main_admitted = main_rejected = 0;
    CHECK_EQ_I64(drain(B1_T0, 0, NULL), B1_BURST, "B1: initial drain at t0");
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, worker_b1, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);
    int64_t t1 = B1_T0 + N * B1_STEP;
    int64_t d1 = drain(t1, 0, NULL);
    tally s = sum_tallies();
    CHECK_EQ_U64(s.adm_req + s.rej, (uint64_t)(ST_THREADS * N), "B1: admitted + rejected");
    int64_t total = B1_BURST + (int64_t)s.adm_req + d1;
    int64_t bound = B1_BURST + (t1 - B1_T0) / B1_INTERVAL;
    CHECK(total <= bound, "B1: over-admission: %" PRId64 " > burst + T/interval = %" PRId64, total,
          bound);
    CHECK_EQ_I64(total, bound, "B1: admitted over [t0, t1] with demand > supply");
    check_tail(B1_T0, t1, total, B1_INTERVAL, B1_BURST, "B1 available()");
    check_counters(s.adm_req, s.rej, "B1");
    printf("  B1 per-op time: %" PRIu64 " admitted by threads, total %" PRId64
           " == burst + T/interval\n", s.adm_req, total);
}

/* ---- B2: shared ticking clock ---- */

#define B2_T0 5000000000000LL
#define B2_STEP 1
#define B2_INTERVAL 16
#define B2_BURST 4

static _Atomic int64_t b2_clock;

static void *worker_b2(void *p) {
    st_arg *a = p;
    tally t = {0, 0, 0, 0};
    uint64_t meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        int64_t now = atomic_fetch_add(&b2_clock, B2_STEP) + B2_STEP;
        if (rs_bucket_try_acquire(&bk, now, 1) == 0)
            t.adm_req++;
        else
            t.rej++;
    }
    tl[a->id] = t;
    return NULL;
}

static void part_b2(void) {
    rs_bucket_init(&bk, B2_INTERVAL, B2_BURST);
    main_admitted = main_rejected = 0;
    atomic_store(&b2_clock, B2_T0);
    CHECK_EQ_I64(drain(B2_T0, 0, NULL), B2_BURST, "B2: initial drain at t0");
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, worker_b2, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);
    int64_t t1 = atomic_load(&b2_clock);
    CHECK_EQ_I64(t1 - B2_T0, ST_THREADS * N * B2_STEP, "B2: clock ticks");
    int64_t d1 = drain(t1, 0, NULL);
    tally s = sum_tallies();
    CHECK_EQ_U64(s.adm_req + s.rej, (uint64_t)(ST_THREADS * N), "B2: admitted + rejected");
    int64_t total = B2_BURST + (int64_t)s.adm_req + d1;
    int64_t bound = B2_BURST + (t1 - B2_T0) / B2_INTERVAL;
    CHECK(total <= bound, "B2: over-admission: %" PRId64 " > burst + T/interval = %" PRId64, total,
          bound);
    CHECK_EQ_I64(total, bound, "B2: admitted over [t0, t1] with demand > supply");
    check_tail(B2_T0, t1, total, B2_INTERVAL, B2_BURST, "B2 available()");
    check_counters(s.adm_req, s.rej, "B2");
    printf("  B2 shared clock: %" PRIu64 " admitted by threads, total %" PRId64
           " == burst + T/interval\n", s.adm_req, total);
}

int main(int argc, char **argv) {
    N = st_parse_ops(argc, argv);
    double t0 = st_seconds();
    st_barrier_init(&start_bar, ST_THREADS + 1);
    st_barrier_init(&end_bar, ST_THREADS + 1);
    printf("stress_bucket: %d threads x %" PRId64 " ops per part\n", ST_THREADS, N);
    part_rounds();
    part_b1();
    part_b2();
    pthread_barrier_destroy(&start_bar);
    pthread_barrier_destroy(&end_bar);
    printf("stress_bucket: ok (%.2f s)\n", st_seconds() - t0);
    return 0;
}
