/* Layout of a resilio shared-memory file: the core structs of several
 * processes of one host in one mapped file (typically under /dev/shm).
 *
 * Header-only C11, no Python.h. Nothing here reads a clock, sleeps or makes a
 * system call: waiting, timeouts and liveness checks belong to the caller
 * (resilio/backends/shm.py); this header only says where things are and
 * gives the atomic steps of the registry protocol.
 *
 * File layout (every offset from the start of the file, every struct 64-byte
 * aligned because the mapping is page aligned):
 *
 *   0            rs_shm_header (256 bytes): magic, layout version, ABI
 *                fingerprint, total size, table of contents, hash secret,
 *                heap allocator.
 *   slots_offset rs_shm_slot[slot_count] (16 bytes each): the registry.
 *   heap_offset  objects, bump-allocated, never freed. Each object is an
 *                rs_shm_object descriptor (256 bytes: kind, name, creation
 *                parameters) followed by the core struct itself (rs_bucket,
 *                rs_keyed, rs_circuit (with its window), rs_gate,
 *                rs_counters) at descriptor + RS_SHM_OBJECT_SIZE.
 *
 * The file is published whole: its creator writes the header into a private
 * temporary file and then link()s it to the public name (which fails, like
 * O_CREAT|O_EXCL, when the name exists), so an opener never sees a partly
 * written header and the header has no "initializing" state.
 *
 * Registry. A name lives in the slot found by probing (key + i) % slot_count,
 * key being the 64-bit hash of (kind, name) under the file's secret (0 means
 * free, so a hash of 0 is stored as 1). Slot words:
 *   key    0 = free; set once by CAS 0 -> key, never changed again.
 *   state  EMPTY (0)        no object yet;
 *          INIT(token)      (token << 2) | 1: a process is creating the
 *                           object; token names the claim (the caller packs
 *                           its pid and a nonce into it);
 *          READY(offset)    offset | 2: the object's descriptor is at offset
 *                           (64-aligned, so the low bits are free). Final.
 * Creation: CAS EMPTY -> INIT(token); allocate the object from the heap,
 * write its descriptor and initialize its struct (plain and relaxed stores),
 * then CAS INIT(token) -> READY(offset) (release: publishes all of it).
 * Attachers load the state with acquire and wait while it is INIT. If the
 * creator died (or stopped making progress), any attacher takes over with
 * CAS INIT(token) -> INIT(its token) and creates the object afresh in memory
 * of its own; the old creator, should it still be running, writes only to
 * the region it allocated, and its publish CAS fails. No lock is ever held:
 * a process killed at any instant costs at most one leaked heap region.
 *
 * Two names whose 64-bit hashes are equal share a key: a lookup that finds a
 * READY slot of its key holding another name goes on probing.
 *
 * Everyone who can write the file is trusted: the reader checks offsets and
 * sizes against the file so that a damaged file is an error, not a crash,
 * but a hostile writer can change any counter or state word.
 */
#ifndef RS_SHM_H
#define RS_SHM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rs_atomic.h"
#include "rs_circuit.h"
#include "rs_counters.h"
#include "rs_gate.h"
#include "rs_keyed.h"
#include "rs_token_bucket.h"
#include "rs_window.h"

/* "RESILIO" and a NUL: a zero-filled or foreign file never matches. */
#define RS_SHM_MAGIC "RESILIO"
#define RS_SHM_MAGIC_LEN 8
/* Bump on any change to this file's layout or to a struct stored in it. */
#define RS_SHM_VERSION 1u

#define RS_SHM_ALIGN 64u
#define RS_SHM_HEADER_SIZE 256u
#define RS_SHM_OBJECT_SIZE 256u
#define RS_SHM_NAME_MAX 128u
#define RS_SHM_PARAMS 12u

/* Object kinds. */
#define RS_SHM_BUCKET 1u
#define RS_SHM_KEYED 2u
#define RS_SHM_CIRCUIT 3u
#define RS_SHM_GATE 4u
#define RS_SHM_COUNTERS 5u

/* Slot state phases (low two bits of the state word). */
#define RS_SHM_EMPTY 0u
#define RS_SHM_INIT 1u
#define RS_SHM_READY 2u
#define RS_SHM_PHASE_MASK UINT64_C(3)

typedef struct {
    uint8_t magic[RS_SHM_MAGIC_LEN]; /* RS_SHM_MAGIC */
    uint32_t version;                /* RS_SHM_VERSION */
    uint32_t header_size;            /* RS_SHM_HEADER_SIZE */
    uint64_t total_size;             /* bytes of the file */
    uint64_t abi;                    /* rs_shm_abi() of the creator's build */
    uint32_t slot_count;             /* registry slots */
    uint32_t object_size;            /* RS_SHM_OBJECT_SIZE */
    uint64_t slots_offset;           /* = RS_SHM_HEADER_SIZE */
    uint64_t heap_offset;            /* first byte of the object heap */
    uint8_t secret[16];              /* name hashing and keyed tables' SipHash keys */
    int64_t created_unix_ns;         /* informational */
    uint64_t creator_pid;            /* informational */
    rs_atomic_u64 heap_next;         /* next free heap byte (64-aligned) */
    rs_atomic_u64 objects;           /* objects published (a tally) */
    rs_atomic_u64 takeovers;         /* creations taken over from a stalled claim */
    uint64_t reserved[18];
} rs_shm_header;

