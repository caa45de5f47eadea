/* GGUF block types: known answers per type, and whole models.
 *
 * Known answers: each case picks quants and scales, packs them into a block by the layout's
 * field definitions (the packer below writes bits where the format puts them: element by
 * element), computes the expected value of every element from the format's formula in double,
 * and compares quant/io/ggml_blocks' dequantization. One hand-worked block per type anchors the
 * packer itself (the numbers in its comment are done by hand).
 *
 * Whole models: a reference quantizer here (Q8_0: absmax per 32; Q4_K: per-32 min/max with
 * 6-bit scales and mins) writes stories260K to GGUF; the loaded model's perplexity on the
 * TinyStories excerpt must lie within a stated bound of F32. No tensor of stories260K has a row
 * length that is a multiple of 256 (dim 64, FFN 172), so for Q4_K the model is first widened
 * exactly: zero channels, heads and FFN units, with the norm weights halved and eps quartered
 * so RMSNorm is unchanged; its F32 logits are checked against the original first. */
#include "quant/io/ggml_blocks.h"
#include "quant/io/gguf.h"
#include "quant/io/half.h"
#include "quant/io/load.h"
#include "quant/fp/eval.h"
#include "quant/fp/forward.h"
#include "quant/model.h"
#include "quant/text/data.h"
#include "quant/text/tokenizer.h"

#include "check.h"
#include "gguf_build.h"
#include "synth.h"

#include <math.h>
#include <stdint.h>
#include <unistd.h>

static uint64_t rng = 12345;
static int rnd(int lo, int hi) { return lo + (int)(synth_next(&rng) % (uint64_t)(hi - lo + 1)); }

/* A random normal fp16 scale in [2^-8, 2^-2] with either sign, and its value. */
static uint16_t rnd_half(double *v, int allow_negative) {
    uint16_t h = (uint16_t)((rnd(7, 13) << 10) | rnd(0, 1023));
    if (allow_negative && rnd(0, 1)) h |= 0x8000;
    /* by hand: (1 + m/1024) 2^(e-15) */
    int e = (h >> 10) & 31, m = h & 1023;
    *v = ldexp(1.0 + m / 1024.0, e - 15) * (h & 0x8000 ? -1 : 1);
    return h;
}

static void set_bits(uint8_t *p, int bit, int value, int width) {
    for (int k = 0; k < width; k++)
        if (value >> k & 1) p[(bit + k) / 8] |= (uint8_t)(1u << ((bit + k) % 8));
}

/* Compares n dequantized values with expected ones to float rounding. */
static void expect_block(uint32_t type, const void *blk, const double *want, int n,
                         const char *what) {
    float got[256];
    CHECK(qd_ggml_dequantize(type, blk, got, (size_t)n) == 0, "%s: dequantize", what);
    int bad = 0;
    for (int e = 0; e < n && bad < 3; e++) {
        double tol = 1e-6 * fabs(want[e]) + 1e-9;
        if (fabs(got[e] - want[e]) > tol) {
            CHECK(0, "%s: element %d = %.9g, want %.9g", what, e, got[e], want[e]);
            bad++;
        }
    }
}

/* ---- hand-worked anchors ---- */

