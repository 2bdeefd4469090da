/* Stress test of csrc/rs_keyed.h (keyed token buckets) and rs_siphash.h.
 *
 *   cc -O2 -std=c11 -Wall -Wextra -Werror -pthread -Icsrc tests/c/stress_keyed.c
 *   ./a.out [ops_per_thread]          (default 1000000; 100000 under TSan)
 *
 * 8 threads hammer one table and the totals are checked exactly:
 *   siphash  rs_siphash128 against the 64 official SipHash-2-4 128-bit
 *            vectors (key 00..0f, input 00..n-1; veorq/SipHash vectors.h);
 *   (a)      one key, fixed clock (no refill), all threads start together
 *            and race to insert it: exactly `burst` tokens admitted;
 *   (b)      1000 keys in 8192 slots, every thread walking its own clock
 *            forward, threads inserting the same keys in lockstep first;
 *            try_acquire, reserve (with waits) and refunds of reservations:
 *            per key, admitted - refunded tokens
 *                <= burst + (max now - min now + max wait) / interval,
 *            every key inserted exactly once, nothing evicted;
 *   (c)      64 slots, 10,000 keys churning, EVICT then REJECT: no crash,
 *            results in range, counters equal to what the threads saw;
 *   (d)      single-threaded: entry states a stalled or killed thread leaves
 *            behind (helped insert, dead writer, stalled claim, ABA undo);
 *   (e)      new keys raced by all threads while writers stall (100 us
 *            sleeps injected where a thread owns an entry): every key gets
 *            exactly `burst` tokens and is inserted once; then (c) again with
 *            stalls.
 * Exit 0 on success, 1 with a message otherwise. Must also pass under
 * -fsanitize=thread.
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Stall injection: while stall_percent > 0, a thread reaching a point where
 * it owns a table entry sleeps 100 us that often (a preemption), long enough
 * for the others to run out of spins and help or skip. */
static void stall_point(void);
#define RS_KEYED_STALL_POINT() stall_point()
#include "rs_keyed.h"

static int stall_percent = 0; /* set only while no worker runs */
static _Thread_local uint64_t stall_rng = 0;

static void stall_point(void) {
    if (!stall_percent) return;
    if (!stall_rng) stall_rng = (uint64_t)(uintptr_t)&stall_rng | 1u;
    stall_rng ^= stall_rng << 13;
    stall_rng ^= stall_rng >> 7;
    stall_rng ^= stall_rng << 17;
    if (stall_rng % 100 < (uint64_t)stall_percent) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
}

#define THREADS 8

/* ThreadSanitizer runs some 20x slower: a smaller default keeps it to ~30 s. */
#if defined(__SANITIZE_THREAD__)
#define DEFAULT_OPS 100000
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DEFAULT_OPS 100000
#endif
#endif
#ifndef DEFAULT_OPS
#define DEFAULT_OPS 1000000
#endif

static int failures = 0;
#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                             \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fprintf(stderr, "\n");                                                           \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static const uint8_t SECRET[16] = {0x5e, 0xc2, 0x37, 0x91, 0x0a, 0xbb, 0x4c, 0xd8,
                                   0x11, 0x6f, 0xe4, 0x29, 0x83, 0x70, 0x3d, 0xa6};

static rs_keyed *make_table(int64_t interval, int64_t burst, uint64_t cap, uint32_t on_full) {
    if (rs_keyed_check(interval, burst, cap, on_full) != 0) {
        fprintf(stderr, "bad table parameters\n");
        exit(1);
    }
    rs_keyed *t = malloc(rs_keyed_size(cap));
    if (!t) {
        perror("malloc");
        exit(1);
    }
    rs_keyed_init(t, interval, burst, cap, SECRET, on_full);
    return t;
}

static size_t key_name(char *buf, size_t size, unsigned k) {
    int n = snprintf(buf, size, "client-%u", k);
    return (size_t)n;
}

/* ---- SipHash-2-4-128 reference vectors ---------------------------------------- */

