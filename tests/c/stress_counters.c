/* Stress test for csrc/rs_counters.h (relaxed event counters).
 *
 * Usage: stress_counters [ops_per_thread]   (default 1000000)
 * Exit 0 pass, 1 a check failed, 2 bad usage or a pthread error.
 *
 * 8 threads x N ops on a full set of RS_COUNTERS_MAX counters. Op j of thread t
 * adds a delta (1..7, or 2^33 + 1 every 97th op, so sums leave 32 bits) to
 * counter (j * 7 + t * 3) mod 32, and every 64th op adds t + 1 to every
 * counter, so each counter gets adds from every thread; every op also adds 1 to
 * counter 0, which all threads hit all the time. While they run, thread
 * 0 reads all counters every 256 ops: no counter ever goes down or above its
 * final sum. Afterwards each counter equals the exact sum recomputed by the
 * main thread. A second set of 5 counters (n = 5) sits next to the first:
 * adds to one set never leak into the other.
 */
#include "stress_common.h"

#include "rs_counters.h"

static int64_t N;
static pthread_barrier_t start_bar;
static rs_counters cs;
static rs_counters small; /* n = 5, hammered too */
static uint64_t want[RS_COUNTERS_MAX];
static uint64_t want_small[5];
static _Atomic uint64_t reads_checked;
static st_rendezvous rv;

static uint32_t index_of(int t, int64_t j) { return (uint32_t)((j * 7 + t * 3) % RS_COUNTERS_MAX); }
static uint64_t delta_of(int t, int64_t j) {
    if (j % 97 == 0) return (1ull << 33) + 1;
    return 1 + (uint64_t)((j + t) % 7);
}

static void *worker(void *p) {
    st_arg *a = p;
    const int t = a->id;
    uint64_t last[RS_COUNTERS_MAX] = {0};
    uint64_t checks = 0, meet = 0;
    st_barrier_wait(&start_bar);
    st_rendezvous_wait(&rv, &meet);
    for (int64_t j = 0; j < N; j++) {
        rs_counters_add(&cs, index_of(t, j), delta_of(t, j));
        rs_counters_add(&cs, 0, 1); /* one hot counter every thread hits on every op */
        rs_counters_add(&small, (uint32_t)((j + t) % 5), 1);
        if ((j & 63) == 0)
            for (uint32_t i = 0; i < RS_COUNTERS_MAX; i++) rs_counters_add(&cs, i, (uint64_t)t + 1);
        if (t == 0 && (j & 255) == 0) {
            for (uint32_t i = 0; i < RS_COUNTERS_MAX; i++) {
                uint64_t v = rs_counters_get(&cs, i);
                CHECK(v >= last[i] && v <= want[i],
                      "counter %u read %" PRIu64 " (previous %" PRIu64 ", final %" PRIu64 ")", i, v,
                      last[i], want[i]);
                last[i] = v;
            }
            checks++;
        }
    }
    atomic_fetch_add(&reads_checked, checks);
    return NULL;
}

int main(int argc, char **argv) {
    N = st_parse_ops(argc, argv);
    double t0 = st_seconds();
    printf("stress_counters: %d threads x %" PRId64 " ops\n", ST_THREADS, N);
    rs_counters_init(&cs, RS_COUNTERS_MAX);
    rs_counters_init(&small, 5);
    /* Expected sums first: the readers compare against them while running. */
    for (int t = 0; t < ST_THREADS; t++) {
        for (int64_t j = 0; j < N; j++) {
            want[index_of(t, j)] += delta_of(t, j);
            want[0] += 1;
            want_small[(j + t) % 5] += 1;
            if ((j & 63) == 0)
                for (uint32_t i = 0; i < RS_COUNTERS_MAX; i++) want[i] += (uint64_t)t + 1;
        }
    }
    st_barrier_init(&start_bar, ST_THREADS + 1);
    pthread_t tids[ST_THREADS];
    st_arg args[ST_THREADS];
    atomic_store(&rv.n, 0);
    st_spawn(tids, args, worker, NULL);
    st_barrier_wait(&start_bar);
    st_join(tids);
    pthread_barrier_destroy(&start_bar);

    uint64_t total = 0;
    for (uint32_t i = 0; i < RS_COUNTERS_MAX; i++) {
        uint64_t got = rs_counters_get(&cs, i);
        CHECK(got == want[i], "counter %u: got %" PRIu64 ", want %" PRIu64, i, got, want[i]);
        total += got;
    }
    for (uint32_t i = 0; i < 5; i++)
        CHECK(rs_counters_get(&small, i) == want_small[i], "small counter %u: got %" PRIu64
              ", want %" PRIu64, i, rs_counters_get(&small, i), want_small[i]);
    for (uint32_t i = 5; i < RS_COUNTERS_MAX; i++)
        CHECK_EQ_U64(rs_counters_get(&small, i), 0, "small set: unused counter");
    CHECK_EQ_U64(small.n, 5, "small set: n");
    printf("  %d counters exact (sum %" PRIu64 "), %" PRIu64 " concurrent full reads monotonic\n",
           RS_COUNTERS_MAX, total, atomic_load(&reads_checked));
    printf("stress_counters: ok (%.2f s)\n", st_seconds() - t0);
    return 0;
}