static void test_hand_blocks(void) {
    /* Q8_0: d = 0x3800 = 0.5; qs[e] = e - 16 -> value (e - 16) / 2; so element 0 is -8.0,
     * element 31 is 7.5. */
    qd_block_q8_0 q8 = {.d = 0x3800};
    for (int e = 0; e < 32; e++) q8.qs[e] = (int8_t)(e - 16);
    float y[256];
    qd_ggml_dequantize(QD_GGML_Q8_0, &q8, y, 32);
    CHECK(y[0] == -8.0f && y[31] == 7.5f && y[16] == 0.0f, "Q8_0 %g %g", y[0], y[31]);
    /* Q4_0: d = 0x3c00 = 1; qs[0] = 0x9f: element 0 = 0xf - 8 = 7, element 16 = 0x9 - 8 = 1;
     * qs[1] = 0x00: elements 1 and 17 are -8. */
    qd_block_q4_0 q4 = {.d = 0x3c00};
    q4.qs[0] = 0x9f;
    qd_ggml_dequantize(QD_GGML_Q4_0, &q4, y, 32);
    CHECK(y[0] == 7 && y[16] == 1 && y[1] == -8 && y[17] == -8, "Q4_0 %g %g %g", y[0], y[16], y[1]);
    /* Q4_1: d = 2 (0x4000), m = -1 (0xbc00); qs[2] = 0x31: element 2 = 2*1 - 1 = 1,
     * element 18 = 2*3 - 1 = 5. */
    qd_block_q4_1 q41 = {.d = 0x4000, .m = 0xbc00};
    q41.qs[2] = 0x31;
    qd_ggml_dequantize(QD_GGML_Q4_1, &q41, y, 32);
    CHECK(y[2] == 1 && y[18] == 5 && y[0] == -1, "Q4_1 %g %g", y[2], y[18]);
    /* Q5_0: d = 1; qh = 0x00010001 sets the fifth bit of elements 0 and 16; qs[0] = 0x21:
     * element 0 = (1 | 16) - 16 = 1, element 16 = (2 | 16) - 16 = 2, element 1 = 0 - 16. */
    qd_block_q5_0 q5 = {.d = 0x3c00, .qh = {0x01, 0x00, 0x01, 0x00}};
    q5.qs[0] = 0x21;
    qd_ggml_dequantize(QD_GGML_Q5_0, &q5, y, 32);
    CHECK(y[0] == 1 && y[16] == 2 && y[1] == -16, "Q5_0 %g %g %g", y[0], y[16], y[1]);
    /* Q5_1: d = 1, m = 0.5; qh bit 31 -> element 31 = (0xf | 16) + 0.5 with qs[15] = 0xf0. */
    qd_block_q5_1 q51 = {.d = 0x3c00, .m = 0x3800, .qh = {0, 0, 0, 0x80}};
    q51.qs[15] = 0xf0;
    qd_ggml_dequantize(QD_GGML_Q5_1, &q51, y, 32);
    CHECK(y[31] == 31.5f && y[15] == 0.5f, "Q5_1 %g %g", y[31], y[15]);
    /* Q2_K: d = 1, dmin = 0.5; scales[0] = 0x23 (scale 3, min 2): elements 0..15 take bits 0-1
     * of qs[0..15]; qs[0] = 0x02 -> element 0 = 3*2 - 0.5*2 = 5; element 32 takes bits 2-3 of
     * qs[0] (= 0) with scales[2] = 0 -> 0; element 1 = 3*0 - 1 = -1. */
    qd_block_q2_K q2 = {.d = 0x3c00, .dmin = 0x3800};
    q2.scales[0] = 0x23;
    q2.qs[0] = 0x02;
    qd_ggml_dequantize(QD_GGML_Q2_K, &q2, y, 256);
    CHECK(y[0] == 5 && y[1] == -1 && y[32] == 0, "Q2_K %g %g %g", y[0], y[1], y[32]);
    /* Q3_K: d = 1; all scale bytes 0 -> every scale is 0 - 32 = -32, except scale 0 set to
     * 33 (low nibble 1, top bits 2 in byte 8 bits 0-1): 33 - 32 = 1. Element 0: qs[0] bits
     * 0-1 = 3, hmask[0] bit 0 set -> q = 3 -> 1 * 3 = 3. Element 1: qs[1] = 0, hmask clear ->
     * 0 - 4 = -4 -> -4. Element 16 (scale 1 = -32): q = 0 - 4 -> 128. */
    qd_block_q3_K q3 = {.d = 0x3c00};
    q3.scales[0] = 0x01;
    q3.scales[8] = 0x02;
    q3.qs[0] = 0x03;
    q3.hmask[0] = 0x01;
    qd_ggml_dequantize(QD_GGML_Q3_K, &q3, y, 256);
    CHECK(y[0] == 3 && y[1] == -4 && y[16] == 128, "Q3_K %g %g %g", y[0], y[1], y[16]);
    /* Q4_K: d = 1, dmin = 1; sub-block 0: scale = scales[0] & 63 = 2, min = scales[4] & 63 = 1;
     * sub-block 4: scale = (scales[8] & 15) | (scales[0] >> 6) << 4 = 1 | 1 << 4 = 17,
     * min = (scales[8] >> 4) | (scales[4] >> 6) << 4 = 0. qs[0] = 0x57: element 0 = 2*7 - 1
     * = 13, element 32 (sub-block 1: scale 0, min 0) = 0; qs[64] = 0x03: element 128
     * (sub-block 4) = 17*3 = 51. */
    qd_block_q4_K q4k = {.d = 0x3c00, .dmin = 0x3c00};
    q4k.scales[0] = 0x42;
    q4k.scales[4] = 0x01;
    q4k.scales[8] = 0x01;
    q4k.qs[0] = 0x57;
    q4k.qs[64] = 0x03;
    qd_ggml_dequantize(QD_GGML_Q4_K, &q4k, y, 256);
    CHECK(y[0] == 13 && y[32] == 0 && y[128] == 51, "Q4_K %g %g %g", y[0], y[32], y[128]);
    /* Q5_K: as Q4_K's sub-block 0 (scale 2, min 1) with qh[0] bit 0 set: element 0 =
     * 2 * (7 + 16) - 1 = 45; qh[0] bit 1 is sub-block 1's (element 32). */
    qd_block_q5_K q5k = {.d = 0x3c00, .dmin = 0x3c00};
    q5k.scales[0] = 0x02;
    q5k.scales[4] = 0x01;
    q5k.scales[1] = 0x01; /* sub-block 1: scale 1, min 0 */
    q5k.qs[0] = 0x07;
    q5k.qh[0] = 0x03;
    qd_ggml_dequantize(QD_GGML_Q5_K, &q5k, y, 256);
    CHECK(y[0] == 45 && y[32] == 16, "Q5_K %g %g", y[0], y[32]);
    /* Q6_K: d = 1, scales[0] = -2, scales[2] = 3; element 0: ql[0] low nibble 5, qh[0] bits
     * 0-1 = 2 -> (5 | 32) - 32 = 5 -> -10; element 32 (scale 2): ql[32] low nibble 1, qh[0]
     * bits 2-3 = 0 -> 1 - 32 = -31 -> -93. */
    qd_block_q6_K q6 = {.d = 0x3c00};
    q6.scales[0] = -2;
    q6.scales[2] = 3;
    q6.ql[0] = 0x05;
    q6.ql[32] = 0x01;
    q6.qh[0] = 0x02;
    qd_ggml_dequantize(QD_GGML_Q6_K, &q6, y, 256);
    CHECK(y[0] == -10 && y[32] == -93, "Q6_K %g %g", y[0], y[32]);
    /* not a block type, and not whole blocks */
    CHECK(qd_ggml_dequantize(QD_GGML_F32, &q8, y, 32) == -1, "F32 is not a block type");
    CHECK(qd_ggml_dequantize(QD_GGML_Q8_0, &q8, y, 31) == -1, "partial block refused");
}

