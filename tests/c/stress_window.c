/* Stress test for csrc/rs_window.h (time window and count window).
 *
 * Usage: stress_window [ops_per_thread]   (default 1000000)
 * Exit 0 pass, 1 a check failed, 2 bad usage or a pthread error.
 *
 *  W1 time window, one instant: 8 threads record into the same bucket (same
 *     now) with a per-op outcome pattern. While they run, every thread takes
 *     snapshots: failures <= calls, slow <= calls, calls never decreases.
 *     At the end the snapshot has calls == 8N and failures / slow exactly the
 *     number recorded.
 *  W2 time window across bucket boundaries: 4 buckets; threads move through
 *     consecutive buckets together, K ops per bucket each, never more than
 *     nbuckets - 1 buckets apart (so no thread lags a whole window and no
 *     update may be dropped). The last thread to finish a bucket checks that
 *     bucket's three counter words against the exact tallies while threads
 *     are already writing the next buckets (and evicting older slots). At the
 *     end, the snapshot at the newest bucket is exact, and snapshots at the
 *     window's older buckets have exact calls (their failures/slow can be off
 *     only through the W5 bug, which is then reported, not failed).
 *  W3 count window, rounds over sizes 1, 7, 100, 1000, 1024: 8 threads record;
 *     concurrently calls <= size; afterwards calls == min(total, size), pos ==
 *     total, and the three totals equal a recount of the ring. Every other
 *     round one thread calls reset() while the others record: the totals still
 *     equal a recount of the ring afterwards, and a final quiet reset leaves
 *     everything zero.
 *  W5 known-bug probe (does not fail unless RS_STRESS_STRICT=1): a snapshot
 *     whose now is one bucket behind another thread's record sees the evicted
 *     bucket's failures without its calls (failures > calls).
 */
#include "stress_common.h"

#include "rs_window.h"

static int64_t N;
static pthread_barrier_t start_bar;
static pthread_barrier_t end_bar;
static st_rendezvous rv; /* workers spin here after the start barrier */

static uint32_t outcome_for(int t, int64_t j) {
    uint64_t h = ((uint64_t)j * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)t * 0xC2B2AE3D27D4EB4Full);
    h ^= h >> 29;
    uint32_t o = 0;
    if (h % 3 == 0) o |= RS_OUTCOME_FAILURE;
    if ((h >> 8) % 5 == 0) o |= RS_OUTCOME_SLOW;
    return o;
}

/* ---------------- W1 ---------------- */

static rs_twindow tw;
#define W1_NOW (123457LL * 100000000LL + 17) /* duration 1 s / 10 buckets: width 1e8 */

typedef struct {
    uint64_t calls, failures, slow;
} tri;
static tri w1_tally[ST_THREADS];

static void *w1_worker(void *p) {
    st_arg *a = p;
    tri t = {0, 0, 0};
    uint64_t last_calls = 0, meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        uint32_t o = outcome_for(a->id, j);
        rs_twindow_record(&tw, W1_NOW, o);
        t.calls++;
        if (o & RS_OUTCOME_FAILURE) t.failures++;
        if (o & RS_OUTCOME_SLOW) t.slow++;
        if ((j & 255) == 0) {
            rs_wsnapshot s = rs_twindow_snapshot(&tw, W1_NOW);
            CHECK(s.failures <= s.calls && s.slow <= s.calls,
                  "W1 snapshot calls=%" PRIu64 " failures=%" PRIu64 " slow=%" PRIu64, s.calls,
                  s.failures, s.slow);
            CHECK(s.calls >= last_calls, "W1 calls went back: %" PRIu64 " after %" PRIu64, s.calls,
                  last_calls);
            CHECK(s.calls >= t.calls && s.calls <= (uint64_t)(ST_THREADS * N),
                  "W1 calls %" PRIu64 " (own %" PRIu64 ")", s.calls, t.calls);
            last_calls = s.calls;
        }
    }
    w1_tally[a->id] = t;
    return NULL;
}

