/* Integer primitives against double-precision references. Bounds are in output quanta (least
 * significant steps of the output encoding), written next to each check: the integer result
 * may differ from round(reference) by at most that many steps. */
#include <math.h>
#include <stdint.h>

#include "quant/rt/int_ops.h"
#include "tests/check.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd64(void) { return check_xorshift(&rng); }
static double urand(void) { return (double)(rnd64() >> 11) / 9007199254740992.0; }
static int irand(int lo, int hi) { return lo + (int)(rnd64() % (uint64_t)(hi - lo + 1)); }

static int32_t ref_q(double y, double s, int32_t z, int bits) {
    return qd_quantize_val(y, s, z, bits);
}

static void test_rounding(void) {
    /* half to even, both signs */
    static const int64_t in[][3] = {{5, 1, 2}, {7, 1, 4}, {-5, 1, -2}, {-7, 1, -4}, {6, 2, 2},
                                    {10, 2, 2}, {-6, 2, -2}, {-10, 2, -2}, {9, 2, 2}, {-9, 2, -2},
                                    {11, 2, 3}, {-11, 2, -3}, {3, 0, 3}, {3, -2, 12}};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        CHECK(qd_rshift_rne(in[i][0], (int)in[i][1]) == in[i][2], "%lld >> %lld = %lld, want %lld",
              (long long)in[i][0], (long long)in[i][1],
              (long long)qd_rshift_rne(in[i][0], (int)in[i][1]), (long long)in[i][2]);
    for (int i = 0; i < 100000; i++) {
        int64_t x = (int64_t)(rnd64() >> 20) - ((int64_t)1 << 43);
        int n = irand(1, 40);
        double want = rint(ldexp((double)x, -n));
        CHECK(qd_rshift_rne(x, n) == (int64_t)want, "x=%lld n=%d", (long long)x, n);
        CHECK((int64_t)qd_rshift_rne128(x, n) == (int64_t)want, "128: x=%lld n=%d", (long long)x, n);
        if (check_case_failed) return;
    }
}

static void test_qmul(void) {
    qd_err err;
    qd_qmul q;
    CHECK(qd_qmul_make(-1, &q, &err) == QD_ERR, "negative accepted");
    CHECK(qd_qmul_make(NAN, &q, &err) == QD_ERR, "nan accepted");
    CHECK(qd_qmul_make(0, &q, &err) == QD_OK && qd_qmul32(12345, q) == 0, "zero");
    /* exact for powers of two, ties to even */
    CHECK(qd_qmul_make(0.5, &q, &err) == QD_OK && qd_qmul32(5, q) == 2 && qd_qmul32(7, q) == 4,
          "0.5 ties");
    for (int i = 0; i < 100000; i++) {
        double M = exp(urand() * 30 - 20); /* 2e-9 .. 2e4 */
        CHECK(qd_qmul_make(M, &q, &err) == QD_OK, "%s", err.msg);
        CHECK(q.m >= (1 << 30) && q.m <= INT32_MAX, "mantissa %d", q.m);
        int32_t x = (int32_t)(rnd64() >> 33) - (1 << 30);
        double want = x * M;
        if (fabs(want) > 1e15) continue;
        /* M is held to 31 significant bits: error <= |x*M| 2^-31 + the rounding step */
        double bound = fabs(want) * ldexp(1, -30) + 1.0;
        CHECK(fabs((double)qd_qmul32(x, q) - want) <= bound, "x=%d M=%g got %lld want %.3f", x, M,
              (long long)qd_qmul32(x, q), want);
        CHECK(qd_qmul64(x, q) == qd_qmul32(x, q), "64 vs 32");
        if (check_case_failed) return;
    }
}

static void test_isqrt(void) {
    for (int i = 0; i < 200000; i++) {
        uint64_t v = rnd64() >> irand(0, 63);
        uint64_t s = qd_isqrt64(v);
        CHECK((__int128)s * s <= v && (__int128)(s + 1) * (s + 1) > v, "isqrt(%llu)=%llu",
              (unsigned long long)v, (unsigned long long)s);
        if (v == 0) continue;
        int e;
        int32_t r = qd_isqrt_inv(v, &e);
        double got = ldexp(r, -e), want = 1.0 / sqrt((double)v);
        /* relative error < 2^-28 (floor of the root at 30 bits, plus the reciprocal rounding) */
        CHECK(fabs(got / want - 1) < ldexp(1, -28), "1/sqrt(%llu) = %g want %g",
              (unsigned long long)v, got, want);
        if (check_case_failed) return;
    }
}

