/* Dequantization of ggml's block types. Each function walks the elements of one block in
 * order and, for element e, finds its quant bits and its (sub-)block scale from the layout:
 * written from the field definitions, so the reading is "which bits belong to element e".
 * Blocks are copied out of the file mapping with memcpy because GGUF only aligns tensors, not
 * the 2-byte halves inside odd-sized blocks. */
#include "quant/io/ggml_blocks.h"

#include <string.h>

#include "quant/io/half.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the block structs are read with memcpy: a little-endian host is assumed"
#endif

static float h2f(uint16_t h) { return qd_fp16_to_f32(h); }

/* ---- 32-element blocks: value = d * (q - offset) or d * q + m ---- */

/* 4-bit quant of element e (0..31): low nibbles hold elements 0..15, high nibbles 16..31. */
static int nib32(const uint8_t *qs, int e) { return e < 16 ? qs[e] & 15 : qs[e - 16] >> 4; }

static void dq_q4_0(const qd_block_q4_0 *b, float *y) {
    float d = h2f(b->d);
    for (int e = 0; e < QD_QK; e++) y[e] = d * (float)(nib32(b->qs, e) - 8);
}

static void dq_q4_1(const qd_block_q4_1 *b, float *y) {
    float d = h2f(b->d), m = h2f(b->m);
    for (int e = 0; e < QD_QK; e++) y[e] = d * (float)nib32(b->qs, e) + m;
}

/* Q5: qh is a little-endian 32-bit mask whose bit e is the fifth bit of element e. */
static int q5_32(const uint8_t qh[4], const uint8_t *qs, int e) {
    uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
                 (uint32_t)qh[3] << 24;
    return nib32(qs, e) | (int)((h >> e) & 1) << 4;
}

static void dq_q5_0(const qd_block_q5_0 *b, float *y) {
    float d = h2f(b->d);
    for (int e = 0; e < QD_QK; e++) y[e] = d * (float)(q5_32(b->qh, b->qs, e) - 16);
}

static void dq_q5_1(const qd_block_q5_1 *b, float *y) {
    float d = h2f(b->d), m = h2f(b->m);
    for (int e = 0; e < QD_QK; e++) y[e] = d * (float)q5_32(b->qh, b->qs, e) + m;
}

static void dq_q8_0(const qd_block_q8_0 *b, float *y) {
    float d = h2f(b->d);
    for (int e = 0; e < QD_QK; e++) y[e] = d * (float)b->qs[e];
}

/* ---- 256-element super-blocks ---- */

/* Q2_K: 16 sub-blocks of 16; scales[s] holds the 4-bit scale (low) and 4-bit min (high).
 * Element e = 128 n + 32 j + l takes bits 2j..2j+1 of qs[32 n + l]. */
static void dq_q2_K(const qd_block_q2_K *b, float *y) {
    float d = h2f(b->d), dmin = h2f(b->dmin);
    for (int e = 0; e < QD_QK_K; e++) {
        int n = e / 128, j = e % 128 / 32, l = e % 32;
        int q = b->qs[32 * n + l] >> (2 * j) & 3;
        int sc = b->scales[e / 16];
        y[e] = d * (float)(sc & 15) * (float)q - dmin * (float)(sc >> 4);
    }
}

/* Q3_K: 16 signed 6-bit scales (stored + 32) in 12 bytes: the low 4 bits of scale s in the low
 * nibble of byte s (s < 8) or the high nibble of byte s - 8; its top 2 bits in byte 8 + s % 4
 * at bit 2 (s / 4). Element e = 128 n + 32 j + l: 2 low bits at bits 2j of qs[32 n + l], and
 * its third bit at bit 4 n + j of hmask[l]; a clear bit means q - 4. */
static int q3_scale(const uint8_t sc[12], int s) {
    int lo = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4;
    int hi = sc[8 + s % 4] >> (2 * (s / 4)) & 3;
    return (lo | hi << 4) - 32;
}

static void dq_q3_K(const qd_block_q3_K *b, float *y) {
    float d = h2f(b->d);
    int sc[16];
    for (int s = 0; s < 16; s++) sc[s] = q3_scale(b->scales, s);
    for (int e = 0; e < QD_QK_K; e++) {
        int n = e / 128, j = e % 128 / 32, l = e % 32;
        int q = b->qs[32 * n + l] >> (2 * j) & 3;
        int hbit = b->hmask[l] >> (4 * n + j) & 1;
        y[e] = d * (float)sc[e / 16] * (float)(q - (hbit ? 0 : 4));
    }
}

/* Q4_K / Q5_K: 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min each, packed in 12 bytes:
 * sub-blocks 0..3 in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7
 * have their low 4 bits in the nibbles of bytes 8..11 (scale low, min high) and their top 2
 * bits in the top bits of bytes 0..3 (scales) and 4..7 (mins). */
static void k4_scale_min(const uint8_t p[12], int s, int *sc, int *mn) {
    if (s < 4) {
        *sc = p[s] & 63;
        *mn = p[s + 4] & 63;
    } else {
        *sc = (p[s + 4] & 15) | (p[s - 4] >> 6) << 4;
        *mn = (p[s + 4] >> 4) | (p[s] >> 6) << 4;
    }
}