static void part_w1(void) {
    rs_twindow_init(&tw, 1000000000LL, 10);
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, w1_worker, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);
    tri want = {0, 0, 0};
    for (int i = 0; i < ST_THREADS; i++) {
        want.calls += w1_tally[i].calls;
        want.failures += w1_tally[i].failures;
        want.slow += w1_tally[i].slow;
    }
    rs_wsnapshot s = rs_twindow_snapshot(&tw, W1_NOW);
    CHECK_EQ_U64(s.calls, (uint64_t)(ST_THREADS * N), "W1 calls");
    CHECK_EQ_U64(want.calls, (uint64_t)(ST_THREADS * N), "W1 tallied calls");
    CHECK_EQ_U64(s.failures, want.failures, "W1 failures");
    CHECK_EQ_U64(s.slow, want.slow, "W1 slow");
    /* The same bucket seen from the end of the window still counts; one bucket
     * past the window it no longer does. */
    int64_t width = tw.width_ns;
    rs_wsnapshot late = rs_twindow_snapshot(&tw, W1_NOW + 9 * width);
    CHECK_EQ_U64(late.calls, s.calls, "W1 calls at the window's far edge");
    rs_wsnapshot gone = rs_twindow_snapshot(&tw, W1_NOW + 10 * width);
    CHECK_EQ_U64(gone.calls + gone.failures + gone.slow, 0, "W1 counts one window later");
    printf("  W1 same instant: calls %" PRIu64 " failures %" PRIu64 " slow %" PRIu64 ", exact\n",
           s.calls, s.failures, s.slow);
}

/* ---------------- W2 ---------------- */

#define W2_NB 4u
#define W2_WIDTH 1000LL
#define W2_BASE 1000LL /* first bucket index: tags need not start at 0 */
#define W2_LAG ((int64_t)W2_NB - 1)

static int64_t w2_k;       /* ops per bucket per thread */
static int64_t w2_buckets; /* buckets walked */
static _Atomic uint64_t *w2_calls, *w2_fail, *w2_slow;
static _Atomic int64_t *w2_done;
static _Atomic int64_t w2_progress[ST_THREADS]; /* buckets completed by each thread */
static _Atomic int64_t w2_checked;

static int64_t w2_bucket_of(int64_t j) {
    int64_t b = j / w2_k;
    return b < w2_buckets ? b : w2_buckets - 1; /* the remainder goes to the last bucket */
}

static void w2_wait_for(int64_t b) {
    for (;;) {
        int64_t min = INT64_MAX;
        for (int i = 0; i < ST_THREADS; i++) {
            int64_t p = atomic_load(&w2_progress[i]);
            if (p < min) min = p;
        }
        if (min >= b - W2_LAG) return;
        sched_yield();
    }
}

static void w2_check_bucket(int64_t b) {
    uint32_t tag = (uint32_t)(W2_BASE + b);
    rs_wbucket *wb = &tw.buckets[(uint64_t)(W2_BASE + b) % W2_NB];
    CHECK_EQ_U64(rs_tagged_read(&wb->calls, tag), atomic_load(&w2_calls[b]), "W2 bucket calls");
    CHECK_EQ_U64(rs_tagged_read(&wb->failures, tag), atomic_load(&w2_fail[b]), "W2 bucket failures");
    CHECK_EQ_U64(rs_tagged_read(&wb->slow, tag), atomic_load(&w2_slow[b]), "W2 bucket slow");
    atomic_fetch_add(&w2_checked, 1);
}