static const char *const SIP128[64] = {
    "a3817f04ba25a8e66df67214c7550293",
    "da87c1d86b99af44347659119b22fc45",
    "8177228da4a45dc7fca38bdef60affe4",
    "9c70b60c5267a94e5f33b6b02985ed51",
    "f88164c12d9c8faf7d0f6e7c7bcd5579",
    "1368875980776f8854527a07690e9627",
    "14eeca338b208613485ea0308fd7a15e",
    "a1f1ebbed8dbc153c0b84aa61ff08239",
    "3b62a9ba6258f5610f83e264f31497b4",
    "264499060ad9baabc47f8b02bb6d71ed",
    "00110dc378146956c95447d3f3d0fbba",
    "0151c568386b6677a2b4dc6f81e5dc18",
    "d626b266905ef35882634df68532c125",
    "9869e247e9c08b10d029934fc4b952f7",
    "31fcefac66d7de9c7ec7485fe4494902",
    "5493e99933b0a8117e08ec0f97cfc3d9",
    "6ee2a4ca67b054bbfd3315bf85230577",
    "473d06e8738db89854c066c47ae47740",
    "a426e5e423bf4885294da481feaef723",
    "78017731cf65fab074d5208952512eb1",
    "9e25fc833f2290733e9344a5e83839eb",
    "568e495abe525a218a2214cd3e071d12",
    "4a29b54552d16b9a469c10528eff0aae",
    "c9d184ddd5a9f5e0cf8ce29a9abf691c",
    "2db479ae78bd50d8882a8a178a6132ad",
    "8ece5f042d5e447b5051b9eacb8d8f6f",
    "9c0b53b4b3c307e87eaee08678141f66",
    "abf248af69a6eae4bfd3eb2f129eeb94",
    "0664da1668574b88b935f3027358aef4",
    "aa4b9dc4bf337de90cd4fd3c467c6ab7",
    "ea5c7f471faf6bde2b1ad7d4686d2287",
    "2939b0183223fafc1723de4f52c43d35",
    "7c3956ca5eeafc3e363e9d556546eb68",
    "77c6077146f01c32b6b69d5f4ea9ffcf",
    "37a6986cb8847edf0925f0f1309b54de",
    "a705f0e69da9a8f907241a2e923c8cc8",
    "3dc47d1f29c448461e9e76ed904f6711",
    "0d62bf01e6fc0e1a0d3c4751c5d3692b",
    "8c03468bca7c669ee4fd5e084bbee7b5",
    "528a5bb93baf2c9c4473cce5d0d22bd9",
    "df6a301e95c95dad97ae0cc8c6913bd8",
    "801189902c857f39e73591285e70b6db",
    "e617346ac9c231bb3650ae34ccca0c5b",
    "27d93437efb721aa401821dcec5adf89",
    "89237d9ded9c5e78d8b1c9b166cc7342",
    "4a6d8091bf5e7d651189fa94a250b14c",
    "0e33f96055e7ae893ffc0e3dcf492902",
    "e61c432b720b19d18ec8d84bdc63151b",
    "f7e5aef549f782cf379055a608269b16",
    "438d030fd0b7a54fa837f2ad201a6403",
    "a590d3ee4fbf04e3247e0d27f286423f",
    "5fe2c1a172fe93c4b15cd37caef9f538",
    "2c97325cbd06b36eb2133dd08b3a017c",
    "92c814227a6bca949ff0659f002ad39e",
    "dce850110bd8328cfbd50841d6911d87",
    "67f14984c7da791248e32bb5922583da",
    "1938f2cf72d54ee97e94166fa91d2a36",
    "74481e9646ed49fe0f6224301604698e",
    "57fca5de98a9d6d8006438d0583d8a1d",
    "9fecde1cefdc1cbed4763674d9575359",
    "e3040c00eb28f15366ca73cbd872e740",
    "7697009a6a831dfecca91c5993670f7a",
    "5853542321f567a005d547a4f04759bd",
    "5150d1772f50834a503e069a973fbd7c"
};

