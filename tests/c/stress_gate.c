/* Stress test for csrc/rs_gate.h (concurrency gate).
 *
 * Usage: stress_gate [ops_per_thread]   (default 1000000)
 * Exit 0 pass, 1 a check failed, 2 bad usage or a pthread error.
 *
 *  G1 fixed limits 1, 3 and 8: 8 threads try_enter / hold briefly / exit. Our
 *     own in-flight counter (raised after entering, lowered before exiting, so
 *     it never exceeds the gate's) stays <= limit; admitted + rejected == 8N;
 *     the gate's admitted/rejected equal the tallies; in_flight ends at 0.
 *     limit 1: the gate is a mutex, so a plain (non-atomic) counter touched
 *     only inside it must end exact and ThreadSanitizer must see no race
 *     (this checks the enter/exit memory ordering, not just the count).
 *     limit 8 with 8 threads: nothing is ever rejected.
 *  G2 limit changed at run time by the main thread (1, 4, 2, 7, 0, 3, 8, 5, ...)
 *     while the 8 threads run. A lowered limit may let decisions already under
 *     way finish and never evicts calls already in; so once every thread has
 *     made two more decisions after the change, in-flight stays <= max(new
 *     limit, in-flight at that moment) until the next change. Checked at every
 *     admission; plus the same exact totals as G1.
 *  G3 unmatched exits: exit() with nothing in flight does nothing, so the
 *     count never goes below 0. Single-threaded first (exits on an empty
 *     gate, then the limit still holds exactly), then 8 threads doing
 *     enter / exit pairs while every thread also calls exit() without a
 *     matching enter every 32nd op: in_flight read after every op is never
 *     negative, and ends at exactly 0 (every decrement attempt beyond the
 *     enters finds the count at 0); the same exact totals as G1.
 */
#include "stress_common.h"

#include "rs_gate.h"

/* Busy-wait lengths inside the gate and between attempts: comparable, so
 * every thread keeps contending instead of one holder re-entering at once. */
#define HOLD_SPIN 16
#define THINK_SPIN 16

static int64_t N;
static rs_gate gate;
static pthread_barrier_t start_bar;
static st_rendezvous rv; /* workers spin here after the start barrier */

static _Atomic int64_t mine;     /* our in-flight count */
static _Atomic int64_t mine_max;
static int64_t plain_counter;    /* limit 1 only: guarded by the gate itself */
static int64_t g1_limit;

typedef struct {
    uint64_t admitted, rejected;
} tally;
static tally tl[ST_THREADS];

/* ---------------- G1 ---------------- */

static void *g1_worker(void *p) {
    st_arg *a = p;
    tally t = {0, 0};
    const int64_t limit = g1_limit;
    uint64_t meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        if (rs_gate_try_enter(&gate)) {
            t.admitted++;
            int64_t v = atomic_fetch_add(&mine, 1) + 1;
            CHECK(v <= limit, "G1: %" PRId64 " in flight, limit %" PRId64, v, limit);
            st_atomic_max_i64(&mine_max, v);
            st_spin(HOLD_SPIN);
            if ((j & 255) == 0) sched_yield(); /* get preempted while holding, too */
            atomic_fetch_sub(&mine, 1);
            /* Last before exit, after our own (seq_cst) atomics, so only the
             * gate's exit -> enter ordering can make this race-free. */
            if (limit == 1) plain_counter++;
            rs_gate_exit(&gate);
        } else {
            t.rejected++;
            /* Hand the core to whoever holds the slot (2 cores, 8 threads):
             * otherwise a refused thread burns through its ops alone. */
            if ((t.rejected & 63) == 0) sched_yield();
        }
        st_spin(THINK_SPIN); /* so a holder does not simply re-enter at once */
    }
    tl[a->id] = t;
    return NULL;
}

static tally sum_tally(void) {
    tally s = {0, 0};
    for (int i = 0; i < ST_THREADS; i++) {
        s.admitted += tl[i].admitted;
        s.rejected += tl[i].rejected;
    }
    return s;
}

static void check_end(const char *what) {
    tally s = sum_tally();
    CHECK_EQ_U64(s.admitted + s.rejected, (uint64_t)(ST_THREADS * N), what);
    CHECK_EQ_U64(rs_load_relaxed_u64(&gate.admitted), s.admitted, what);
    CHECK_EQ_U64(rs_load_relaxed_u64(&gate.rejected), s.rejected, what);
    CHECK_EQ_I64(rs_load_acquire_i64(&gate.in_flight), 0, what);
    CHECK_EQ_I64(atomic_load(&mine), 0, what);
}

