/* Scalar conversions between IEEE binary16 (fp16), bfloat16 and float32. They are used by the
 * checkpoint readers and writers, so they must be exact for every bit pattern: subnormals,
 * signed zeros, infinities and NaN (a NaN stays a NaN, never becomes an infinity). Narrowing
 * rounds to nearest, ties to even, as PyTorch and numpy do. Header-only: these sit in inner
 * loops of the loaders. */
#ifndef QD_HALF_H
#define QD_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t qd_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float qd_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* fp16 -> f32 is exact: every fp16 value is representable in f32. */
static inline float qd_fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN: keep the payload, which keeps NaN a NaN */
        return qd_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return qd_bits_f32(sign);
        /* subnormal: value = man * 2^-24; normalise into an f32 exponent */
        int e = -14;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        man &= 0x3ffu;
        return qd_bits_f32(sign | (uint32_t)(e + 127) << 23 | man << 13);
    }
    return qd_bits_f32(sign | (exp + 112) << 23 | man << 13);
}

/* f32 -> fp16, round to nearest even; overflow gives +-inf, underflow +-0 or a subnormal. */
static inline uint16_t qd_f32_to_fp16(float f) {
    uint32_t u = qd_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xffu;
    uint32_t man = u & 0x7fffffu;
    if (exp == 0xff) { /* inf, or NaN forced quiet so that truncation cannot make it inf */
        if (man == 0) return sign | 0x7c00u;
        return (uint16_t)(sign | 0x7e00u | (man >> 13));
    }
    int e = (int)exp - 127 + 15; /* fp16 biased exponent */
    if (e >= 0x1f) return sign | 0x7c00u;
    if (e <= 0) {
        /* subnormal or zero in fp16: shift the full significand (with the implicit 1) */
        if (e < -10) return sign; /* below half the smallest subnormal: rounds to zero */
        uint32_t m = man | 0x800000u;
        int shift = 14 - e; /* 24-bit significand down to a 10-bit subnormal field */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q); /* q may carry into the exponent: that is correct */
    }
    uint32_t q = (uint32_t)e << 10 | man >> 13;
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++; /* a carry may reach inf: correct */
    return (uint16_t)(sign | q);
}

/* bf16 is the top half of an f32, so widening is a shift. */
static inline float qd_bf16_to_f32(uint16_t b) {
    return qd_bits_f32((uint32_t)b << 16);
}

/* f32 -> bf16, round to nearest even; NaN stays NaN (quiet bit set). */
static inline uint16_t qd_f32_to_bf16(float f) {
    uint32_t u = qd_f32_bits(f);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu))
        return (uint16_t)((u >> 16) | 0x40u);
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb; /* overflow of the largest finite values into inf is correct RNE */
    return (uint16_t)(u >> 16);
}

#endif