static int hexval(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

static void check_siphash(void) {
    uint8_t k[16], in[64];
    for (int i = 0; i < 16; i++) k[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++) in[i] = (uint8_t)i;
    int bad = 0;
    for (int n = 0; n < 64; n++) {
        uint64_t out[2];
        rs_siphash128(in, (size_t)n, k, out);
        for (int b = 0; b < 16; b++) {
            uint8_t got = (uint8_t)(out[b / 8] >> (8 * (b % 8)));
            uint8_t want = (uint8_t)(hexval(SIP128[n][2 * b]) << 4 | hexval(SIP128[n][2 * b + 1]));
            if (got != want) bad++;
        }
        CHECK(bad == 0, "siphash128 vector %d differs", n);
        if (bad) return;
    }
    /* the empty input may come as a NULL pointer */
    uint64_t a[2], b[2];
    rs_siphash128(NULL, 0, k, a);
    rs_siphash128(in, 0, k, b);
    CHECK(a[0] == b[0] && a[1] == b[1], "siphash128(NULL, 0) differs");
    printf("siphash: 64 reference vectors ok\n");
}

/* ---- (a) one key, fixed clock ------------------------------------------------- */

#define A_BURST 1000
#define A_NOW INT64_C(123456789)

typedef struct {
    rs_keyed *t;
    pthread_barrier_t *start;
    long ops;
    int id;
    uint64_t admitted_tokens, admitted, rejected;
} a_arg;

static void *a_worker(void *p) {
    a_arg *a = p;
    const uint8_t *key = (const uint8_t *)"the-one-key";
    uint64_t rng = 0x9E3779B97F4A7C15u * (uint64_t)(a->id + 1);
    pthread_barrier_wait(a->start);
    for (long i = 0; i < a->ops; i++) {
        int64_t n = 1 + (int64_t)(xorshift(&rng) % 3);
        if (i & 1) {
            int64_t r = rs_keyed_try_acquire(a->t, key, 11, A_NOW, n);
            if (r == 0) {
                a->admitted++;
                a->admitted_tokens += (uint64_t)n;
            } else {
                a->rejected++;
                if (r <= 0) return (void *)1;
            }
        } else {
            int64_t r = rs_keyed_reserve(a->t, key, 11, A_NOW, n, 0);
            if (r >= 0) {
                if (r != 0) return (void *)2;
                a->admitted++;
                a->admitted_tokens += (uint64_t)n;
            } else {
                a->rejected++;
            }
        }
    }
    return NULL;
}

static void part_a(long ops) {
    rs_keyed *t = make_table(1000, A_BURST, 1024, RS_KEYED_EVICT);
    pthread_t th[THREADS];
    a_arg args[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        args[i] = (a_arg){.t = t, .start = &start, .ops = ops, .id = i};
        pthread_create(&th[i], NULL, a_worker, &args[i]);
    }
    uint64_t tokens = 0, adm = 0, rej = 0;
    for (int i = 0; i < THREADS; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        CHECK(ret == NULL, "(a) thread %d saw an impossible result (%p)", i, ret);
        tokens += args[i].admitted_tokens;
        adm += args[i].admitted;
        rej += args[i].rejected;
    }
    pthread_barrier_destroy(&start);
    /* Requests take 1..3 tokens, so the threads may leave up to 2 tokens that
     * no request of theirs fitted; draining them one by one must then give
     * exactly burst in total. */
    CHECK(tokens <= A_BURST, "(a) %" PRIu64 " tokens admitted, burst is %d", tokens, A_BURST);
    int64_t left = rs_keyed_available(t, (const uint8_t *)"the-one-key", 11, A_NOW);
    CHECK((uint64_t)left == A_BURST - tokens, "(a) available %" PRId64 " after %" PRIu64
          " of %d tokens", left, tokens, A_BURST);
    while (rs_keyed_try_acquire(t, (const uint8_t *)"the-one-key", 11, A_NOW, 1) == 0) {
        tokens++;
        adm++;
    }
    rej++;
    CHECK(tokens == A_BURST, "(a) exactly %d tokens expected in total, got %" PRIu64, A_BURST,
          tokens);
    CHECK(rs_load_relaxed_u64(&t->admitted) == adm, "(a) admitted counter %" PRIu64
          " != %" PRIu64, rs_load_relaxed_u64(&t->admitted), adm);
    CHECK(rs_load_relaxed_u64(&t->rejected) == rej, "(a) rejected counter %" PRIu64
          " != %" PRIu64, rs_load_relaxed_u64(&t->rejected), rej);
    CHECK(adm + rej == (uint64_t)ops * THREADS + (tokens - (A_BURST - (uint64_t)left)) + 1,
          "(a) %" PRIu64 " decisions counted", adm + rej);
    CHECK(rs_load_relaxed_u64(&t->inserted) == 1, "(a) key inserted %" PRIu64 " times",
          rs_load_relaxed_u64(&t->inserted));
    CHECK(rs_keyed_count(t, A_NOW) == 1, "(a) count %" PRIu64, rs_keyed_count(t, A_NOW));
    printf("(a) one key: %" PRIu64 " tokens admitted of burst %d, %" PRIu64
           " requests refused, inserted once\n",
           tokens, A_BURST, rej);
    free(t);
}

/* ---- (b) many keys, advancing clocks ------------------------------------------ */

#define B_KEYS 1000u
#define B_CAP 8192u
#define B_BURST 5
#define B_STEP INT64_C(1000)             /* ns each thread's clock moves per op */
#define B_INTERVAL (B_STEP * B_KEYS / 2) /* supply ~ 1/4 of the demand per key */
#define B_MAXW (B_INTERVAL * 3)
#define B_T0 INT64_C(1000000000)

typedef struct {
    int64_t min_now, max_now;
    uint64_t admitted_tokens, refunded_tokens;
} b_stat;

typedef struct {
    rs_keyed *t;
    pthread_barrier_t *start;
    long ops;
    int id;
    b_stat *stat; /* B_KEYS entries, private to the thread */
    uint64_t decisions, admitted, rejected;
    int bad;
} b_arg;

static void *b_worker(void *p) {
    b_arg *a = p;
    uint64_t rng = 0xD1B54A32D192ED03u * (uint64_t)(a->id + 1);
    char key[32];
    pthread_barrier_wait(a->start);
    for (long i = 0; i < a->ops; i++) {
        /* first pass: every thread inserts the same keys in the same order */
        unsigned k = i < (long)B_KEYS ? (unsigned)i : (unsigned)(xorshift(&rng) % B_KEYS);
        size_t len = key_name(key, sizeof key, k);
        int64_t now = B_T0 + i * B_STEP + a->id * 7;
        uint64_t r = xorshift(&rng);
        int64_t n = 1 + (int64_t)(r % 2);
        b_stat *st = &a->stat[k];
        if (now < st->min_now) st->min_now = now;
        if (now > st->max_now) st->max_now = now;
        a->decisions++;
        if ((r >> 8) % 4 != 0) {
            int64_t w = rs_keyed_try_acquire(a->t, (const uint8_t *)key, len, now, n);
            if (w < 0) a->bad = 1;
            if (w == 0) {
                a->admitted++;
                st->admitted_tokens += (uint64_t)n;
            } else {
                a->rejected++;
            }
        } else {
            int64_t maxw = (int64_t)((r >> 16) % (uint64_t)(B_MAXW + 1));
            int64_t w = rs_keyed_reserve(a->t, (const uint8_t *)key, len, now, n, maxw);
            if (w >= 0) {
                if (w > maxw) a->bad = 2;
                a->admitted++;
                st->admitted_tokens += (uint64_t)n;
                if (w > 0 && (r >> 40) % 3 == 0) { /* the waiter was cancelled */
                    rs_keyed_refund(a->t, (const uint8_t *)key, len, now, n);
                    st->refunded_tokens += (uint64_t)n;
                }
            } else {
                if (-w <= maxw) a->bad = 3;
                a->rejected++;
            }
        }
    }
    return NULL;
}

static void part_b(long ops) {
    rs_keyed *t = make_table(B_INTERVAL, B_BURST, B_CAP, RS_KEYED_EVICT);
    pthread_t th[THREADS];
    b_arg args[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        b_stat *st = calloc(B_KEYS, sizeof *st);
        for (unsigned k = 0; k < B_KEYS; k++) {
            st[k].min_now = INT64_MAX;
            st[k].max_now = INT64_MIN;
        }
        args[i] = (b_arg){.t = t, .start = &start, .ops = ops, .id = i, .stat = st};
        pthread_create(&th[i], NULL, b_worker, &args[i]);
    }
    uint64_t dec = 0, adm = 0, rej = 0, tokens = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].bad == 0, "(b) thread %d saw an impossible result (%d)", i, args[i].bad);
        dec += args[i].decisions;
        adm += args[i].admitted;
        rej += args[i].rejected;
    }
    pthread_barrier_destroy(&start);
    int64_t worst_slack = INT64_MAX;
    unsigned used = 0;
    for (unsigned k = 0; k < B_KEYS; k++) {
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        uint64_t a = 0, r = 0;
        for (int i = 0; i < THREADS; i++) {
            b_stat *st = &args[i].stat[k];
            if (st->min_now < lo) lo = st->min_now;
            if (st->max_now > hi) hi = st->max_now;
            a += st->admitted_tokens;
            r += st->refunded_tokens;
        }
        if (lo > hi) continue; /* key never used (tiny ops count) */
        used++;
        tokens += a;
        int64_t bound = B_BURST + (hi - lo + B_MAXW) / B_INTERVAL;
        int64_t net = (int64_t)a - (int64_t)r;
        CHECK(net <= bound, "(b) key %u: %" PRId64 " net tokens admitted, bound %" PRId64, k, net,
              bound);
        if (bound - net < worst_slack) worst_slack = bound - net;
    }
    CHECK(adm + rej == dec, "(b) %" PRIu64 " + %" PRIu64 " != %" PRIu64 " decisions", adm, rej,
          dec);
    CHECK(rs_load_relaxed_u64(&t->admitted) == adm, "(b) admitted counter %" PRIu64
          " != %" PRIu64, rs_load_relaxed_u64(&t->admitted), adm);
    CHECK(rs_load_relaxed_u64(&t->rejected) == rej, "(b) rejected counter %" PRIu64
          " != %" PRIu64, rs_load_relaxed_u64(&t->rejected), rej);
    CHECK(rs_load_relaxed_u64(&t->inserted) == used, "(b) %" PRIu64 " inserts for %u keys",
          rs_load_relaxed_u64(&t->inserted), used);
    CHECK(rs_load_relaxed_u64(&t->evicted) == 0, "(b) %" PRIu64 " evictions",
          rs_load_relaxed_u64(&t->evicted));
    CHECK(adm > 0 && rej > 0, "(b) the limit was never exercised");
    printf("(b) %u keys: %" PRIu64 " decisions, %" PRIu64 " admitted (%" PRIu64
           " tokens), per-key bound held (tightest slack %" PRId64 " tokens), %" PRIu64
           " inserts\n",
           used, dec, adm, tokens, worst_slack, rs_load_relaxed_u64(&t->inserted));
    for (int i = 0; i < THREADS; i++) free(args[i].stat);
    free(t);
}