/* ---- random blocks: pack by element, expect by formula ---- */

#define ROUNDS 40

static void test_random_32(void) {
    for (int r = 0; r < ROUNDS; r++) {
        double d, m, want[32];
        int q[32];
        uint16_t dh = rnd_half(&d, 1), mh = rnd_half(&m, 1);
        /* Q4_0 / Q4_1: element e's nibble sits in byte e % 16, low half for e < 16 */
        qd_block_q4_0 a = {.d = dh};
        qd_block_q4_1 b = {.d = dh, .m = mh};
        for (int e = 0; e < 32; e++) {
            q[e] = rnd(0, 15);
            set_bits(a.qs, (e % 16) * 8 + (e / 16) * 4, q[e], 4);
            set_bits(b.qs, (e % 16) * 8 + (e / 16) * 4, q[e], 4);
        }
        for (int e = 0; e < 32; e++) want[e] = d * (q[e] - 8);
        expect_block(QD_GGML_Q4_0, &a, want, 32, "Q4_0");
        for (int e = 0; e < 32; e++) want[e] = d * q[e] + m;
        expect_block(QD_GGML_Q4_1, &b, want, 32, "Q4_1");
        /* Q5_0 / Q5_1: the fifth bit of element e is bit e of qh */
        qd_block_q5_0 c = {.d = dh};
        qd_block_q5_1 f = {.d = dh, .m = mh};
        for (int e = 0; e < 32; e++) {
            q[e] = rnd(0, 31);
            set_bits(c.qs, (e % 16) * 8 + (e / 16) * 4, q[e] & 15, 4);
            set_bits(f.qs, (e % 16) * 8 + (e / 16) * 4, q[e] & 15, 4);
            set_bits(c.qh, e, q[e] >> 4, 1);
            set_bits(f.qh, e, q[e] >> 4, 1);
        }
        for (int e = 0; e < 32; e++) want[e] = d * (q[e] - 16);
        expect_block(QD_GGML_Q5_0, &c, want, 32, "Q5_0");
        for (int e = 0; e < 32; e++) want[e] = d * q[e] + m;
        expect_block(QD_GGML_Q5_1, &f, want, 32, "Q5_1");
        qd_block_q8_0 g = {.d = dh};
        for (int e = 0; e < 32; e++) {
            g.qs[e] = (int8_t)rnd(-128, 127);
            want[e] = d * g.qs[e];
        }
        expect_block(QD_GGML_Q8_0, &g, want, 32, "Q8_0");
    }
}