/* Element e = 64 c + 32 h + l (sub-block 2c + h) is the low (h = 0) or high (h = 1) nibble of
 * qs[32 c + l]; Q5_K's fifth bit is bit 2c + h of qh[l]. */
static void dq_q45_K(uint16_t dh, uint16_t dminh, const uint8_t sc12[12], const uint8_t *qs,
                     const uint8_t *qh, float *y) {
    float d = h2f(dh), dmin = h2f(dminh);
    for (int s = 0; s < 8; s++) {
        int sc, mn;
        k4_scale_min(sc12, s, &sc, &mn);
        float ds = d * (float)sc, ms = dmin * (float)mn;
        int c = s / 2, h = s % 2;
        for (int l = 0; l < 32; l++) {
            int q = h ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
            if (qh) q |= (qh[l] >> s & 1) << 4;
            y[32 * s + l] = ds * (float)q - ms;
        }
    }
}

/* Q6_K: 16 sub-blocks of 16 with signed 8-bit scales. Element e = 128 n + 32 g + l: its low 4
 * bits are the low (g < 2) or high (g >= 2) nibble of ql[64 n + 32 (g % 2) + l], its top 2
 * bits are bits 2g of qh[32 n + l]; q - 32 is the signed quant. */
static void dq_q6_K(const qd_block_q6_K *b, float *y) {
    float d = h2f(b->d);
    for (int e = 0; e < QD_QK_K; e++) {
        int n = e / 128, g = e % 128 / 32, l = e % 32;
        uint8_t lo = b->ql[64 * n + 32 * (g % 2) + l];
        int q = (g < 2 ? lo & 15 : lo >> 4) | (b->qh[32 * n + l] >> (2 * g) & 3) << 4;
        y[e] = d * (float)b->scales[e / 16] * (float)(q - 32);
    }
}

/* ---- dispatch ---- */

int qd_ggml_block_type(uint32_t t) { return qd_ggml_block_bytes(t) != 0; }

size_t qd_ggml_block_elems(uint32_t t) {
    switch (t) {
    case QD_GGML_Q4_0: case QD_GGML_Q4_1: case QD_GGML_Q5_0: case QD_GGML_Q5_1:
    case QD_GGML_Q8_0: return QD_QK;
    case QD_GGML_Q2_K: case QD_GGML_Q3_K: case QD_GGML_Q4_K: case QD_GGML_Q5_K:
    case QD_GGML_Q6_K: return QD_QK_K;
    default: return 0;
    }
}

size_t qd_ggml_block_bytes(uint32_t t) {
    switch (t) {
    case QD_GGML_Q4_0: return sizeof(qd_block_q4_0);
    case QD_GGML_Q4_1: return sizeof(qd_block_q4_1);
    case QD_GGML_Q5_0: return sizeof(qd_block_q5_0);
    case QD_GGML_Q5_1: return sizeof(qd_block_q5_1);
    case QD_GGML_Q8_0: return sizeof(qd_block_q8_0);
    case QD_GGML_Q2_K: return sizeof(qd_block_q2_K);
    case QD_GGML_Q3_K: return sizeof(qd_block_q3_K);
    case QD_GGML_Q4_K: return sizeof(qd_block_q4_K);
    case QD_GGML_Q5_K: return sizeof(qd_block_q5_K);
    case QD_GGML_Q6_K: return sizeof(qd_block_q6_K);
    default: return 0;
    }
}

int qd_ggml_dequantize(uint32_t t, const void *src, float *dst, size_t n) {
    size_t be = qd_ggml_block_elems(t), bb = qd_ggml_block_bytes(t);
    if (!be || n % be) return -1;
    const uint8_t *p = src;
    for (size_t i = 0; i < n / be; i++, p += bb, dst += be) {
        /* A union gives the copy the strictest alignment of the block structs. */
        union {
            qd_block_q4_0 q4_0; qd_block_q4_1 q4_1; qd_block_q5_0 q5_0; qd_block_q5_1 q5_1;
            qd_block_q8_0 q8_0; qd_block_q2_K q2_K; qd_block_q3_K q3_K; qd_block_q4_K q4_K;
            qd_block_q5_K q5_K; qd_block_q6_K q6_K;
        } b;
        memcpy(&b, p, bb);
        switch (t) {
        case QD_GGML_Q4_0: dq_q4_0(&b.q4_0, dst); break;
        case QD_GGML_Q4_1: dq_q4_1(&b.q4_1, dst); break;
        case QD_GGML_Q5_0: dq_q5_0(&b.q5_0, dst); break;
        case QD_GGML_Q5_1: dq_q5_1(&b.q5_1, dst); break;
        case QD_GGML_Q8_0: dq_q8_0(&b.q8_0, dst); break;
        case QD_GGML_Q2_K: dq_q2_K(&b.q2_K, dst); break;
        case QD_GGML_Q3_K: dq_q3_K(&b.q3_K, dst); break;
        case QD_GGML_Q4_K: dq_q45_K(b.q4_K.d, b.q4_K.dmin, b.q4_K.scales, b.q4_K.qs, NULL, dst); break;
        case QD_GGML_Q5_K: dq_q45_K(b.q5_K.d, b.q5_K.dmin, b.q5_K.scales, b.q5_K.qs, b.q5_K.qh, dst); break;
        case QD_GGML_Q6_K: dq_q6_K(&b.q6_K, dst); break;
        }
    }
    return 0;
}