typedef struct {
    rs_atomic_u64 key;
    rs_atomic_u64 state;
} rs_shm_slot;

typedef struct {
    uint32_t kind;
    uint32_t name_len;
    uint64_t struct_size;           /* bytes of the struct after the descriptor */
    uint64_t claim;                 /* the INIT word of the claim that created it */
    uint64_t params[RS_SHM_PARAMS]; /* creation parameters, per kind (shm.py) */
    uint8_t name[RS_SHM_NAME_MAX];  /* UTF-8, not NUL-terminated */
    uint64_t reserved;
} rs_shm_object;

_Static_assert(sizeof(rs_shm_header) == RS_SHM_HEADER_SIZE, "rs_shm_header must be 256 bytes");
_Static_assert(sizeof(rs_shm_slot) == 16, "rs_shm_slot must be 16 bytes");
_Static_assert(sizeof(rs_shm_object) == RS_SHM_OBJECT_SIZE, "rs_shm_object must be 256 bytes");
_Static_assert(RS_SHM_HEADER_SIZE % RS_SHM_ALIGN == 0, "header keeps the alignment");
_Static_assert(RS_SHM_OBJECT_SIZE % RS_SHM_ALIGN == 0, "descriptor keeps the alignment");

/* Fingerprint of this build's struct layout: two builds that disagree on any
 * size or bound here must not share a file, whatever the layout version says. */
RS_INLINE uint64_t rs_shm_abi(void) {
    const uint64_t parts[] = {
        sizeof(rs_shm_header), sizeof(rs_shm_slot),   sizeof(rs_shm_object),
        sizeof(rs_bucket),     sizeof(rs_keyed),      sizeof(rs_keyed_entry),
        sizeof(rs_circuit),    sizeof(rs_twindow),    sizeof(rs_gate),
        sizeof(rs_counters),   RS_WINDOW_MAX_BUCKETS, RS_COUNTERS_MAX,
        RS_KEYED_PROBE,        (uint64_t)RS_KEYED_SENT_BASE, UINT64_C(0x0102030405060708),
    };
    uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a over the parts' bytes */
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        uint64_t v = parts[i];
        const uint8_t *p = (const uint8_t *)&v; /* native order: catches a byte-order change */
        for (size_t j = 0; j < sizeof(v); j++) {
            h ^= p[j];
            h *= UINT64_C(0x100000001b3);
        }
    }
    return h;
}

RS_INLINE uint64_t rs_shm_align(uint64_t n) {
    return (n + (RS_SHM_ALIGN - 1)) & ~(uint64_t)(RS_SHM_ALIGN - 1);
}

/* First heap byte for a registry of slot_count slots. */
RS_INLINE uint64_t rs_shm_heap_offset(uint32_t slot_count) {
    return rs_shm_align(RS_SHM_HEADER_SIZE + (uint64_t)slot_count * sizeof(rs_shm_slot));
}

/* Write the header of a new file of total_size bytes (zero-filled, not yet
 * visible to any other process: whoever makes it visible orders it). */
RS_INLINE void rs_shm_header_init(rs_shm_header *h, uint64_t total_size, uint32_t slot_count,
                                  const uint8_t secret[16], int64_t unix_ns, uint64_t pid) {
    for (unsigned i = 0; i < RS_SHM_MAGIC_LEN; i++) h->magic[i] = (uint8_t)RS_SHM_MAGIC[i];
    h->version = RS_SHM_VERSION;
    h->header_size = RS_SHM_HEADER_SIZE;
    h->total_size = total_size;
    h->abi = rs_shm_abi();
    h->slot_count = slot_count;
    h->object_size = RS_SHM_OBJECT_SIZE;
    h->slots_offset = RS_SHM_HEADER_SIZE;
    h->heap_offset = rs_shm_heap_offset(slot_count);
    for (unsigned i = 0; i < 16; i++) h->secret[i] = secret[i];
    h->created_unix_ns = unix_ns;
    h->creator_pid = pid;
    /* Relaxed: the file is private until published (see above). */
    rs_store_relaxed_u64(&h->heap_next, h->heap_offset);
    rs_store_relaxed_u64(&h->objects, 0);
    rs_store_relaxed_u64(&h->takeovers, 0);
}

/* Reasons a mapped file is refused (rs_shm_header_check). */
enum {
    RS_SHM_OK = 0,
    RS_SHM_E_MAGIC,   /* not a resilio shared-memory file */
    RS_SHM_E_VERSION, /* another layout version */
    RS_SHM_E_ABI,     /* same version, another struct layout (another build) */
    RS_SHM_E_SIZE,    /* the header's size is not the file's */
    RS_SHM_E_TABLE    /* table of contents out of bounds: damaged */
};