static void test_qadd(void) {
    qd_err err;
    for (int t = 0; t < 200; t++) {
        double sa = exp(urand() * 8 - 10), sb = exp(urand() * 8 - 10), so = exp(urand() * 4 - 8);
        int32_t za = irand(-40000, 40000) / 2, zb = irand(-30000, 30000), zo = irand(-1000, 1000);
        qd_qadd p;
        CHECK(qd_qadd_init(&p, sa, za, sb, zb, so, zo, 16, &err) == QD_OK, "%s", err.msg);
        int16_t a[64], b[64], o[64];
        for (int i = 0; i < 64; i++) { a[i] = (int16_t)irand(-32768, 32767); b[i] = (int16_t)irand(-32768, 32767); }
        qd_qadd_i16(&p, a, b, o, 64);
        for (int i = 0; i < 64; i++) {
            int32_t want = ref_q(sa * (a[i] - za) + sb * (b[i] - zb), so, zo, 16);
            /* bound: 1 step (multipliers carry 31 bits against the double reference) */
            CHECK(abs(o[i] - want) <= 1, "got %d want %d", o[i], want);
        }
        if (check_case_failed) return;
    }
}

static void test_qnorm(void) {
    qd_err err;
    for (int t = 0; t < 200; t++) {
        int n = irand(1, 300), out_bits = t % 2 ? 8 : 16;
        double sx = exp(urand() * 6 - 9), sg = exp(urand() * 4 - 12), sy = exp(urand() * 3 - (out_bits == 8 ? 4 : 10));
        int32_t zx = irand(-2000, 2000), zg = irand(-100, 100), zy = irand(-20, 20);
        float eps = t % 3 ? 1e-5f : 1e-2f;
        qd_qnorm p;
        CHECK(qd_qnorm_init(&p, n, sx, zx, sg, zg, sy, zy, out_bits, eps, &err) == QD_OK, "%s", err.msg);
        int16_t x[300], g[300], o16[300];
        int8_t o8[300];
        int amp = irand(1, 32767);
        for (int i = 0; i < n; i++) {
            x[i] = (int16_t)qd_clamp32(zx + irand(-amp, amp), -32768, 32767);
            g[i] = (int16_t)irand(-32768, 32767);
        }
        qd_qnorm_row(&p, x, g, out_bits == 8 ? (void *)o8 : (void *)o16);
        double ss = 0;
        for (int i = 0; i < n; i++) ss += pow(sx * (x[i] - zx), 2);
        double rstd = 1.0 / sqrt(ss / n + eps);
        for (int i = 0; i < n; i++) {
            double y = sx * (x[i] - zx) * rstd * sg * (g[i] - zg);
            int32_t want = ref_q(y, sy, zy, out_bits);
            int32_t got = out_bits == 8 ? o8[i] : o16[i];
            /* bound: 1 step; eps is rounded to an integer in x's squared units, which moves
             * rstd by < 0.5 sx^2 / (ss/n + eps) relative: tiny unless x is all zero point */
            CHECK(abs(got - want) <= 1, "n=%d bits=%d i=%d got %d want %d (y/sy=%.3f)", n, out_bits,
                  i, got, want, y / sy + zy);
        }
        if (check_case_failed) return;
    }
}

static void test_qsoftmax(void) {
    qd_err err;
    for (int t = 0; t < 300; t++) {
        int n = irand(1, 600);
        double s_in = exp(urand() * 6 - 9); /* scores' step: 1e-4 .. 0.05 */
        double s_out = 1.0 / 65535;
        int32_t zo = t % 2 ? -32768 : irand(-32768, -32000);
        qd_qsoftmax p;
        CHECK(qd_qsoftmax_init(&p, s_in, s_out, zo, 16, &err) == QD_OK, "%s", err.msg);
        int16_t x[600], o[600];
        int64_t work[600];
        int amp = irand(0, 32767);
        for (int j = 0; j < n; j++) x[j] = (int16_t)irand(-amp - 1, amp);
        qd_qsoftmax_row(&p, x, n, o, work);
        double mx = -1e30, sum = 0;
        for (int j = 0; j < n; j++) mx = fmax(mx, s_in * x[j]);
        for (int j = 0; j < n; j++) sum += exp(s_in * x[j] - mx);
        for (int j = 0; j < n; j++) {
            int32_t want = ref_q(exp(s_in * x[j] - mx) / sum, s_out, zo, 16);
            /* bound: 1 step of 2^-16 (the exp tables and reciprocal carry ~30 bits) */
            CHECK(abs(o[j] - want) <= 1, "n=%d j=%d got %d want %d", n, j, o[j], want);
        }
        if (check_case_failed) return;
    }
    /* the exp itself: relative error of 2^-x in Q30 */
    qd_qsoftmax p;
    qd_qsoftmax_init(&p, 0.01, 1.0 / 65535, -32768, 16, &err);
    for (int d = 0; d < 3000; d++) {
        double want = exp(-0.01 * d) * 1073741824.0;
        double got = (double)qd_qexp_q30(&p, d);
        /* |err| <= 2^-20 relative + 1 unit: the Q16 argument costs 2^-17 ln2 */
        CHECK(fabs(got - want) <= want * ldexp(1, -15) + 1, "d=%d got %g want %g", d, got, want);
        if (check_case_failed) return;
    }
}