/* The 12-byte 6-bit scale/min packing of Q4_K and Q5_K, by sub-block. */
static void pack_k4(uint8_t p[12], const int *sc, const int *mn) {
    for (int s = 0; s < 8; s++) {
        if (s < 4) {
            set_bits(p + s, 0, sc[s], 6);
            set_bits(p + s + 4, 0, mn[s], 6);
        } else {
            set_bits(p + s + 4, 0, sc[s] & 15, 4);
            set_bits(p + s + 4, 4, mn[s] & 15, 4);
            set_bits(p + s - 4, 6, sc[s] >> 4, 2);
            set_bits(p + s, 6, mn[s] >> 4, 2);
        }
    }
}

static void test_random_k(void) {
    for (int r = 0; r < ROUNDS; r++) {
        double d, dmin, want[256];
        int q[256], sc[16], mn[16];
        uint16_t dh = rnd_half(&d, 1), mh = rnd_half(&dmin, 1);
        /* Q2_K: element e = 128 n + 32 j + l has bits 2j of qs[32 n + l]; sub-block e / 16 */
        qd_block_q2_K a = {.d = dh, .dmin = mh};
        for (int s = 0; s < 16; s++) {
            sc[s] = rnd(0, 15), mn[s] = rnd(0, 15);
            a.scales[s] = (uint8_t)(sc[s] | mn[s] << 4);
        }
        for (int e = 0; e < 256; e++) {
            q[e] = rnd(0, 3);
            set_bits(a.qs, (32 * (e / 128) + e % 32) * 8 + 2 * (e % 128 / 32), q[e], 2);
            want[e] = d * sc[e / 16] * q[e] - dmin * mn[e / 16];
        }
        expect_block(QD_GGML_Q2_K, &a, want, 256, "Q2_K");
        /* Q3_K: signed 3-bit quants as 2 low bits + an hmask bit (clear = minus 4) */
        qd_block_q3_K b = {.d = dh};
        for (int s = 0; s < 16; s++) {
            sc[s] = rnd(-32, 31);
            int u = sc[s] + 32;
            set_bits(b.scales + (s < 8 ? s : s - 8), s < 8 ? 0 : 4, u & 15, 4);
            set_bits(b.scales + 8 + s % 4, 2 * (s / 4), u >> 4, 2);
        }
        for (int e = 0; e < 256; e++) {
            q[e] = rnd(-4, 3);
            int n = e / 128, j = e % 128 / 32, l = e % 32;
            set_bits(b.qs, (32 * n + l) * 8 + 2 * j, q[e] >= 0 ? q[e] : q[e] + 4, 2);
            set_bits(b.hmask, l * 8 + 4 * n + j, q[e] >= 0, 1);
            want[e] = d * sc[e / 16] * q[e];
        }
        expect_block(QD_GGML_Q3_K, &b, want, 256, "Q3_K");
        /* Q4_K / Q5_K: 8 sub-blocks of 32 */
        qd_block_q4_K c = {.d = dh, .dmin = mh};
        qd_block_q5_K f = {.d = dh, .dmin = mh};
        for (int s = 0; s < 8; s++) sc[s] = rnd(0, 63), mn[s] = rnd(0, 63);
        pack_k4(c.scales, sc, mn);
        pack_k4(f.scales, sc, mn);
        for (int e = 0; e < 256; e++) {
            int s = e / 32, l = e % 32, byte = 32 * (s / 2) + l, half = s % 2;
            q[e] = rnd(0, 31);
            set_bits(c.qs, byte * 8 + 4 * half, q[e] & 15, 4);
            set_bits(f.qs, byte * 8 + 4 * half, q[e] & 15, 4);
            set_bits(f.qh, l * 8 + s, q[e] >> 4, 1);
        }
        for (int e = 0; e < 256; e++) want[e] = d * sc[e / 32] * (q[e] & 15) - dmin * mn[e / 32];
        expect_block(QD_GGML_Q4_K, &c, want, 256, "Q4_K");
        for (int e = 0; e < 256; e++) want[e] = d * sc[e / 32] * q[e] - dmin * mn[e / 32];
        expect_block(QD_GGML_Q5_K, &f, want, 256, "Q5_K");
        /* Q6_K: element e = 128 n + 32 g + l; low nibble in ql[64 n + 32 (g % 2) + l] (high
         * nibble for g >= 2), top 2 bits at bits 2g of qh[32 n + l] */
        qd_block_q6_K h = {.d = dh};
        for (int s = 0; s < 16; s++) h.scales[s] = (int8_t)rnd(-128, 127);
        for (int e = 0; e < 256; e++) {
            int n = e / 128, g = e % 128 / 32, l = e % 32, u;
            q[e] = rnd(-32, 31);
            u = q[e] + 32;
            set_bits(h.ql, (64 * n + 32 * (g % 2) + l) * 8 + (g < 2 ? 0 : 4), u & 15, 4);
            set_bits(h.qh, (32 * n + l) * 8 + 2 * g, u >> 4, 2);
            want[e] = d * h.scales[e / 16] * q[e];
        }
        expect_block(QD_GGML_Q6_K, &h, want, 256, "Q6_K");
    }
    /* several blocks in a row, unaligned: the second block lands at an odd address */
    uint8_t raw[1 + 2 * sizeof(qd_block_q6_K)];
    qd_block_q6_K two[2] = {{.d = 0x3c00}, {.d = 0x4000}};
    two[0].scales[15] = 1;
    two[1].scales[15] = 1;
    memcpy(raw + 1, two, sizeof two);
    float y[512];
    CHECK(qd_ggml_dequantize(QD_GGML_Q6_K, raw + 1, y, 512) == 0, "two blocks");
    CHECK(y[255] == -32 && y[511] == -64, "block order: %g %g", y[255], y[511]);
}

