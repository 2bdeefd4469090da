/* Shared scaffolding for the tests/c/stress_*.c programs.
 *
 * Every program: ST_THREADS pthreads, started together on a barrier, each doing
 * argv[1] operations (default 1000000), then exact checks. Exit codes: 0 pass,
 * 1 a check failed, 2 bad usage or a pthread error (same as the smoke test).
 *
 * A check that fails prints file:line, the condition and a formatted message,
 * then exits 1 at once (from whichever thread saw it): a broken invariant is
 * reported where it was observed, not after a possibly misleading join.
 *
 * Known-core-bug probes: a program may reproduce a bug that the core headers
 * still have. Such probes report "KNOWN CORE BUG" on stderr but do not fail
 * the run unless RS_STRESS_STRICT=1 is set, so the suite stays green while the
 * bug is open and becomes a hard regression test once it is fixed.
 */
#ifndef STRESS_COMMON_H
#define STRESS_COMMON_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* pthread_barrier_*, clock_gettime under -std=c11 */
#endif

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ST_THREADS 8
#define ST_DEFAULT_OPS 1000000

/* ---- failure reporting ---- */

static atomic_int st_failed_once;

_Noreturn static inline void st_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    /* Only the first failing thread prints; the others stop here too. */
    if (atomic_exchange(&st_failed_once, 1) == 0) {
        fprintf(stderr, "%s:%d: CHECK failed: %s\n  ", file, line, cond);
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        fflush(stderr);
        fflush(stdout);
        _Exit(1);
    }
    for (;;) sched_yield(); /* another thread is already exiting */
}

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) st_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);          \
    } while (0)

#define CHECK_EQ_U64(got, want, what)                                          \
    do {                                                                       \
        uint64_t st_g_ = (uint64_t)(got), st_w_ = (uint64_t)(want);            \
        if (st_g_ != st_w_)                                                    \
            st_fail(__FILE__, __LINE__, #got " == " #want,                     \
                    "%s: got %" PRIu64 ", want %" PRIu64, (what), st_g_, st_w_); \
    } while (0)

#define CHECK_EQ_I64(got, want, what)                                          \
    do {                                                                       \
        int64_t st_g_ = (int64_t)(got), st_w_ = (int64_t)(want);               \
        if (st_g_ != st_w_)                                                    \
            st_fail(__FILE__, __LINE__, #got " == " #want,                     \
                    "%s: got %" PRId64 ", want %" PRId64, (what), st_g_, st_w_); \
    } while (0)

_Noreturn static inline void st_die(const char *what) {
    fprintf(stderr, "fatal: %s\n", what);
    fflush(stderr);
    _Exit(2);
}

static inline bool st_strict(void) {
    /* The probed bugs are fixed: a reproduction fails unless RS_STRESS_STRICT=0. */
    const char *s = getenv("RS_STRESS_STRICT");
    return s == NULL || s[0] == '\0' || s[0] != '0';
}

/* A probe of a known, reported core bug: warn, or fail under RS_STRESS_STRICT=1. */
static inline void st_known_bug(const char *name, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "KNOWN CORE BUG reproduced [%s]: ", name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (st_strict()) {
        fprintf(stderr, "RS_STRESS_STRICT is set: failing\n");
        fflush(stderr);
        _Exit(1);
    }
}

/* ---- arguments, time ---- */

static inline int64_t st_parse_ops(int argc, char **argv) {
    if (argc > 2) {
        fprintf(stderr, "usage: %s [ops_per_thread]\n", argv[0]);
        _Exit(2);
    }
    if (argc < 2) return ST_DEFAULT_OPS;
    char *end = NULL;
    errno = 0;
    long long n = strtoll(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || n <= 0 || n > (1LL << 40)) {
        fprintf(stderr, "bad ops_per_thread: %s\n", argv[1]);
        _Exit(2);
    }
    return (int64_t)n;
}

static inline double st_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- threads and barriers ---- */

typedef struct {
    int id;
    void *ctx;
} st_arg;

static inline void st_barrier_init(pthread_barrier_t *b, unsigned count) {
    if (pthread_barrier_init(b, NULL, count) != 0) st_die("pthread_barrier_init");
}

static inline void st_barrier_wait(pthread_barrier_t *b) {
    int rc = pthread_barrier_wait(b);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD) st_die("pthread_barrier_wait");
}

/* Start ST_THREADS workers running fn({id, ctx}). The workers are expected to
 * wait on a start barrier themselves so they begin together. */
static inline void st_spawn(pthread_t *tids, st_arg *args, void *(*fn)(void *), void *ctx) {
    for (int i = 0; i < ST_THREADS; i++) {
        args[i].id = i;
        args[i].ctx = ctx;
        if (pthread_create(&tids[i], NULL, fn, &args[i]) != 0) st_die("pthread_create");
    }
}

static inline void st_join(pthread_t *tids) {
    for (int i = 0; i < ST_THREADS; i++)
        if (pthread_join(tids[i], NULL) != 0) st_die("pthread_join");
}

/* A spinning rendezvous for the workers, used right after a pthread barrier.
 * The barrier orders main's set-up before the workers (happens-before); but
 * waking 8 threads from a barrier on 2 cores is slow, and the first thread
 * awake could finish the interesting part of a round (drain a bucket, trip a
 * circuit) before any other runs. Spinning here until all ST_THREADS workers
 * arrived makes them start within a scheduler slice of each other.
 * `*local` counts this worker's rendezvous; zero `r->n` before spawning. */
typedef struct {
    _Atomic uint64_t n;
} st_rendezvous;

static inline void st_rendezvous_wait(st_rendezvous *r, uint64_t *local) {
    uint64_t goal = ++*local * ST_THREADS;
    atomic_fetch_add(&r->n, 1);
    while (atomic_load(&r->n) < goal) sched_yield();
}

/* ---- small helpers ---- */

/* Deterministic per-thread pseudo-random numbers (xorshift64*). */
typedef struct {
    uint64_t s;
} st_rng;

static inline st_rng st_rng_seed(uint64_t seed) {
    st_rng r = {seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull};
    if (r.s == 0) r.s = 1;
    return r;
}

static inline uint64_t st_next(st_rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Raise *max to v if v is larger (a test-side high-water mark). */
static inline void st_atomic_max_i64(_Atomic int64_t *max, int64_t v) {
    int64_t cur = atomic_load(max);
    while (v > cur && !atomic_compare_exchange_weak(max, &cur, v)) {
    }
}

/* A short busy pause that keeps a permit held across a few hundred ns. */
static inline void st_spin(unsigned n) {
    for (volatile unsigned i = 0; i < n; i++) {
    }
}

/* Split `total` ops per thread into `rounds` rounds: ops in round r. */
static inline int64_t st_round_ops(int64_t total, int64_t rounds, int64_t r) {
    int64_t base = total / rounds;
    return r == rounds - 1 ? total - base * (rounds - 1) : base;
}

#endif /* STRESS_COMMON_H */