static double ref_silu(double x) { return x / (1 + exp(-x)); }
static double ref_gelu_tanh(double x) {
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* An activation table built from f against the test's own formula ref: half a step (exact
 * table), on random encodings. */
static void lut_case(double (*f)(double), double (*ref)(double)) {
    for (int t = 0; t < 50; t++) {
        double si = exp(urand() * 4 - 5), so = exp(urand() * 4 - 6);
        int32_t zi = irand(-60, 60), zo = irand(-128, -60);
        int8_t tab[256], out[256], in[256];
        qd_lut8_build(tab, f, si, zi, so, zo);
        for (int q = -128; q < 128; q++) in[q + 128] = (int8_t)q;
        qd_lut8_apply(tab, in, out, 256);
        for (int q = -128; q < 128; q++) {
            double y = ref(si * (q - zi));
            double deq = so * (out[q + 128] - zo);
            double lo = so * (-128 - zo), hi = so * (127 - zo);
            double yc = y < lo ? lo : y > hi ? hi : y;
            CHECK(fabs(deq - yc) <= so * 0.5 + 1e-12, "q=%d deq %g want %g", q, deq, yc);
        }
        if (check_case_failed) return;
    }
}

static void test_silu_lut(void) { lut_case(qd_silu, ref_silu); }

/* Gemma's tanh GELU by the same table */
static void test_gelu_lut(void) { lut_case(qd_gelu_tanh, ref_gelu_tanh); }

static void test_qrope(void) {
    qd_err err;
    for (int t = 0; t < 40; t++) {
        int hd = 2 * irand(1, 64), T = irand(1, 300), nh = irand(1, 4);
        double sx = exp(urand() * 4 - 5), sy = sx * (0.7 + 0.6 * urand());
        int32_t zx = irand(-20, 20), zy = irand(-20, 20);
        float theta = t % 2 ? 10000.0f : 500000.0f;
        qd_qrope p;
        CHECK(qd_qrope_init(&p, T, hd, theta, sx, zx, sy, zy, &err) == QD_OK, "%s", err.msg);
        int8_t x[4 * 128], o[4 * 128];
        for (int pos = 0; pos < T; pos += 1 + T / 7) {
            for (int i = 0; i < nh * hd; i++) x[i] = (int8_t)irand(-128, 127);
            qd_qrope_apply(&p, x, o, nh, pos);
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < hd / 2; i++) {
                    double f = pow(theta, -2.0 * i / hd), c = cos(pos * f), s = sin(pos * f);
                    double a = sx * (x[h * hd + i] - zx), b = sx * (x[h * hd + i + hd / 2] - zx);
                    int32_t w1 = ref_q(a * c - b * s, sy, zy, 8), w2 = ref_q(b * c + a * s, sy, zy, 8);
                    /* bound: 1 step (Q14 tables: |err| <= 2 * 255 * 2^-15 in x's units) */
                    CHECK(abs(o[h * hd + i] - w1) <= 1 && abs(o[h * hd + i + hd / 2] - w2) <= 1,
                          "pos=%d i=%d got %d,%d want %d,%d", pos, i, o[h * hd + i],
                          o[h * hd + i + hd / 2], w1, w2);
                }
        }
        qd_qrope_free(&p);
        if (check_case_failed) return;
    }
}