static void part_g1(int64_t limit) {
    rs_gate_init(&gate, limit);
    g1_limit = limit;
    plain_counter = 0;
    atomic_store(&mine, 0);
    atomic_store(&mine_max, 0);
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, g1_worker, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);
    check_end("G1");
    tally s = sum_tally();
    if (limit == 1) CHECK_EQ_U64((uint64_t)plain_counter, s.admitted, "G1 limit 1: plain counter");
    if (limit >= ST_THREADS) CHECK_EQ_U64(s.rejected, 0, "G1: limit >= threads never rejects");
    printf("  G1 limit %" PRId64 ": admitted %" PRIu64 ", rejected %" PRIu64
           ", max in flight %" PRId64 "\n", limit, s.admitted, s.rejected, atomic_load(&mine_max));
}

/* ---------------- G2 ---------------- */

#define NO_BOUND INT64_MAX
static _Atomic int64_t bound = NO_BOUND; /* current provable in-flight bound */
static _Atomic int64_t ops_done[ST_THREADS];
static _Atomic int workers_left;
static _Atomic uint64_t g2_checks;

static void *g2_worker(void *p) {
    st_arg *a = p;
    tally t = {0, 0};
    uint64_t checks = 0, meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        if (rs_gate_try_enter(&gate)) {
            /* try_enter read the limit with a relaxed load; this fence makes a
             * limit store it read (a release store) happen before what follows,
             * so we also see the bound the changer cleared before storing it. */
            atomic_thread_fence(memory_order_acquire);
            t.admitted++;
            int64_t v = atomic_fetch_add(&mine, 1) + 1;
            int64_t b = atomic_load(&bound);
            if (b != NO_BOUND) checks++;
            CHECK(v <= b, "G2: %" PRId64 " in flight, bound %" PRId64 " (limit now %" PRId64 ")", v,
                  b, rs_load_relaxed_i64(&gate.limit));
            st_atomic_max_i64(&mine_max, v);
            st_spin(HOLD_SPIN);
            if ((j & 255) == 0) sched_yield();
            atomic_fetch_sub(&mine, 1);
            rs_gate_exit(&gate);
        } else {
            t.rejected++;
            /* Hand the core to whoever holds the slot (2 cores, 8 threads):
             * otherwise a refused thread burns through its ops alone. */
            if ((t.rejected & 63) == 0) sched_yield();
        }
        st_spin(THINK_SPIN);
        atomic_store(&ops_done[a->id], j + 1);
    }
    tl[a->id] = t;
    atomic_fetch_add(&g2_checks, checks);
    atomic_fetch_sub(&workers_left, 1);
    return NULL;
}

/* Wait until every worker made `n` more decisions than in `since` (or finished). */
static void wait_decisions(const int64_t *since, int64_t n) {
    for (int i = 0; i < ST_THREADS; i++) {
        for (;;) {
            int64_t d = atomic_load(&ops_done[i]);
            if (d >= since[i] + n || d >= N) break;
            sched_yield();
        }
    }
}

static void part_g2(void) {
    static const int64_t limits[] = {1, 4, 2, 7, 0, 3, 8, 5, 6, 1, 2};
    const int nlimits = (int)(sizeof limits / sizeof limits[0]);
    rs_gate_init(&gate, 3);
    atomic_store(&mine, 0);
    atomic_store(&mine_max, 0);
    atomic_store(&bound, NO_BOUND);
    atomic_store(&workers_left, ST_THREADS);
    atomic_store(&g2_checks, 0);
    for (int i = 0; i < ST_THREADS; i++) atomic_store(&ops_done[i], 0);
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, g2_worker, NULL);
    st_barrier_wait(&start_bar);
    uint64_t changes = 0;
    int64_t max_limit = 3;
    while (atomic_load(&workers_left) > 0) {
        int64_t limit = limits[changes % (uint64_t)nlimits];
        if (limit > max_limit) max_limit = limit;
        atomic_store(&bound, NO_BOUND);
        rs_gate_set_limit(&gate, limit);
        changes++;
        int64_t since[ST_THREADS];
        for (int i = 0; i < ST_THREADS; i++) since[i] = atomic_load(&ops_done[i]);
        wait_decisions(since, 2); /* decisions that read the old limit are over */
        int64_t now_in = rs_load_acquire_i64(&gate.in_flight);
        atomic_store(&bound, now_in > limit ? now_in : limit);
        for (int i = 0; i < ST_THREADS; i++) since[i] = atomic_load(&ops_done[i]);
        wait_decisions(since, 64); /* let the threads run under this limit */
    }
    st_join(tids);
    check_end("G2");
    CHECK(atomic_load(&mine_max) <= max_limit, "G2: max in flight %" PRId64 " > largest limit %"
          PRId64, atomic_load(&mine_max), max_limit);
    tally s = sum_tally();
    printf("  G2 changing limit: %" PRIu64 " changes, admitted %" PRIu64 ", rejected %" PRIu64
           ", %" PRIu64 " admissions checked against a bound, max in flight %" PRId64 "\n",
           changes, s.admitted, s.rejected, atomic_load(&g2_checks), atomic_load(&mine_max));
}