/* ---- (c) tiny table under churn --------------------------------------------- */

#define C_KEYS 10000u
#define C_CAP 64u
#define C_BURST 4
#define C_INTERVAL INT64_C(1000000)
#define C_T0 INT64_C(5000000000)

typedef struct {
    rs_keyed *t;
    pthread_barrier_t *start;
    long ops;
    int id;
    uint64_t decisions, admitted, rejected;
    int64_t last_now;
    int bad;
} c_arg;

static void *c_worker(void *p) {
    c_arg *a = p;
    uint64_t rng = 0xA0761D6478BD642Fu * (uint64_t)(a->id + 1);
    char key[80];
    /* No wait can exceed: latest clock of any thread + burst + the longest
     * reservation, minus our clock (threads' clocks drift apart freely). */
    const int64_t horizon = C_T0 + a->ops * 100 + 200 + C_BURST * C_INTERVAL + 6 * C_INTERVAL;
    pthread_barrier_wait(a->start);
    for (long i = 0; i < a->ops; i++) {
        uint64_t r = xorshift(&rng);
        /* a few hot keys and a long tail, some of them 64 bytes long */
        unsigned k = (r & 3) == 0 ? (unsigned)((r >> 2) % 8) : (unsigned)((r >> 2) % C_KEYS);
        size_t len = key_name(key, sizeof key, k);
        if (k % 5 == 0) {
            memset(key + len, 'x', 64 - len);
            len = 64;
        }
        /* the clock creeps: entries stay live, so the table is full of them */
        int64_t now = C_T0 + i * 100 + a->id * 13;
        a->last_now = now;
        int64_t n = 1 + (int64_t)((r >> 20) % C_BURST);
        switch ((r >> 32) % 6) {
        case 0:
        case 1:
        case 2: {
            int64_t w = rs_keyed_try_acquire(a->t, (const uint8_t *)key, len, now, n);
            a->decisions++;
            if (w == 0)
                a->admitted++;
            else
                a->rejected++;
            if (w < 0 || w > horizon - now) a->bad = 1;
            break;
        }
        case 3: {
            int64_t maxw = (int64_t)((r >> 40) % (uint64_t)(2 * C_INTERVAL));
            int64_t w = rs_keyed_reserve(a->t, (const uint8_t *)key, len, now, n, maxw);
            a->decisions++;
            if (w >= 0) {
                a->admitted++;
                if (w > maxw) a->bad = 2;
                if (w > 0 && (r & 16)) rs_keyed_refund(a->t, (const uint8_t *)key, len, now, n);
            } else {
                a->rejected++;
                /* refused: needs more than maxw, or (REJECT) no slot for the
                 * key, or the window kept changing (one interval) */
                if (-w > horizon - now) a->bad = 3;
                if (a->t->on_full == RS_KEYED_EVICT && -w <= maxw && -w != C_INTERVAL)
                    a->bad = 6;
            }
            break;
        }
        case 4: {
            int64_t av = rs_keyed_available(a->t, (const uint8_t *)key, len, now);
            if (av < 0 || av > C_BURST) a->bad = 4;
            break;
        }
        default:
            rs_keyed_refund(a->t, (const uint8_t *)key, len, now, n);
            break;
        }
        if (i % 4096 == 0 && rs_keyed_count(a->t, now) > C_CAP) a->bad = 5;
    }
    return NULL;
}