/* Integer LayerNorm with bias against the double formula on random rows and encodings. */
static void test_qlnorm(void) {
    qd_err err;
    for (int t = 0; t < 200; t++) {
        int n = irand(2, 300), out_bits = t % 2 ? 8 : 16;
        double sx = exp(urand() * 6 - 9), sg = exp(urand() * 4 - 12), sb = exp(urand() * 4 - 14);
        double sy = exp(urand() * 3 - (out_bits == 8 ? 4 : 10));
        int32_t zx = irand(-2000, 2000), zg = irand(-100, 100), zb = irand(-100, 100);
        int32_t zy = irand(-20, 20);
        float eps = t % 3 ? 1e-5f : 1e-2f;
        int16_t x[300], g[300], b[300], o16[300];
        int8_t o8[300];
        int amp = irand(1, 32767), shift = irand(-amp, amp) / 2; /* rows off-centre too */
        for (int i = 0; i < n; i++) {
            x[i] = (int16_t)qd_clamp32(zx + shift + irand(-amp, amp), -32768, 32767);
            g[i] = (int16_t)irand(-32768, 32767);
            b[i] = (int16_t)irand(-32768, 32767);
        }
        qd_qlnorm p;
        CHECK(qd_qlnorm_init(&p, n, sx, zx, sg, zg, sb, zb, b, sy, zy, out_bits, eps, &err) == QD_OK,
              "%s", err.msg);
        qd_qlnorm_row(&p, x, g, out_bits == 8 ? (void *)o8 : (void *)o16);
        double mu = 0, var = 0;
        for (int i = 0; i < n; i++) mu += sx * (x[i] - zx);
        mu /= n;
        for (int i = 0; i < n; i++) var += pow(sx * (x[i] - zx) - mu, 2);
        double rstd = 1.0 / sqrt(var / n + eps);
        for (int i = 0; i < n; i++) {
            double y = (sx * (x[i] - zx) - mu) * rstd * sg * (g[i] - zg) + sb * (b[i] - zb);
            int32_t want = ref_q(y, sy, zy, out_bits);
            int32_t got = out_bits == 8 ? o8[i] : o16[i];
            /* bound: 1 step, as RMSNorm's (eps rounded in x's squared units; the Q16 bias) */
            CHECK(abs(got - want) <= 1, "n=%d bits=%d i=%d got %d want %d (y/sy=%.3f)", n,
                  out_bits, i, got, want, y / sy + zy);
        }
        qd_qlnorm_free(&p);
        if (check_case_failed) return;
    }
}

/* Partial rotary: the first rot dims rotate (pairs i, i + rot/2, frequencies theta^(-2i/rot)),
 * the rest are requantized unrotated; the SIMD layout is off and the ISA entry point agrees. */
static void test_qrope_partial(void) {
    qd_err err;
    for (int t = 0; t < 40; t++) {
        int hd = 2 * irand(2, 64), rot = 2 * irand(1, hd / 2 - 1), T = irand(1, 200), nh = irand(1, 4);
        double sx = exp(urand() * 4 - 5), sy = sx * (0.7 + 0.6 * urand());
        int32_t zx = irand(-20, 20), zy = irand(-20, 20);
        double theta = 10000.0, fr[64];
        for (int i = 0; i < rot / 2; i++) fr[i] = pow(theta, -2.0 * i / rot);
        qd_qrope p;
        CHECK(qd_qrope_init_freq(&p, T, hd, rot, fr, sx, zx, sy, zy, &err) == QD_OK, "%s", err.msg);
        CHECK(p.cx == NULL, "partial rotary must not take the SIMD layout");
        int8_t x[4 * 128], o[4 * 128], o2[4 * 128];
        for (int pos = 0; pos < T; pos += 1 + T / 7) {
            for (int i = 0; i < nh * hd; i++) x[i] = (int8_t)irand(-128, 127);
            qd_qrope_apply(&p, x, o, nh, pos);
            qd_qrope_apply_isa(&p, x, o2, nh, pos, qd_isa_best());
            CHECK(!memcmp(o, o2, (size_t)nh * hd), "isa path differs");
            for (int h = 0; h < nh; h++) {
                const int8_t *xh = x + h * hd, *oh = o + h * hd;
                for (int i = 0; i < rot / 2; i++) {
                    double c = cos(pos * fr[i]), s = sin(pos * fr[i]);
                    double a = sx * (xh[i] - zx), b = sx * (xh[i + rot / 2] - zx);
                    int32_t w1 = ref_q(a * c - b * s, sy, zy, 8), w2 = ref_q(b * c + a * s, sy, zy, 8);
                    CHECK(abs(oh[i] - w1) <= 1 && abs(oh[i + rot / 2] - w2) <= 1,
                          "rot=%d pos=%d i=%d got %d,%d want %d,%d", rot, pos, i, oh[i],
                          oh[i + rot / 2], w1, w2);
                }
                for (int i = rot; i < hd; i++) {
                    int32_t w = ref_q(sx * (xh[i] - zx), sy, zy, 8);
                    CHECK(abs(oh[i] - w) <= 1, "unrotated dim %d of %d: got %d want %d", i, hd,
                          oh[i], w);
                }
            }
        }
        qd_qrope_free(&p);
        if (check_case_failed) return;
    }
}

int main(void) {
    RUN(test_rounding);
    RUN(test_qmul);
    RUN(test_isqrt);
    RUN(test_qadd);
    RUN(test_qnorm);
    RUN(test_qsoftmax);
    RUN(test_silu_lut);
    RUN(test_qrope);
    RUN(test_qlnorm);
    RUN(test_gelu_lut);
    RUN(test_qrope_partial);
    return CHECK_DONE();
}