/* ---- reference quantizers for the whole-model check ---- */

static uint16_t to_half(double v) { return qd_f32_to_fp16((float)v); }

static void quant_q8_0(const float *x, qd_block_q8_0 *b) {
    double amax = 0;
    for (int e = 0; e < 32; e++) amax = fmax(amax, fabs(x[e]));
    b->d = to_half(amax / 127);
    double d = qd_fp16_to_f32(b->d);
    for (int e = 0; e < 32; e++) {
        long q = d > 0 ? lround(x[e] / d) : 0;
        b->qs[e] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
    }
}

/* Q4_K: per sub-block of 32 the range [min(x, 0), max(x)] in 15 steps; the 8 step sizes and
 * the 8 offsets quantized to 6 bits against the block's largest; quants rounded against the
 * quantized step and offset. An all-zero sub-block stays exactly zero. */
static void quant_q4_K(const float *x, qd_block_q4_K *b) {
    double step[8], off[8], smax = 0, omax = 0;
    for (int s = 0; s < 8; s++) {
        double lo = 0, hi = -INFINITY;
        for (int l = 0; l < 32; l++) lo = fmin(lo, x[32 * s + l]), hi = fmax(hi, x[32 * s + l]);
        step[s] = (hi - lo) / 15;
        off[s] = -lo;
        smax = fmax(smax, step[s]);
        omax = fmax(omax, off[s]);
    }
    memset(b, 0, sizeof *b);
    b->d = to_half(smax / 63);
    b->dmin = to_half(omax / 63);
    double d = qd_fp16_to_f32(b->d), dmin = qd_fp16_to_f32(b->dmin);
    int sc[8], mn[8];
    for (int s = 0; s < 8; s++) {
        sc[s] = d > 0 ? (int)fmin(63, lround(step[s] / d)) : 0;
        mn[s] = dmin > 0 ? (int)fmin(63, lround(off[s] / dmin)) : 0;
    }
    pack_k4(b->scales, sc, mn);
    for (int s = 0; s < 8; s++) {
        double ds = d * sc[s], ms = dmin * mn[s];
        for (int l = 0; l < 32; l++) {
            long q = ds > 0 ? lround((x[32 * s + l] + ms) / ds) : 0;
            q = q < 0 ? 0 : q > 15 ? 15 : q;
            set_bits(b->qs, (32 * (s / 2) + l) * 8 + 4 * (s % 2), (int)q, 4);
        }
    }
}

/* Quantizes n floats (whole blocks) into a malloc'd buffer; *bytes set. */
static void *quantize(uint32_t type, const float *x, size_t n, size_t *bytes) {
    size_t be = qd_ggml_block_elems(type), bb = qd_ggml_block_bytes(type);
    uint8_t *out = calloc(n / be, bb);
    for (size_t i = 0; i < n / be; i++) {
        if (type == QD_GGML_Q8_0) quant_q8_0(x + i * be, (qd_block_q8_0 *)(void *)(out + i * bb));
        else quant_q4_K(x + i * be, (qd_block_q4_K *)(void *)(out + i * bb));
    }
    *bytes = n / be * bb;
    return out;
}

