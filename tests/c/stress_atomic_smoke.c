/* Smoke test for the stress harness and csrc/rs_atomic.h: 8 threads add 1 to
 * one counter with rs_add_relaxed_u64; the total must be exact.
 *
 * Usage: stress_atomic_smoke [ops_per_thread]   (default 1000000)
 * Exit 0 on success, 1 on a wrong total, 2 on bad usage or a pthread error.
 */
#define _POSIX_C_SOURCE 200809L /* pthread_barrier_* under -std=c11 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "rs_atomic.h"

#define N_THREADS 8

static rs_atomic_u64 counter;
static pthread_barrier_t start;
static uint64_t ops_per_thread = 1000000;

static void *worker(void *arg) {
    (void)arg;
    /* Start together so the adds really contend. */
    pthread_barrier_wait(&start);
    for (uint64_t i = 0; i < ops_per_thread; i++) {
        rs_add_relaxed_u64(&counter, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 2) {
        fprintf(stderr, "usage: %s [ops_per_thread]\n", argv[0]);
        return 2;
    }
    if (argc == 2) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(argv[1], &end, 10);
        if (errno != 0 || end == argv[1] || *end != '\0' || n == 0) {
            fprintf(stderr, "bad ops_per_thread: %s\n", argv[1]);
            return 2;
        }
        ops_per_thread = (uint64_t)n;
    }

    pthread_t threads[N_THREADS];
    if (pthread_barrier_init(&start, NULL, N_THREADS) != 0) {
        fprintf(stderr, "pthread_barrier_init failed\n");
        return 2;
    }
    for (int i = 0; i < N_THREADS; i++) {
        if (pthread_create(&threads[i], NULL, worker, NULL) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(threads[i], NULL);
    }
    pthread_barrier_destroy(&start);

    uint64_t want = ops_per_thread * N_THREADS;
    uint64_t got = rs_load_relaxed_u64(&counter);
    if (got != want) {
        fprintf(stderr, "counter: got %" PRIu64 ", want %" PRIu64 "\n", got, want);
        return 1;
    }
    printf("ok: %d threads x %" PRIu64 " relaxed adds = %" PRIu64 "\n", N_THREADS,
           ops_per_thread, got);
    return 0;
}