/* ---------------- G3 ---------------- */

#define G3_LIMIT 3
static _Atomic uint64_t g3_unmatched;
static _Atomic int64_t g3_min_seen;

static void g3_observe(void) {
    /* Relaxed: only the value matters; a negative count is a bug at any time. */
    int64_t v = rs_load_relaxed_i64(&gate.in_flight);
    CHECK(v >= 0, "G3: in_flight %" PRId64 " < 0", v);
    int64_t m = atomic_load_explicit(&g3_min_seen, memory_order_relaxed);
    while (v < m && !atomic_compare_exchange_weak(&g3_min_seen, &m, v)) {
    }
}

static void *g3_worker(void *p) {
    st_arg *a = p;
    tally t = {0, 0};
    uint64_t unmatched = 0, meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        if (((j + a->id) & 31) == 0) {
            rs_gate_exit(&gate); /* no matching enter */
            unmatched++;
            g3_observe();
        }
        if (rs_gate_try_enter(&gate)) {
            t.admitted++;
            st_spin(HOLD_SPIN);
            if ((j & 255) == 0) sched_yield();
            rs_gate_exit(&gate);
        } else {
            t.rejected++;
            if ((t.rejected & 63) == 0) sched_yield();
        }
        g3_observe();
        st_spin(THINK_SPIN);
    }
    tl[a->id] = t;
    atomic_fetch_add(&g3_unmatched, unmatched);
    return NULL;
}

static void part_g3(void) {
    /* Single-threaded: exits on an empty gate leave it at 0 and the limit exact. */
    rs_gate_init(&gate, 2);
    rs_gate_exit(&gate);
    rs_gate_exit(&gate);
    CHECK_EQ_I64(rs_load_relaxed_i64(&gate.in_flight), 0, "G3: exit on an empty gate");
    CHECK(rs_gate_try_enter(&gate) && rs_gate_try_enter(&gate) && !rs_gate_try_enter(&gate),
          "G3: limit 2 after unmatched exits");
    rs_gate_exit(&gate);
    rs_gate_exit(&gate);
    rs_gate_exit(&gate); /* one too many */
    CHECK_EQ_I64(rs_load_relaxed_i64(&gate.in_flight), 0, "G3: one exit too many");
    CHECK(rs_gate_try_enter(&gate) && rs_gate_try_enter(&gate) && !rs_gate_try_enter(&gate),
          "G3: limit 2 after one exit too many");

    /* Concurrent. */
    rs_gate_init(&gate, G3_LIMIT);
    atomic_store(&mine, 0);
    atomic_store(&g3_unmatched, 0);
    atomic_store(&g3_min_seen, INT64_MAX);
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, g3_worker, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);
    check_end("G3");
    tally s = sum_tally();
    printf("  G3 unmatched exits: %" PRIu64 " of them, admitted %" PRIu64 ", rejected %" PRIu64
           ", lowest in_flight seen %" PRId64 "\n",
           atomic_load(&g3_unmatched), s.admitted, s.rejected, atomic_load(&g3_min_seen));
}

int main(int argc, char **argv) {
    N = st_parse_ops(argc, argv);
    double t0 = st_seconds();
    st_barrier_init(&start_bar, ST_THREADS + 1);
    printf("stress_gate: %d threads x %" PRId64 " ops per part\n", ST_THREADS, N);
    part_g1(1);
    part_g1(3);
    part_g1(ST_THREADS);
    part_g2();
    part_g3();
    pthread_barrier_destroy(&start_bar);
    printf("stress_gate: ok (%.2f s)\n", st_seconds() - t0);
    return 0;
}
