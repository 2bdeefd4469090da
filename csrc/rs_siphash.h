/* SipHash-2-4 with 128-bit output (the reference implementation's outlen=16
 * variant, https://github.com/veorq/SipHash), header-only C11, no Python.h.
 *
 * The keyed table uses it to turn a client key into a 128-bit fingerprint
 * under a per-table secret, so a client that chooses its keys can neither
 * aim two keys at one fingerprint nor pile keys onto one probe window.
 *
 * Every multi-byte read is assembled byte by byte in little-endian order, so
 * the result is the same on any host byte order and any alignment of `in`.
 * out[0] is the first 8 output bytes read as a little-endian uint64, out[1]
 * the last 8: the reference's 16-byte output is U64TO8_LE(out[0]) followed by
 * U64TO8_LE(out[1]).
 */
#ifndef RS_SIPHASH_H
#define RS_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

#define RS_SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define RS_SIP_ROUND(v0, v1, v2, v3)                                                         \
    do {                                                                                     \
        v0 += v1;                                                                            \
        v1 = RS_SIP_ROTL(v1, 13);                                                            \
        v1 ^= v0;                                                                            \
        v0 = RS_SIP_ROTL(v0, 32);                                                            \
        v2 += v3;                                                                            \
        v3 = RS_SIP_ROTL(v3, 16);                                                            \
        v3 ^= v2;                                                                            \
        v0 += v3;                                                                            \
        v3 = RS_SIP_ROTL(v3, 21);                                                            \
        v3 ^= v0;                                                                            \
        v2 += v1;                                                                            \
        v1 = RS_SIP_ROTL(v1, 17);                                                            \
        v1 ^= v2;                                                                            \
        v2 = RS_SIP_ROTL(v2, 32);                                                            \
    } while (0)

static inline uint64_t rs_sip_load_le64(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

/* SipHash-2-4, 128-bit output, of in[0..len) under the 16-byte key k. */
static inline void rs_siphash128(const uint8_t *in, size_t len, const uint8_t k[16],
                                 uint64_t out[2]) {
    uint64_t k0 = rs_sip_load_le64(k);
    uint64_t k1 = rs_sip_load_le64(k + 8);
    uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k0;
    uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k1 ^ UINT64_C(0xee); /* 128-bit variant */
    uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k0;
    uint64_t v3 = UINT64_C(0x7465646279746573) ^ k1;
    size_t blocks = len / 8;
    size_t left = len & 7;
    uint64_t b = ((uint64_t)len) << 56;

    for (size_t i = 0; i < blocks; i++) {
        uint64_t m = rs_sip_load_le64(in + 8 * i);
        v3 ^= m;
        RS_SIP_ROUND(v0, v1, v2, v3); /* c = 2 compression rounds */
        RS_SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    if (left) { /* (in may be NULL when len == 0: never offset it then) */
        const uint8_t *tail = in + 8 * blocks;
        for (size_t i = 0; i < left; i++) b |= ((uint64_t)tail[i]) << (8 * i);
    }

    v3 ^= b;
    RS_SIP_ROUND(v0, v1, v2, v3);
    RS_SIP_ROUND(v0, v1, v2, v3);
    v0 ^= b;

    v2 ^= UINT64_C(0xee); /* 128-bit variant (0xff for the 64-bit one) */
    RS_SIP_ROUND(v0, v1, v2, v3); /* d = 4 finalization rounds */
    RS_SIP_ROUND(v0, v1, v2, v3);
    RS_SIP_ROUND(v0, v1, v2, v3);
    RS_SIP_ROUND(v0, v1, v2, v3);
    out[0] = v0 ^ v1 ^ v2 ^ v3;

    v1 ^= UINT64_C(0xdd);
    RS_SIP_ROUND(v0, v1, v2, v3);
    RS_SIP_ROUND(v0, v1, v2, v3);
    RS_SIP_ROUND(v0, v1, v2, v3);
    RS_SIP_ROUND(v0, v1, v2, v3);
    out[1] = v0 ^ v1 ^ v2 ^ v3;
}

#endif /* RS_SIPHASH_H */