static void test_quantizer_roundtrip(void) {
    /* Round trip of N(0,1)-like data: Q8_0's error is at most half a step (amax/254), Q4_K's
     * RMSE at most a third of the widest step (range / 15 over sub-blocks, plus the 6-bit
     * scale rounding). */
    enum { N = 4096 };
    static float x[N], y[N];
    uint64_t s = 7;
    for (int i = 0; i < N; i++) x[i] = (float)(synth_u(&s) + synth_u(&s) + synth_u(&s));
    size_t bytes;
    void *q = quantize(QD_GGML_Q8_0, x, N, &bytes);
    CHECK(bytes == N / 32 * 34, "Q8_0 bytes");
    qd_ggml_dequantize(QD_GGML_Q8_0, q, y, N);
    for (int b = 0; b < N / 32; b++) {
        double amax = 0, worst = 0;
        for (int e = 0; e < 32; e++) amax = fmax(amax, fabs(x[32 * b + e]));
        for (int e = 0; e < 32; e++) worst = fmax(worst, fabs(x[32 * b + e] - y[32 * b + e]));
        if (worst > amax / 254 * 1.01) {
            CHECK(0, "Q8_0 block %d: error %g > half step %g", b, worst, amax / 254);
            break;
        }
    }
    free(q);
    q = quantize(QD_GGML_Q4_K, x, N, &bytes);
    CHECK(bytes == N / 256 * 144, "Q4_K bytes");
    qd_ggml_dequantize(QD_GGML_Q4_K, q, y, N);
    double se = 0, range = 0;
    for (int i = 0; i < N; i++) se += (x[i] - y[i]) * (double)(x[i] - y[i]);
    for (int i = 0; i < N; i++) range = fmax(range, fabs(x[i]));
    double rmse = sqrt(se / N);
    CHECK(rmse < 2 * range / 15 / 3, "Q4_K rmse %g (range %g)", rmse, range);
    CHECK(rmse > 0, "Q4_K must lose something");
    printf("# round trip: Q4_K rmse %.4f on data of range +-%.2f\n", rmse, range);
    free(q);
}

/* ---- whole model ---- */

static char tmpdir[256];

/* Writes m as a llama GGUF: 2-D weights whose rows are whole blocks of type in that type, the
 * rest (norms, and rows of other lengths, as llama.cpp falls back) in F32. q/k rows go back to
 * GGUF's interleaved RoPE order. Returns the number of tensors written in type. */