static void *w2_worker(void *p) {
    st_arg *a = p;
    const int t = a->id;
    uint64_t meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    int64_t cur = -1;
    tri bt = {0, 0, 0};
    for (int64_t j = 0; j <= N; j++) {
        int64_t b = j < N ? w2_bucket_of(j) : -2;
        if (b != cur) {
            if (cur >= 0) {
                /* Finish bucket `cur`: publish tallies, then the done count. */
                atomic_fetch_add(&w2_calls[cur], bt.calls);
                atomic_fetch_add(&w2_fail[cur], bt.failures);
                atomic_fetch_add(&w2_slow[cur], bt.slow);
                if (atomic_fetch_add(&w2_done[cur], 1) == ST_THREADS - 1) w2_check_bucket(cur);
                atomic_store(&w2_progress[t], cur + 1);
                bt = (tri){0, 0, 0};
            }
            if (j == N) break;
            w2_wait_for(b);
            cur = b;
        }
        int64_t idx = W2_BASE + b;
        int64_t now = idx * W2_WIDTH + ((j % w2_k) * 7 + t * 13) % W2_WIDTH;
        uint32_t o = outcome_for(t, j);
        rs_twindow_record(&tw, now, o);
        bt.calls++;
        if (o & RS_OUTCOME_FAILURE) bt.failures++;
        if (o & RS_OUTCOME_SLOW) bt.slow++;
    }
    return NULL;
}

static void part_w2(void) {
    rs_twindow_init(&tw, W2_WIDTH * W2_NB, W2_NB);
    CHECK_EQ_I64(tw.width_ns, W2_WIDTH, "W2 width");
    w2_k = N / 16 < 250 ? (N / 16 > 0 ? N / 16 : 1) : 250;
    w2_buckets = N / w2_k;
    w2_calls = calloc((size_t)w2_buckets, sizeof *w2_calls);
    w2_fail = calloc((size_t)w2_buckets, sizeof *w2_fail);
    w2_slow = calloc((size_t)w2_buckets, sizeof *w2_slow);
    w2_done = calloc((size_t)w2_buckets, sizeof *w2_done);
    if (!w2_calls || !w2_fail || !w2_slow || !w2_done) st_die("calloc");
    for (int i = 0; i < ST_THREADS; i++) atomic_store(&w2_progress[i], 0);
    atomic_store(&w2_checked, 0);

    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, w2_worker, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);

    CHECK_EQ_I64(atomic_load(&w2_checked), w2_buckets, "W2 buckets checked while live");
    uint64_t total = 0;
    for (int64_t b = 0; b < w2_buckets; b++) total += atomic_load(&w2_calls[b]);
    CHECK_EQ_U64(total, (uint64_t)(ST_THREADS * N), "W2 calls recorded");
    /* Snapshots at each bucket of the last window: buckets [first, x]. */
    int64_t last = w2_buckets - 1;
    int64_t first = last - (int64_t)W2_NB + 1 > 0 ? last - (int64_t)W2_NB + 1 : 0;
    for (int64_t x = first; x <= last; x++) {
        tri want = {0, 0, 0};
        for (int64_t b = first; b <= x; b++) {
            want.calls += atomic_load(&w2_calls[b]);
            want.failures += atomic_load(&w2_fail[b]);
            want.slow += atomic_load(&w2_slow[b]);
        }
        rs_wsnapshot s = rs_twindow_snapshot(&tw, (W2_BASE + x) * W2_WIDTH + W2_WIDTH / 2);
        CHECK_EQ_U64(s.calls, want.calls, "W2 snapshot calls");
        if (x == last) {
            CHECK_EQ_U64(s.failures, want.failures, "W2 snapshot failures");
            CHECK_EQ_U64(s.slow, want.slow, "W2 snapshot slow");
        } else if (s.failures != want.failures || s.slow != want.slow) {
            /* x < last is a snapshot lagging the newest record. A bucket older
             * than the window whose calls word was reused by a newer bucket
             * but whose failures / slow word was not (the newer bucket had no
             * failure / slow call: only with very few ops per bucket) is
             * still counted: the W5 bug. */
            st_known_bug("window-lagging-snapshot",
                         "W2 snapshot at bucket %" PRId64 " (newest %" PRId64 "): failures %" PRIu64
                         " slow %" PRIu64 ", want %" PRIu64 " / %" PRIu64, x, last, s.failures,
                         s.slow, want.failures, want.slow);
        }
    }
    printf("  W2 across boundaries: %" PRId64 " buckets x %" PRId64
           " ops/thread, every bucket exact while the next ones were written\n",
           w2_buckets, w2_k);
    free(w2_calls);
    free(w2_fail);
    free(w2_slow);
    free((void *)w2_done);
}