static void part_c(long ops, uint32_t on_full) {
    rs_keyed *t = make_table(C_INTERVAL, C_BURST, C_CAP, on_full);
    pthread_t th[THREADS];
    c_arg args[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        args[i] = (c_arg){.t = t, .start = &start, .ops = ops, .id = i};
        pthread_create(&th[i], NULL, c_worker, &args[i]);
    }
    uint64_t dec = 0, adm = 0, rej = 0;
    int64_t last = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].bad == 0, "(c) thread %d saw an impossible result (%d)", i, args[i].bad);
        dec += args[i].decisions;
        adm += args[i].admitted;
        rej += args[i].rejected;
        if (args[i].last_now > last) last = args[i].last_now;
    }
    pthread_barrier_destroy(&start);
    const char *mode = on_full == RS_KEYED_EVICT ? "EVICT" : "REJECT";
    uint64_t ins = rs_load_relaxed_u64(&t->inserted), ev = rs_load_relaxed_u64(&t->evicted);
    CHECK(adm + rej == dec, "(c %s) %" PRIu64 " + %" PRIu64 " != %" PRIu64, mode, adm, rej, dec);
    CHECK(rs_load_relaxed_u64(&t->admitted) == adm, "(c %s) admitted counter", mode);
    CHECK(rs_load_relaxed_u64(&t->rejected) == rej, "(c %s) rejected counter", mode);
    CHECK(ev <= ins, "(c %s) %" PRIu64 " evictions > %" PRIu64 " inserts", mode, ev, ins);
    if (on_full == RS_KEYED_REJECT) CHECK(ev == 0, "(c REJECT) %" PRIu64 " evictions", ev);
    else CHECK(ev > 0, "(c EVICT) the table never filled up");
    CHECK(ins >= C_CAP, "(c %s) only %" PRIu64 " inserts", mode, ins);
    uint64_t live = rs_keyed_count(t, last);
    CHECK(live <= C_CAP, "(c %s) count %" PRIu64 " > capacity", mode, live);
    /* every entry holds a settled (ready) generation once the threads are gone */
    for (uint64_t i = 0; i < C_CAP; i++) {
        uint64_t s = rs_load_relaxed_u64(&t->entries[i].seq);
        int64_t v = rs_load_relaxed_i64(&t->entries[i].tat);
        CHECK(s != 0 && (s & 1) == 0 && !rs_keyed_is_sent(v),
              "(c %s) entry %" PRIu64 " left in transition (seq %" PRIx64 ")", mode, i, s);
    }
    printf("(c) %s, %u slots / %u keys: %" PRIu64 " decisions (%" PRIu64 " admitted, %" PRIu64
           " refused), %" PRIu64 " inserts, %" PRIu64 " evictions, %" PRIu64 " live at end\n",
           mode, C_CAP, C_KEYS, dec, adm, rej, ins, ev, live);
    free(t);
}