/* Check a header against this build and the file's real size. Only the
 * immutable fields are read, so this needs no ordering. */
RS_INLINE int rs_shm_header_check(const rs_shm_header *h, uint64_t file_size) {
    for (unsigned i = 0; i < RS_SHM_MAGIC_LEN; i++)
        if (h->magic[i] != (uint8_t)RS_SHM_MAGIC[i]) return RS_SHM_E_MAGIC;
    if (h->version != RS_SHM_VERSION) return RS_SHM_E_VERSION;
    if (h->abi != rs_shm_abi() || h->header_size != RS_SHM_HEADER_SIZE ||
        h->object_size != RS_SHM_OBJECT_SIZE)
        return RS_SHM_E_ABI;
    if (h->total_size != file_size) return RS_SHM_E_SIZE;
    if (h->slot_count == 0 || h->slots_offset != RS_SHM_HEADER_SIZE ||
        h->heap_offset != rs_shm_heap_offset(h->slot_count) || h->heap_offset > file_size)
        return RS_SHM_E_TABLE;
    return RS_SHM_OK;
}

RS_INLINE rs_shm_slot *rs_shm_slots(rs_shm_header *h) {
    return (rs_shm_slot *)((char *)h + h->slots_offset);
}

RS_INLINE rs_shm_object *rs_shm_object_at(rs_shm_header *h, uint64_t offset) {
    return (rs_shm_object *)((char *)h + offset);
}

RS_INLINE void *rs_shm_struct_at(rs_shm_header *h, uint64_t offset) {
    return (char *)h + offset + RS_SHM_OBJECT_SIZE;
}

/* ---- registry protocol -------------------------------------------------- */

RS_INLINE uint32_t rs_shm_phase(uint64_t state) { return (uint32_t)(state & RS_SHM_PHASE_MASK); }
RS_INLINE uint64_t rs_shm_init_word(uint64_t token) { return (token << 2) | RS_SHM_INIT; }
RS_INLINE uint64_t rs_shm_ready_word(uint64_t offset) { return offset | RS_SHM_READY; }
RS_INLINE uint64_t rs_shm_ready_offset(uint64_t state) { return state & ~RS_SHM_PHASE_MASK; }

/* The slot of `key` (non-zero) at or after probe position *probe, claiming a
 * free one on the way: sets *probe to its position and returns its index, or
 * -1 when every slot from *probe on belongs to other keys (registry full). */
RS_INLINE int64_t rs_shm_slot_find(rs_shm_header *h, uint64_t key, uint32_t *probe) {
    rs_shm_slot *slots = rs_shm_slots(h);
    uint32_t n = h->slot_count;
    for (uint32_t i = *probe; i < n; i++) {
        uint64_t idx = (key + i) % n;
        rs_shm_slot *s = &slots[idx];
        /* acquire: pairs with the claiming CAS; nothing else is read through
         * the key, but it is cheap and keeps the slot words uniform */
        uint64_t k = rs_load_acquire_u64(&s->key);
        if (k == 0) {
            uint64_t expected = 0;
            /* acq_rel: one claimer wins a free slot; losers see the winner's key */
            if (rs_cas_strong_acq_rel_u64(&s->key, &expected, key)) k = key;
            else k = expected;
        }
        if (k == key) {
            *probe = i;
            return (int64_t)idx;
        }
    }
    return -1;
}

/* acquire: a READY word publishes the descriptor and struct written before it. */
RS_INLINE uint64_t rs_shm_slot_state(rs_shm_header *h, uint64_t idx) {
    return rs_load_acquire_u64(&rs_shm_slots(h)[idx].state);
}

/* One CAS of a slot's state: EMPTY -> INIT (a claim), INIT -> INIT (a
 * takeover) or INIT -> READY (a publication). Returns true on success; else
 * *expected holds the current word. */
RS_INLINE bool rs_shm_slot_cas(rs_shm_header *h, uint64_t idx, uint64_t *expected,
                               uint64_t desired) {
    /* acq_rel: a publication releases the object; a claim or takeover acquires
     * whatever the word it replaces published */
    return rs_cas_strong_acq_rel_u64(&rs_shm_slots(h)[idx].state, expected, desired);
}

/* Reserve size bytes of the heap (rounded up to the alignment): the offset,
 * or 0 when the file has no room left. */
RS_INLINE uint64_t rs_shm_alloc(rs_shm_header *h, uint64_t size) {
    if (size == 0 || size > h->total_size) return 0;
    uint64_t need = rs_shm_align(size);
    /* relaxed: the first guess only; the CAS reads the word again */
    uint64_t cur = rs_load_relaxed_u64(&h->heap_next);
    for (;;) {
        if (cur < h->heap_offset || cur > h->total_size || need > h->total_size - cur) return 0;
        /* acq_rel: regions handed out never overlap */
        if (rs_cas_acq_rel_u64(&h->heap_next, &cur, cur + need)) return cur;
    }
}

#endif /* RS_SHM_H */