static int write_gguf(const qd_model *m, const char *path, uint32_t type) {
    const qd_config *c = &m->cfg;
    gguf_build g = {0};
    gb_kv_str(&g, "general.architecture", "llama");
    gb_kv_u32(&g, "llama.embedding_length", (uint32_t)c->dim);
    gb_kv_u32(&g, "llama.feed_forward_length", (uint32_t)c->hidden_dim);
    gb_kv_u32(&g, "llama.block_count", (uint32_t)c->n_layers);
    gb_kv_u32(&g, "llama.attention.head_count", (uint32_t)c->n_heads);
    gb_kv_u32(&g, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    gb_kv_u32(&g, "llama.attention.key_length", (uint32_t)c->head_dim);
    gb_kv_u32(&g, "llama.context_length", (uint32_t)c->max_seq_len);
    gb_kv_f32(&g, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    gb_kv_f32(&g, "llama.rope.freq_base", c->rope_theta);
    int n_typed = 0;
    size_t be = type == QD_GGML_F32 ? 1 : qd_ggml_block_elems(type);
    float *tmp = malloc((size_t)c->vocab_size * c->dim * sizeof(float) +
                        (size_t)QD_MAX_DIM * 4);
#define PUT(name, ptr, rows, cols, rope_heads)                                               \
    do {                                                                                     \
        size_t r_ = (size_t)(rows), c_ = (size_t)(cols), n_ = (r_ ? r_ : 1) * c_;            \
        const float *src_ = (ptr);                                                           \
        if (rope_heads) { /* rotate-half row j*half+i -> interleaved row 2i+j */             \
            int hd_ = c->head_dim, h2_ = hd_ / 2;                                            \
            for (int h_ = 0; h_ < (rope_heads); h_++)                                        \
                for (int i_ = 0; i_ < h2_; i_++)                                             \
                    for (int j_ = 0; j_ < 2; j_++)                                           \
                        memcpy(tmp + ((size_t)h_ * hd_ + 2 * i_ + j_) * c_,                  \
                               src_ + ((size_t)h_ * hd_ + j_ * h2_ + i_) * c_, c_ * 4);      \
            src_ = tmp;                                                                      \
        }                                                                                    \
        uint64_t ne_[2] = {c_, r_};                                                          \
        if (r_ && type != QD_GGML_F32 && c_ % be == 0) {                                     \
            size_t nb_;                                                                      \
            void *q_ = quantize(type, src_, n_, &nb_);                                       \
            gb_tensor(&g, name, type, 2, ne_, q_, nb_);                                      \
            free(q_);                                                                        \
            n_typed++;                                                                       \
        } else {                                                                             \
            gb_tensor(&g, name, QD_GGML_F32, r_ ? 2 : 1, ne_, src_, n_ * 4);                 \
        }                                                                                    \
    } while (0)
    PUT("token_embd.weight", m->tok_emb, c->vocab_size, c->dim, 0);
    PUT("output_norm.weight", m->final_norm, 0, c->dim, 0);
    if (!c->tied_embeddings) PUT("output.weight", m->lm_head, c->vocab_size, c->dim, 0);
    char n[96];
    for (int l = 0; l < c->n_layers; l++) {
        const qd_layer *L = &m->layers[l];
        for (int i = 0; i < qd_n_layer_tensors; i++) {
            const qd_layer_tensor *t = &qd_layer_tensors[i];
            if (!qd_layer_tensor_on(c, t)) continue;
            snprintf(n, sizeof n, "blk.%d.%s", l, t->gguf);
            int heads = qd_layer_get(L, t) == L->wq ? c->n_heads
                        : qd_layer_get(L, t) == L->wk ? c->n_kv_heads : 0;
            PUT(n, qd_layer_get(L, t), qd_layer_dim(c, t->rows), qd_layer_dim(c, t->cols), heads);
        }
    }
#undef PUT
    free(tmp);
    CHECK(gb_write(&g, path) == 0, "write %s", path);
    return n_typed;
}

/* Copies a (rows, cols) matrix into the top-left corner of a 256-column one. */
static void put_block(float *dst, const float *src, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * 256, src + r * cols, cols * 4);
}

/* stories260K widened to 256-wide rows with zero channels, heads and FFN units: the same
 * function (norm weights halved, eps quartered: RMSNorm over 4x the channels with the same
 * sum of squares gives half the inverse RMS). */
static qd_model *widen(const qd_model *m) {
    const qd_config *c = &m->cfg;
    qd_config w = *c;
    int k = 256 / c->dim;
    w.dim = 256;
    w.hidden_dim = 256;
    w.n_heads = c->n_heads * k;
    w.n_kv_heads = c->n_kv_heads * k;
    w.norm_eps = c->norm_eps / (float)k;
    qd_err e = {{0}};
    qd_model *o = qd_model_alloc(&w, &e);
    CHECK(o != NULL, "%s", e.msg);
    if (!o) return NULL;
    size_t D = (size_t)c->dim, Q = (size_t)c->n_heads * c->head_dim,
           KV = (size_t)c->n_kv_heads * c->head_dim, F = (size_t)c->hidden_dim;
    float g = sqrtf((float)k); /* sqrt(256 / 64) = 2 */
    for (int v = 0; v < c->vocab_size; v++)
        memcpy(o->tok_emb + (size_t)v * 256, m->tok_emb + (size_t)v * D, D * 4);
    for (size_t i = 0; i < D; i++) o->final_norm[i] = m->final_norm[i] / g;
    for (int l = 0; l < c->n_layers; l++) {
        const qd_layer *A = &m->layers[l];
        qd_layer *B = &o->layers[l];
        for (size_t i = 0; i < D; i++) {
            B->attn_norm[i] = A->attn_norm[i] / g;
            B->ffn_norm[i] = A->ffn_norm[i] / g;
        }
        put_block(B->wq, A->wq, Q, D);
        put_block(B->wk, A->wk, KV, D);
        put_block(B->wv, A->wv, KV, D);
        put_block(B->wo, A->wo, D, Q);
        put_block(B->w_gate, A->w_gate, F, D);
        put_block(B->w_up, A->w_up, F, D);
        put_block(B->w_down, A->w_down, D, F);
    }
    return o;
}

typedef struct ppl_pair {
    qd_cmp_result r;
    int ok;
} ppl_pair;

static ppl_pair compare(const qd_model *ref, const qd_model *var, const qd_tokens *ts) {
    ppl_pair p = {0};
    qd_err e = {{0}};
    p.ok = qd_eval_compare(qd_fp32_logits_fn, (void *)ref, qd_fp32_logits_fn, (void *)var,
                           ref->cfg.vocab_size, ts->ids, ts->n, 256, &p.r, &e) == 0;
    CHECK(p.ok, "%s", e.msg);
    return p;
}

static void test_whole_model(void) {
    qd_err e = {{0}};
    qd_model *f32 = qd_model_load(fixture("models/stories260K.gguf"), &e);
    CHECK(f32 != NULL, "%s", e.msg);
    qd_tokenizer *tok = qd_tok_load(fixture("models/tok512.bin"), &e);
    CHECK(tok != NULL, "%s", e.msg);
    qd_tokens ts = {0};
    if (!f32 || !tok ||
        qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, 512, &ts, &e) != 0) {
        CHECK(0, "setup: %s", e.msg);
        goto out;
    }
    /* the first 4096 tokens (16 windows of 256) keep the five evaluations quick */
    if (ts.n > 4096) ts.n = 4096;
    ppl_pair base = compare(f32, f32, &ts);
    char p[512];

    /* Q8_0: every matrix whose rows are 32-multiples (all but ffn_down, 172 wide) */
    snprintf(p, sizeof p, "%s/s260k-q8_0.gguf", tmpdir);
    int n8 = write_gguf(f32, p, QD_GGML_Q8_0);
    CHECK(n8 == 1 + 6 * f32->cfg.n_layers, "Q8_0 tensors: %d", n8);
    qd_model *q8 = qd_model_load(p, &e);
    CHECK(q8 != NULL, "%s", e.msg);
    ppl_pair r8 = {0};
    if (q8) {
        CHECK(strcmp(q8->tinfo[0].dtype, "Q8_0") == 0, "tinfo dtype %s", q8->tinfo[0].dtype);
        r8 = compare(f32, q8, &ts);
        /* bound: Q8_0 is within 1% of F32 perplexity on this model (measured -0.02%) */
        CHECK(r8.ok && fabs(r8.r.ppl / base.r.ppl - 1) < 0.01, "Q8_0 ppl %g vs F32 %g",
              r8.r.ppl, base.r.ppl);
        CHECK(r8.r.kl > 0, "Q8_0 changed nothing: the test would not see a broken loader");
    }

    /* Q4_K on the widened model: first the widening itself is exact in F32 */
    qd_model *wide = widen(f32);
    if (!wide) goto out;
    snprintf(p, sizeof p, "%s/s260k-wide-f32.gguf", tmpdir);
    write_gguf(wide, p, QD_GGML_F32);
    qd_model *wide_f32 = qd_model_load(p, &e);
    CHECK(wide_f32 != NULL, "%s", e.msg);
    if (wide_f32) {
        CHECK(memcmp(wide_f32->mem, wide->mem, wide->n_floats * 4) == 0,
              "F32 GGUF writer + loader round trip is exact");
        ppl_pair rw = compare(f32, wide_f32, &ts);
        CHECK(rw.ok && fabs(rw.r.ppl / base.r.ppl - 1) < 1e-4 && rw.r.kl < 1e-6,
              "widened model ppl %g vs %g, kl %g", rw.r.ppl, base.r.ppl, rw.r.kl);
    }
    snprintf(p, sizeof p, "%s/s260k-wide-q4_K.gguf", tmpdir);
    int n4 = write_gguf(wide, p, QD_GGML_Q4_K);
    CHECK(n4 == 1 + 7 * f32->cfg.n_layers, "Q4_K tensors: %d", n4);
    qd_model *q4 = qd_model_load(p, &e);
    CHECK(q4 != NULL, "%s", e.msg);
    if (q4) {
        ppl_pair r4 = compare(f32, q4, &ts);
        /* bound: plain round-to-nearest Q4_K (no scale search; every matrix, the tied
         * embeddings included, where llama.cpp's Q4_K_M would keep them at Q6_K) within 15% of
         * F32 perplexity (measured +12.2%); and further from F32 than Q8_0 is */
        CHECK(r4.ok && r4.r.ppl / base.r.ppl - 1 < 0.15 && r4.r.ppl / base.r.ppl - 1 > -0.02,
              "Q4_K ppl %g vs F32 %g", r4.r.ppl, base.r.ppl);
        CHECK(r4.r.kl > r8.r.kl, "Q4_K kl %g vs Q8_0 kl %g", r4.r.kl, r8.r.kl);
        printf("# stories260K on the excerpt (ctx 256): F32 ppl %.4f; Q8_0 %.4f (%+.2f%%, "
               "KL %.5f); Q4_K (widened) %.4f (%+.2f%%, KL %.5f)\n",
               base.r.ppl, r8.r.ppl, 100 * (r8.r.ppl / base.r.ppl - 1), r8.r.kl, r4.r.ppl,
               100 * (r4.r.ppl / base.r.ppl - 1), r4.r.kl);
    }
    qd_model_free(q4);
    qd_model_free(wide_f32);
    qd_model_free(wide);
    qd_model_free(q8);
out:
    qd_tokens_free(&ts);
    qd_tok_free(tok);
    qd_model_free(f32);
}

int main(void) {
    check_tmpdir(tmpdir, sizeof tmpdir, "gguf_quants");
    RUN(test_hand_blocks);
    RUN(test_random_32);
    RUN(test_random_k);
    RUN(test_quantizer_roundtrip);
    RUN(test_whole_model);
    check_rmtree(tmpdir);
    return CHECK_DONE();
}