/* ---- (d) protocol states, set up by hand (single thread) ----------------------- */

/* Where key k would live, and its request as the table sees it. */
static rs_keyed_req req_for(rs_keyed *t, const char *k, int64_t now, int64_t n) {
    rs_keyed_req q;
    rs_keyed_req_init(t, &q, (const uint8_t *)k, strlen(k), now);
    q.n = n;
    q.insert = true;
    return q;
}

static unsigned entries_holding(rs_keyed *t, const rs_keyed_req *q) {
    unsigned c = 0;
    for (uint64_t i = 0; i < t->capacity; i++)
        if (rs_load_relaxed_u64(&t->entries[i].fp0) == q->fp0 &&
            rs_load_relaxed_u64(&t->entries[i].fp1) == q->fp1)
            c++;
    return c;
}

static void part_d(void) {
    int failures_before = failures;
    const int64_t now = INT64_C(1000000000), iv = 1000, burst = 3;
    const uint8_t *K = (const uint8_t *)"stalled-key";
    const size_t KL = 11;

    /* d1: a writer inserting K stalls after claiming the slot (busy, nothing
     * written). Lookups of K help it and decide on that slot; when the writer
     * resumes it keeps what the helpers did: K never gets a second bucket. */
    rs_keyed *t = make_table(iv, burst, 64, RS_KEYED_EVICT);
    rs_keyed_req q = req_for(t, "stalled-key", now, 1);
    rs_keyed_entry *home = &t->entries[q.home];
    uint64_t busy = rs_keyed_seq_make(q.tag, 1, 1);
    rs_store_relaxed_u64(&home->seq, busy);
    for (int i = 0; i < burst; i++)
        CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == 0, "(d1) helped acquire %d", i);
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == iv, "(d1) refusal on the helped slot");
    CHECK(rs_load_relaxed_u64(&home->seq) == busy, "(d1) helpers must not publish");
    CHECK(rs_load_relaxed_u64(&t->inserted) == 0, "(d1) nobody else inserted K");
    rs_keyed_hit h;
    int64_t out = 0;
    CHECK(!rs_keyed_publish(t, home, busy, &q, &h, &out), "(d1) the writer's CAS must fail");
    CHECK(rs_load_relaxed_u64(&home->seq) == (busy ^ 1u), "(d1) published");
    CHECK(rs_keyed_available(t, K, KL, now) == 0, "(d1) the helpers' charges are kept");
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == iv, "(d1) still refused after publish");
    CHECK(entries_holding(t, &q) == 1, "(d1) K in %u entries", entries_holding(t, &q));
    free(t);

    /* d2: a writer of another key died in K's home slot: K skips it at once. */
    t = make_table(iv, burst, 64, RS_KEYED_EVICT);
    q = req_for(t, "stalled-key", now, 1);
    home = &t->entries[q.home];
    rs_store_relaxed_u64(&home->seq, rs_keyed_seq_make(q.tag ^ 1u, 7, 1));
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == 0, "(d2) admitted");
    CHECK(rs_keyed_available(t, K, KL, now) == burst - 1, "(d2) one token taken");
    CHECK(rs_load_relaxed_u64(&t->entries[(q.home + 1) % 64].fp0) == q.fp0,
          "(d2) K went to the next slot");
    CHECK(rs_keyed_count(t, now) == 1, "(d2) count");
    free(t);

    /* d3: K's entry is being taken by another thread (tat = sentinel, seq
     * still K's) and that thread stalls: K's lookups wait a bounded time,
     * then treat K as gone (it was being evicted) and insert it again. */
    t = make_table(iv, burst, 64, RS_KEYED_EVICT);
    q = req_for(t, "stalled-key", now, 1);
    home = &t->entries[q.home];
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 3) == 0, "(d3) first");
    uint64_t s = rs_load_relaxed_u64(&home->seq);
    rs_store_relaxed_i64(&home->tat, RS_KEYED_SENT(rs_keyed_next_gen(rs_keyed_seq_gen(s))));
    CHECK(rs_keyed_available(t, K, KL, now) == burst, "(d3) K unknown while being taken");
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == 0, "(d3) K gets a new bucket");
    CHECK(rs_load_relaxed_u64(&t->inserted) == 2, "(d3) inserted twice");
    CHECK(entries_holding(t, &q) == 2, "(d3) old entry still claimed, new one live");
    CHECK(rs_keyed_count(t, now) == 1, "(d3) the claimed entry is not counted");
    free(t);

    /* d4: ABA on a claim: the slot was reused and its tat equals the value we
     * validated under the old seq: the claim undoes itself. */
    t = make_table(iv, burst, 64, RS_KEYED_EVICT);
    q = req_for(t, "stalled-key", now, 1);
    home = &t->entries[q.home];
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == 0, "(d4) first");
    s = rs_load_relaxed_u64(&home->seq);
    int64_t v = rs_load_relaxed_i64(&home->tat);
    rs_keyed_req other = req_for(t, "other-key", now, 1);
    CHECK(rs_keyed_claim(t, home, s + 2, v, false, &other, &h, &out) == RS_KEYED_R_RETRY,
          "(d4) stale claim must fail");
    CHECK(rs_load_relaxed_i64(&home->tat) == v, "(d4) tat restored");
    CHECK(rs_load_relaxed_u64(&home->seq) == s, "(d4) seq untouched");
    CHECK(rs_keyed_available(t, K, KL, now) == burst - 1, "(d4) K intact");
    free(t);
    /* d5: as d3 but the window is full: the insert path must leave the
     * claimed entry out too (not wait on it forever) and evict another. */
    t = make_table(iv, burst, 4, RS_KEYED_EVICT);
    q = req_for(t, "stalled-key", now, 1);
    const char *others[3] = {"k1", "k2", "k3"};
    for (int i = 0; i < 3; i++)
        CHECK(rs_keyed_try_acquire(t, (const uint8_t *)others[i], 2, now, 1 + i) == 0,
              "(d5) fill");
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 3) == 0, "(d5) K");
    home = NULL;
    for (uint64_t i = 0; i < 4; i++)
        if (rs_load_relaxed_u64(&t->entries[i].fp0) == q.fp0) home = &t->entries[i];
    CHECK(home != NULL, "(d5) K's entry");
    if (home) {
        s = rs_load_relaxed_u64(&home->seq);
        rs_store_relaxed_i64(&home->tat, RS_KEYED_SENT(rs_keyed_next_gen(rs_keyed_seq_gen(s))));
    }
    CHECK(rs_keyed_try_acquire(t, K, KL, now, 1) == 0, "(d5) K gets a bucket by eviction");
    CHECK(rs_load_relaxed_u64(&t->evicted) == 1, "(d5) one eviction");
    CHECK(rs_keyed_available(t, (const uint8_t *)"k1", 2, now) == burst, "(d5) k1 was evicted");
    CHECK(rs_keyed_available(t, K, KL, now) == burst - 1, "(d5) K's new bucket");
    free(t);
    if (failures == failures_before)
        printf("(d) protocol states: helped insert, dead writer, stalled claim, ABA undo ok\n");
}