/* ---------------- W3 ---------------- */

static rs_cwindow cw;
static struct {
    int stop;
    int with_reset;
    int64_t ops;
} w3_plan;
static uint64_t w3_recorded[ST_THREADS];
static uint64_t w3_resets;

static void *w3_worker(void *p) {
    st_arg *a = p;
    const int t = a->id;
    int64_t seq = 0;
    uint64_t meet = 0;
    for (;;) {
        st_barrier_wait(&start_bar);
        if (w3_plan.stop) return NULL;
        st_rendezvous_wait(&rv, &meet);
        uint64_t rec = 0, resets = 0;
        const uint32_t size = cw.size;
        for (int64_t j = 0; j < w3_plan.ops; j++, seq++) {
            if (w3_plan.with_reset && t == 0 && (j & 63) == 0) {
                rs_cwindow_reset(&cw);
                resets++;
                continue;
            }
            rs_cwindow_record(&cw, outcome_for(t, seq));
            rec++;
            if (!w3_plan.with_reset && (j & 127) == 0) {
                rs_wsnapshot s = rs_cwindow_snapshot(&cw);
                CHECK(s.calls <= size, "W3 calls %" PRIu64 " > size %u", s.calls, size);
            }
        }
        w3_recorded[t] = rec;
        if (t == 0) w3_resets = resets;
        st_barrier_wait(&end_bar);
    }
}

static void w3_recount(tri *r) {
    *r = (tri){0, 0, 0};
    for (uint32_t i = 0; i < cw.size; i++) {
        uint64_t v = rs_load_relaxed_u64(&cw.ring[i]);
        CHECK((v & ~(uint64_t)(RS_SLOT_VALID | RS_OUTCOME_FAILURE | RS_OUTCOME_SLOW)) == 0 &&
                  (v == 0 || (v & RS_SLOT_VALID)),
              "W3 ring slot %u holds %#" PRIx64, i, v);
        if (v & RS_SLOT_VALID) r->calls++;
        if (v & RS_OUTCOME_FAILURE) r->failures++;
        if (v & RS_OUTCOME_SLOW) r->slow++;
    }
    for (uint32_t i = cw.size; i < RS_COUNT_WINDOW_MAX; i++)
        CHECK_EQ_U64(rs_load_relaxed_u64(&cw.ring[i]), 0, "W3 slot beyond size untouched");
}

static void w3_check_totals(const tri *r, const char *what) {
    int64_t c = rs_load_relaxed_i64(&cw.calls), f = rs_load_relaxed_i64(&cw.failures),
            s = rs_load_relaxed_i64(&cw.slow);
    CHECK(c == (int64_t)r->calls && f == (int64_t)r->failures && s == (int64_t)r->slow,
          "%s: totals calls=%" PRId64 " failures=%" PRId64 " slow=%" PRId64
          ", ring recount calls=%" PRIu64 " failures=%" PRIu64 " slow=%" PRIu64,
          what, c, f, s, r->calls, r->failures, r->slow);
    rs_wsnapshot snap = rs_cwindow_snapshot(&cw);
    CHECK(snap.calls == r->calls && snap.failures == r->failures && snap.slow == r->slow,
          "%s: snapshot disagrees with the recount", what);
}