/* ---- (e) insert races with stalled writers ------------------------------------ */

#define E_KEYS 4
#define E_BURST 3

typedef struct {
    rs_keyed *t;
    pthread_barrier_t *start;
    int rounds, id;
    uint64_t *tokens; /* rounds * E_KEYS counters, private to the thread */
    uint64_t decisions;
} e_arg;

static void *e_worker(void *p) {
    e_arg *a = p;
    char key[32];
    for (int r = 0; r < a->rounds; r++) {
        pthread_barrier_wait(a->start);
        for (int m = 0; m < E_BURST + 2; m++) {
            for (int j = 0; j < E_KEYS; j++) {
                /* threads walk the keys in different orders */
                int k = (j + a->id) % E_KEYS;
                int len = snprintf(key, sizeof key, "race-%d-%d", r, k);
                a->decisions++;
                if (rs_keyed_try_acquire(a->t, (const uint8_t *)key, (size_t)len, 777, 1) == 0)
                    a->tokens[r * E_KEYS + k]++;
            }
        }
    }
    return NULL;
}

static void part_e(int rounds) {
    int failures_before = failures;
    rs_keyed *t = make_table(1000, E_BURST, 4096, RS_KEYED_EVICT);
    pthread_t th[THREADS];
    e_arg args[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    stall_percent = 30;
    for (int i = 0; i < THREADS; i++) {
        args[i] = (e_arg){.t = t, .start = &start, .rounds = rounds, .id = i,
                          .tokens = calloc((size_t)rounds * E_KEYS, sizeof(uint64_t))};
        pthread_create(&th[i], NULL, e_worker, &args[i]);
    }
    uint64_t dec = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        dec += args[i].decisions;
    }
    stall_percent = 0;
    pthread_barrier_destroy(&start);
    int bad = 0;
    for (int k = 0; k < rounds * E_KEYS; k++) {
        uint64_t sum = 0;
        for (int i = 0; i < THREADS; i++) sum += args[i].tokens[k];
        if (sum != E_BURST) bad++;
        CHECK(sum == E_BURST || bad > 3, "(e) key %d: %" PRIu64 " tokens admitted, burst %d", k,
              sum, E_BURST);
    }
    CHECK(bad == 0, "(e) %d keys admitted a wrong number of tokens", bad);
    CHECK(rs_load_relaxed_u64(&t->inserted) == (uint64_t)rounds * E_KEYS,
          "(e) %" PRIu64 " inserts for %d keys", rs_load_relaxed_u64(&t->inserted),
          rounds * E_KEYS);
    CHECK(rs_load_relaxed_u64(&t->admitted) + rs_load_relaxed_u64(&t->rejected) == dec,
          "(e) counters");
    if (failures == failures_before)
        printf("(e) %d new keys raced by %d threads with stalled writers: each admitted "
               "exactly burst, each inserted once\n",
               rounds * E_KEYS, THREADS);
    for (int i = 0; i < THREADS; i++) free(args[i].tokens);
    free(t);
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? strtol(argv[1], NULL, 10) : DEFAULT_OPS;
    if (ops < 1) {
        fprintf(stderr, "usage: %s [ops_per_thread >= 1]\n", argv[0]);
        return 2;
    }
    check_siphash();
    part_d();
    part_a(ops);
    part_b(ops);
    part_c(ops / 2 + 1, RS_KEYED_EVICT);
    part_c(ops / 2 + 1, RS_KEYED_REJECT);
    part_e(ops >= 1000000 ? 200 : 50);
    /* churn again with stalled writers: claims, sentinels, skips and undos */
    stall_percent = 2;
    part_c(ops / 50 + 1, RS_KEYED_EVICT);
    stall_percent = 0;
    if (failures) {
        fprintf(stderr, "stress_keyed: %d check(s) failed\n", failures);
        return 1;
    }
    printf("stress_keyed: ok (%d threads, %ld ops per thread)\n", THREADS, ops);
    return 0;
}