static void part_w3(void) {
    static const uint32_t sizes[] = {1, 7, 100, 1000, RS_COUNT_WINDOW_MAX};
    const int nsizes = (int)(sizeof sizes / sizeof sizes[0]);
    int64_t rounds = N / 2000;
    if (rounds < 2) rounds = 2;
    if (rounds > 200) rounds = 200;
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    w3_plan.stop = 0;
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, w3_worker, NULL);
    uint64_t total_ops = 0, reset_rounds = 0;
    for (int64_t r = 0; r < rounds; r++) {
        uint32_t size = sizes[r % nsizes];
        rs_cwindow_init(&cw, size);
        w3_plan.with_reset = (int)((r / nsizes) & 1);
        w3_plan.ops = st_round_ops(N, rounds, r);
        /* Small rounds now and then, so a partly filled ring is checked too. */
        if (r % 10 == 3 && w3_plan.ops > 16) w3_plan.ops = 16;
        st_barrier_wait(&start_bar);
        st_barrier_wait(&end_bar);
        uint64_t recorded = 0;
        for (int i = 0; i < ST_THREADS; i++) recorded += w3_recorded[i];
        total_ops += (uint64_t)(ST_THREADS * w3_plan.ops);
        tri rc;
        w3_recount(&rc);
        CHECK_EQ_U64(rs_load_relaxed_u64(&cw.pos), recorded, "W3 pos == records");
        if (w3_plan.with_reset) {
            reset_rounds++;
            CHECK_EQ_U64(recorded + w3_resets, (uint64_t)(ST_THREADS * w3_plan.ops), "W3 ops");
            w3_check_totals(&rc, "W3 after concurrent resets");
        } else {
            CHECK_EQ_U64(recorded, (uint64_t)(ST_THREADS * w3_plan.ops), "W3 records");
            CHECK_EQ_U64(rc.calls, recorded < size ? recorded : size, "W3 calls == min(total, size)");
            w3_check_totals(&rc, "W3 after records");
        }
        rs_cwindow_reset(&cw);
        w3_recount(&rc);
        CHECK_EQ_U64(rc.calls + rc.failures + rc.slow, 0, "W3 ring after a quiet reset");
        w3_check_totals(&rc, "W3 after a quiet reset");
    }
    w3_plan.stop = 1;
    st_barrier_wait(&start_bar);
    st_join(tids);
    printf("  W3 count window: %" PRId64 " rounds (%" PRIu64 " with concurrent reset), %" PRIu64
           " ops, totals == ring recount\n", rounds, reset_rounds, total_ops);
}

/* ---------------- W5: known-bug probe ---------------- */

static void part_w5(void) {
    /* 4 buckets of 1000 ns. Bucket 0: 25 failed calls; bucket 3: 30 good
     * calls. Another thread, whose clock is already in bucket 4, records a
     * success: that restarts slot 0's calls word only. A snapshot taken by a
     * thread whose now is still in bucket 3 then counts bucket 0's failures
     * but not its calls. */
    rs_twindow_init(&tw, 4000, 4);
    for (int i = 0; i < 25; i++) rs_twindow_record(&tw, 0, RS_OUTCOME_FAILURE);
    for (int i = 0; i < 30; i++) rs_twindow_record(&tw, 3000, 0);
    rs_wsnapshot before = rs_twindow_snapshot(&tw, 3999);
    CHECK(before.calls == 55 && before.failures == 25, "W5 setup");
    rs_twindow_record(&tw, 4000, 0);
    rs_wsnapshot s = rs_twindow_snapshot(&tw, 3999);
    bool consistent = s.failures <= s.calls &&
                      ((s.calls == 55 && s.failures == 25) || (s.calls == 30 && s.failures == 0));
    if (!consistent)
        st_known_bug("window-lagging-snapshot",
                     "snapshot at bucket 3 after a record in bucket 4: calls=%" PRIu64
                     " failures=%" PRIu64 " (want 55/25 or 30/0)", s.calls, s.failures);
    else
        printf("  W5 lagging snapshot: consistent (%" PRIu64 "/%" PRIu64 ")\n", s.calls,
               s.failures);
}

int main(int argc, char **argv) {
    N = st_parse_ops(argc, argv);
    double t0 = st_seconds();
    st_barrier_init(&start_bar, ST_THREADS + 1);
    st_barrier_init(&end_bar, ST_THREADS + 1);
    printf("stress_window: %d threads x %" PRId64 " ops per part\n", ST_THREADS, N);
    part_w1();
    part_w2();
    part_w3();
    part_w5();
    pthread_barrier_destroy(&start_bar);
    pthread_barrier_destroy(&end_bar);
    printf("stress_window: ok (%.2f s)\n", st_seconds() - t0);
    return 0;
}
