/* Integer primitives of the integer-only runtime (see intops.h for the conventions and the
 * rounding rule). The *_init functions turn real-valued encodings into multipliers and tables
 * with doubles, once; the per-row functions use integers only. */
#include "quant/rt/int_ops.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

/* The AVX-512 paths serve AVX-512 VNNI and AMX-INT8 (whose products only are on tiles). */
static int use512(qd_isa isa) {
    return qd_isa_vector(isa) == QD_ISA_AVX512_VNNI && qd_isa_supported(QD_ISA_AVX512_VNNI);
}

int qd_qmul_make(double M, qd_qmul *out, qd_err *err) {
    if (!(M >= 0) || !isfinite(M) || M >= 1073741824.0)
        return qd_errf(err, "%s: multiplier %g outside [0, 2^30)", __func__, M);
    if (M == 0) {
        out->m = 0;
        out->shift = 0;
        return QD_OK;
    }
    int ex;
    double f = frexp(M, &ex); /* M = f * 2^ex, f in [0.5, 1) */
    int64_t m = (int64_t)rint(f * 2147483648.0);
    if (m == ((int64_t)1 << 31)) { /* f rounded up to 1 */
        m >>= 1;
        ex++;
    }
    out->m = (int32_t)m;
    out->shift = 31 - ex;
    return QD_OK;
}

int32_t qd_quantize_val(double x, double s, int32_t zp, int bits) {
    double q = rint(x / s) + zp;
    double lo = qd_qmin(bits), hi = qd_qmax(bits);
    return (int32_t)(q < lo ? lo : q > hi ? hi : q);
}

/* ---------------------------------------------------------------- residual add */

int qd_qadd_init(qd_qadd *p, double sa, int32_t za, double sb, int32_t zb, double so, int32_t zo,
                 int out_bits, qd_err *err) {
    if (!(sa > 0 && sb > 0 && so > 0))
        return qd_errf(err, "%s: scales must be positive (%g %g %g)", __func__, sa, sb, so);
    double Ma = sa / so, Mb = sb / so, mx = Ma > Mb ? Ma : Mb;
    if (mx >= 1073741824.0) return qd_errf(err, "%s: ratio %g too large", __func__, mx);
    int ex;
    frexp(mx, &ex);
    int shift = 31 - ex; /* the larger multiplier gets a mantissa in [2^30, 2^31) */
    for (;; shift--) {
        double a = rint(ldexp(Ma, shift)), b = rint(ldexp(Mb, shift));
        if (a < 2147483648.0 && b < 2147483648.0) {
            p->ma = (int32_t)a;
            p->mb = (int32_t)b;
            break;
        }
    }
    p->shift = shift;
    p->za = za;
    p->zb = zb;
    p->zo = zo;
    p->lo = qd_qmin(out_bits);
    p->hi = qd_qmax(out_bits);
    return QD_OK;
}

void qd_qadd_i16(const qd_qadd *p, const int16_t *a, const int16_t *b, int16_t *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int64_t v = (int64_t)(a[i] - p->za) * p->ma + (int64_t)(b[i] - p->zb) * p->mb;
        out[i] = (int16_t)qd_clamp32(qd_rshift_rne(v, p->shift) + p->zo, p->lo, p->hi);
    }
}

/* ---------------------------------------------------------------- inverse square root */

uint64_t qd_isqrt64(uint64_t v) {
    if (v < 2) return v;
    int b = 64 - __builtin_clzll(v);
    uint64_t x = (uint64_t)1 << ((b + 1) / 2); /* >= sqrt(v): Newton descends from above */
    for (;;) {
        uint64_t y = (x + v / x) / 2;
        if (y >= x) return x;
        x = y;
    }
}

int32_t qd_isqrt_inv(uint64_t v, int *e) {
    if (v == 0) v = 1;
    int b = 64 - __builtin_clzll(v);
    int k = (62 - b) >> 1; /* v * 4^k in [2^60, 2^62) (k < 0 shifts right) */
    uint64_t w = k >= 0 ? v << (2 * k) : v >> (-2 * k);
    uint64_t s = qd_isqrt64(w); /* [2^30, 2^31) */
    uint64_t r = (((uint64_t)1 << 61) + s / 2) / s; /* (2^30, 2^31] */
    if (r >= ((uint64_t)1 << 31)) { /* keep the mantissa in int32 */
        r >>= 1;
        k += 1;
    }
    /* 1/sqrt(v) = 2^k / sqrt(w) ~= r * 2^(k - 61) */
    *e = 61 - k;
    return (int32_t)r;
}

/* ---------------------------------------------------------------- RMSNorm */

int qd_qnorm_init(qd_qnorm *p, int n, double sx, int32_t zx, double sg, int32_t zg, double sy,
                  int32_t zy, int out_bits, float eps, qd_err *err) {
    if (n <= 0 || !(sx > 0 && sg > 0 && sy > 0))
        return qd_errf(err, "%s: bad arguments (n=%d sx=%g sg=%g sy=%g)", __func__, n, sx, sg, sy);
    p->n = n;
    p->zx = zx;
    p->zg = zg;
    p->zy = zy;
    double en = rint((double)n * eps / (sx * sx));
    p->eps_n = en > 4e18 ? (int64_t)4e18 : (int64_t)en;
    p->out_bits = out_bits;
    p->gmax = 0;
    p->lo = qd_qmin(out_bits);
    p->hi = qd_qmax(out_bits);
    return qd_qmul_make(sg * sqrt((double)n) / sy, &p->m, err);
}

void qd_qnorm_row(const qd_qnorm *p, const int16_t *x, const int16_t *g, void *out) {
    int64_t ss = 0;
    for (int i = 0; i < p->n; i++) {
        int64_t d = x[i] - p->zx;
        ss += d * d;
    }
    uint64_t v = (uint64_t)ss + (uint64_t)p->eps_n;
    int e;
    int64_t r = qd_isqrt_inv(v, &e);
    /* one per-token multiplier: static (m, shift) times 1/sqrt(v) = r 2^-e */
    int64_t mt = qd_rshift_rne((int64_t)p->m.m * r, 31);
    int shift = p->m.shift + e - 31;
    for (int i = 0; i < p->n; i++) {
        int64_t t = (int64_t)(x[i] - p->zx) * (g[i] - p->zg);
        int64_t y = (int64_t)qd_rshift_rne128((__int128)t * mt, shift) + p->zy;
        int32_t c = qd_clamp32(y, p->lo, p->hi);
        if (p->out_bits == 8) ((int8_t *)out)[i] = (int8_t)c;
        else ((int16_t *)out)[i] = (int16_t)c;
    }
}

int qd_qlnorm_init(qd_qlnorm *p, int n, double sx, int32_t zx, double sg, int32_t zg,
                   double sb, int32_t zb, const int16_t *b, double sy, int32_t zy, int out_bits,
                   float eps, qd_err *err) {
    if (n <= 0 || n > QD_QLNORM_MAX_N || !(sx > 0 && sg > 0 && sb > 0 && sy > 0))
        return qd_errf(err, "%s: bad arguments (n=%d sx=%g sg=%g sb=%g sy=%g)", __func__, n, sx,
                       sg, sb, sy);
    p->n = n;
    p->zx = zx, p->zg = zg, p->zy = zy;
    double en = rint((double)n * n * eps / (sx * sx));
    p->eps_nn = en > 4e18 ? (int64_t)4e18 : (int64_t)en;
    p->out_bits = out_bits;
    p->lo = qd_qmin(out_bits);
    p->hi = qd_qmax(out_bits);
    p->b = malloc((size_t)n * sizeof *p->b);
    if (!p->b) return qd_errf(err, "%s: out of memory", __func__);
    for (int i = 0; i < n; i++) /* the bias in output units, Q16 */
        p->b[i] = (int64_t)rint((double)(b[i] - zb) * sb / sy * 65536.0);
    return qd_qmul_make(sg / sy, &p->m, err);
}

void qd_qlnorm_free(qd_qlnorm *p) {
    if (!p) return;
    free(p->b);
    p->b = NULL;
}

void qd_qlnorm_row(const qd_qlnorm *p, const int16_t *x, const int16_t *g, void *out) {
    int n = p->n;
    int64_t S = 0, ss = 0;
    for (int i = 0; i < n; i++) {
        int64_t d = x[i] - p->zx;
        S += d;
        ss += d * d;
    }
    /* n^2 var = n Σd² - S², exact for n <= QD_QLNORM_MAX_N; c_i = n d_i - S = n (x_i - mean) */
    uint64_t v = (uint64_t)((__int128)n * ss - (__int128)S * S) + (uint64_t)p->eps_nn;
    if (v == 0) v = 1;
    int e;
    int64_t r = qd_isqrt_inv(v, &e);
    int64_t mt = qd_rshift_rne((int64_t)p->m.m * r, 31);
    int shift = p->m.shift + e - 31;
    for (int i = 0; i < n; i++) {
        int64_t ci = (int64_t)n * (x[i] - p->zx) - S;
        __int128 acc = (__int128)(ci * (g[i] - p->zg)) * mt;
        /* the bias joins before the one rounding (Q16 aligned to the product's shift) */
        acc += shift >= 16 ? (__int128)p->b[i] * ((__int128)1 << (shift - 16))
                           : (__int128)qd_rshift_rne(p->b[i], 16 - shift);
        int64_t y = (int64_t)qd_rshift_rne128(acc, shift) + p->zy;
        int32_t c = qd_clamp32(y, p->lo, p->hi);
        if (p->out_bits == 8) ((int8_t *)out)[i] = (int8_t)c;
        else ((int16_t *)out)[i] = (int16_t)c;
    }
}

/* ---------------------------------------------------------------- softmax */

int qd_qsoftmax_init(qd_qsoftmax *p, double s_in, double s_out, int32_t z_out, int out_bits,
                     qd_err *err) {
    if (!(s_in > 0 && s_out > 0))
        return qd_errf(err, "%s: scales must be positive (%g %g)", __func__, s_in, s_out);
    if (qd_qmul_make(s_in * M_LOG2E * 65536.0, &p->to_log2, err)) return QD_ERR;
    if (qd_qmul_make(1.0 / (s_out * 1073741824.0), &p->out, err)) return QD_ERR;
    p->zo = z_out;
    p->lo = qd_qmin(out_bits);
    p->hi = qd_qmax(out_bits);
    for (int i = 0; i < 256; i++) {
        p->exp_hi[i] = (int32_t)rint(1073741824.0 * exp2(-i / 256.0));
        p->exp_lo[i] = (int32_t)rint(1073741824.0 * exp2(-i / 65536.0));
    }
    return QD_OK;
}

int64_t qd_qexp_q30(const qd_qsoftmax *p, int32_t d) {
    int64_t u = qd_qmul32(d, p->to_log2); /* d * s_in * log2(e) in Q16 */
    int64_t ip = u >> 16;
    int f = (int)(u & 0xffff);
    if (ip > 40) return 0; /* below 2^-40: nothing left at Q30 */
    int64_t m = (int64_t)p->exp_hi[f >> 8] * p->exp_lo[f & 255]; /* Q60 */
    return qd_rshift_rne(m, 30 + (int)ip);
}

/* The scalar steps of a softmax row, shared by the reference and the SIMD paths' tails: the
 * maximum of mx and x[j0..n); the reciprocal r = 2^62 / sum, rounded (sum >= 2^30, as the
 * maximum contributes exactly 2^30, so r <= 2^32); one output from a Q30 exponential e. */
static inline int32_t row_max(const int16_t *x, int j0, int n, int32_t mx) {
    for (int j = j0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

static inline uint64_t softmax_recip(uint64_t sum) {
    return (((uint64_t)1 << 62) + sum / 2) / sum;
}

static inline int16_t softmax_out(const qd_qsoftmax *p, int64_t e, uint64_t r) {
    int64_t pq30 = qd_rshift_rne(e * (int64_t)r, 32);
    return (int16_t)qd_clamp32(qd_qmul32((int32_t)pq30, p->out) + p->zo, p->lo, p->hi);
}

/* The table exponentials of x[j0..n) below the maximum mx into work; their sum. */
static inline int64_t tab_exps(const int32_t *tab, int len, int32_t mx, const int16_t *x, int j0,
                               int n, int32_t *work) {
    int64_t sum = 0;
    for (int j = j0; j < n; j++) {
        int32_t d = mx - x[j];
        work[j] = d < len ? tab[d] : 0;
        sum += work[j];
    }
    return sum;
}

void qd_qsoftmax_row(const qd_qsoftmax *p, const int16_t *x, int n, int16_t *out, int64_t *work) {
    int32_t mx = row_max(x, 1, n, x[0]);
    int64_t sum = 0;
    for (int j = 0; j < n; j++) {
        work[j] = qd_qexp_q30(p, mx - x[j]);
        sum += work[j];
    }
    uint64_t r = softmax_recip((uint64_t)sum);
    for (int j = 0; j < n; j++) out[j] = softmax_out(p, work[j], r);
}

/* ---------------------------------------------------------------- tables */

double qd_silu(double x) { return x / (1.0 + exp(-x)); }
double qd_gelu_tanh(double x) {
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

void qd_lut8_build(int8_t table[256], double (*f)(double), double si, int32_t zi, double so,
                   int32_t zo) {
    for (int q = -128; q < 128; q++)
        table[q + 128] = (int8_t)qd_quantize_val(f(si * (q - zi)), so, zo, 8);
}

int qd_qrope_init(qd_qrope *p, int max_T, int head_dim, float theta, double sx, int32_t zx,
                  double sy, int32_t zy, qd_err *err) {
    if (max_T <= 0 || head_dim <= 0 || head_dim % 2)
        return qd_errf(err, "%s: bad shape T=%d hd=%d", __func__, max_T, head_dim);
    double *fr = malloc((size_t)(head_dim / 2) * sizeof *fr);
    if (!fr) return qd_errf(err, "%s: out of memory", __func__);
    for (int i = 0; i < head_dim / 2; i++) fr[i] = pow((double)theta, -2.0 * i / head_dim);
    int rc = qd_qrope_init_freq(p, max_T, head_dim, head_dim, fr, sx, zx, sy, zy, err);
    free(fr);
    return rc;
}

int qd_qrope_init_freq(qd_qrope *p, int max_T, int head_dim, int rot, const double *inv_freq,
                       double sx, int32_t zx, double sy, int32_t zy, qd_err *err) {
    if (max_T <= 0 || head_dim <= 0 || head_dim % 2 || rot <= 0 || rot % 2 || rot > head_dim)
        return qd_errf(err, "%s: bad shape T=%d hd=%d rot=%d", __func__, max_T, head_dim, rot);
    int h = rot / 2;
    p->head_dim = head_dim;
    p->rot = rot;
    p->max_T = max_T;
    p->zx = zx;
    p->zy = zy;
    p->cx = p->sx = NULL;
    p->cos_t = malloc((size_t)max_T * h * sizeof(int16_t));
    p->sin_t = malloc((size_t)max_T * h * sizeof(int16_t));
    if (!p->cos_t || !p->sin_t) {
        qd_qrope_free(p);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    for (int t = 0; t < max_T; t++)
        for (int i = 0; i < h; i++) {
            double a = t * inv_freq[i];
            p->cos_t[(size_t)t * h + i] = (int16_t)rint(cos(a) * (1 << QD_ROPE_FRAC));
            p->sin_t[(size_t)t * h + i] = (int16_t)rint(sin(a) * (1 << QD_ROPE_FRAC));
        }
    p->cx = p->sx = NULL;
    /* the SIMD layout rotates whole heads: partial rotary takes the scalar path */
    p->W = rot != head_dim ? 0
         : head_dim <= 16 && 16 % head_dim == 0 ? 16 : head_dim % 16 == 0 ? head_dim : 0;
    if (p->W) {
        p->cx = malloc((size_t)max_T * p->W * sizeof(int16_t));
        p->sx = malloc((size_t)max_T * p->W * sizeof(int16_t));
        if (!p->cx || !p->sx) {
            qd_qrope_free(p);
            return qd_errf(err, "%s: out of memory", __func__);
        }
        for (int t = 0; t < max_T; t++)
            for (int e = 0; e < p->W; e++) {
                int i = e % head_dim, ii = i % h;
                p->cx[(size_t)t * p->W + e] = p->cos_t[(size_t)t * h + ii];
                p->sx[(size_t)t * p->W + e] = (int16_t)(i < h ? -p->sin_t[(size_t)t * h + ii]
                                                              : p->sin_t[(size_t)t * h + ii]);
            }
    }
    if (qd_qmul_make(sx / sy / (1 << QD_ROPE_FRAC), &p->m, err)) {
        qd_qrope_free(p);
        return QD_ERR;
    }
    return QD_OK;
}

void qd_qrope_free(qd_qrope *p) {
    if (!p) return;
    free(p->cos_t);
    free(p->sin_t);
    free(p->cx);
    free(p->sx);
    p->cos_t = p->sin_t = p->cx = p->sx = NULL;
}

void qd_qrope_apply(const qd_qrope *p, const int8_t *x, int8_t *out, int n_heads, int pos) {
    int h = p->rot / 2;
    const int16_t *c = p->cos_t + (size_t)pos * h, *s = p->sin_t + (size_t)pos * h;
    for (int hh = 0; hh < n_heads; hh++) {
        const int8_t *xh = x + (size_t)hh * p->head_dim;
        int8_t *oh = out + (size_t)hh * p->head_dim;
        for (int i = 0; i < h; i++) {
            int32_t a = xh[i] - p->zx, b = xh[i + h] - p->zx;
            int32_t y1 = a * c[i] - b * s[i], y2 = b * c[i] + a * s[i];
            oh[i] = (int8_t)qd_clamp32(qd_qmul32(y1, p->m) + p->zy, -128, 127);
            oh[i + h] = (int8_t)qd_clamp32(qd_qmul32(y2, p->m) + p->zy, -128, 127);
        }
        /* unrotated dims: the same requantization with cos = 1 (Q14), sin = 0 */
        for (int i = p->rot; i < p->head_dim; i++)
            oh[i] = (int8_t)qd_clamp32(
                qd_qmul32((xh[i] - p->zx) * (1 << QD_ROPE_FRAC), p->m) + p->zy, -128, 127);
    }
}

/* ---------------------------------------------------------------- fast softmax and scores */

/* The SIMD paths below use 64-bit lanes for every product (a 32-bit value times a Q31
 * mantissa) and round half to even by the identity
 *     rne(x / 2^n) = floor((x + 2^(n-1) - 1 + bit_n(x)) / 2^n),   1 <= n <= 62,
 * (bit_n(x) = floor(x / 2^n) & 1 decides the tie), exact for |x| < 2^62. */

int qd_qsoftmax_tab(const qd_qsoftmax *p, int in_bits, int32_t *tab) {
    int n = 1 << in_bits, len = 1;
    for (int d = 0; d < n; d++) {
        int64_t e = qd_qexp_q30(p, d);
        if (tab) tab[d] = (int32_t)e;
        if (e) len = d + 1;
    }
    return len;
}

int qd_qsoftmax_fast_ok(const qd_qsoftmax *p) { return p->out.shift >= 1 && p->out.shift <= 62; }

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))

static inline T512 __m512i rne_shift512(__m512i x, __m512i n, __m512i hm1) {
    __m512i bit = _mm512_and_si512(_mm512_srlv_epi64(x, n), _mm512_set1_epi64(1));
    return _mm512_srav_epi64(_mm512_add_epi64(_mm512_add_epi64(x, hm1), bit), n);
}

/* 16 int32 lanes times a non-negative Q31 mantissa, rounded shift, + zo, clamped: returns the
 * 16 results as int32. sgn: the lanes are signed (else non-negative, < 2^32). */
static inline T512 __m512i rq16_512(__m512i v, __m512i m, __m512i n, __m512i hm1, __m512i zo,
                                    __m512i lo, __m512i hi, int sgn) {
    __m512i ve = v, vo = _mm512_srli_epi64(v, 32);
    __m512i xe = sgn ? _mm512_mul_epi32(ve, m) : _mm512_mul_epu32(ve, m);
    __m512i xo = sgn ? _mm512_mul_epi32(vo, m) : _mm512_mul_epu32(vo, m);
    xe = _mm512_add_epi64(rne_shift512(xe, n, hm1), zo);
    xo = _mm512_add_epi64(rne_shift512(xo, n, hm1), zo);
    xe = _mm512_min_epi64(_mm512_max_epi64(xe, lo), hi);
    xo = _mm512_min_epi64(_mm512_max_epi64(xo, lo), hi);
    return _mm512_mask_blend_epi32(0xaaaa, xe, _mm512_slli_epi64(xo, 32));
}

static T512 void qscore_512(const int32_t *S, const int32_t *ksum, int32_t zq, int32_t off,
                            int n, qd_qmul q, int32_t zo, int32_t lo, int32_t hi, int16_t *out) {
    const __m512i m = _mm512_set1_epi64(q.m), sh = _mm512_set1_epi64(q.shift);
    const __m512i hm1 = _mm512_set1_epi64(((int64_t)1 << (q.shift - 1)) - 1);
    const __m512i z = _mm512_set1_epi64(zo), l = _mm512_set1_epi64(lo), h = _mm512_set1_epi64(hi);
    const __m512i vzq = _mm512_set1_epi32(zq), voff = _mm512_set1_epi32(off);
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m512i s = _mm512_maskz_loadu_epi32(k, S + j);
        __m512i ks = _mm512_maskz_loadu_epi32(k, ksum + j);
        s = _mm512_sub_epi32(_mm512_sub_epi32(s, _mm512_mullo_epi32(vzq, ks)), voff);
        _mm512_mask_cvtepi32_storeu_epi16(out + j, k, rq16_512(s, m, sh, hm1, z, l, h, 1));
    }
}

/* ---------------------------------------------------------------- AVX2 paths (AVX2, AVX-VNNI) */

/* The same identities as the AVX-512 paths above, on 4 int64 lanes. AVX2 has no 64-bit
 * arithmetic shift and no 64-bit min/max: the shift is ((y ^ s) >> n) ^ s with s the sign mask
 * (floor for negative y too), the clamp two compares and blends. Elements past the last whole
 * vector take the scalar formula, which gives the same integers. */
#define T256 __attribute__((target("avx2")))

static int use256(qd_isa isa) {
    qd_isa v = qd_isa_vector(isa);
    return (v == QD_ISA_AVX2 || v == QD_ISA_AVX_VNNI) && qd_isa_supported(QD_ISA_AVX2);
}

static inline T256 __m256i rne_shift256(__m256i x, __m128i n, __m256i hm1) {
    __m256i bit = _mm256_and_si256(_mm256_srl_epi64(x, n), _mm256_set1_epi64x(1));
    __m256i y = _mm256_add_epi64(_mm256_add_epi64(x, hm1), bit);
    __m256i s = _mm256_cmpgt_epi64(_mm256_setzero_si256(), y);
    return _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(y, s), n), s);
}

static inline T256 __m256i clamp64_256(__m256i x, __m256i lo, __m256i hi) {
    x = _mm256_blendv_epi8(x, lo, _mm256_cmpgt_epi64(lo, x));
    return _mm256_blendv_epi8(x, hi, _mm256_cmpgt_epi64(x, hi));
}

/* rq16_512 on 8 int32 lanes. */
static inline T256 __m256i rq8_256(__m256i v, __m256i m, __m128i n, __m256i hm1, __m256i zo,
                                   __m256i lo, __m256i hi, int sgn) {
    __m256i vo = _mm256_srli_epi64(v, 32);
    __m256i xe = sgn ? _mm256_mul_epi32(v, m) : _mm256_mul_epu32(v, m);
    __m256i xo = sgn ? _mm256_mul_epi32(vo, m) : _mm256_mul_epu32(vo, m);
    xe = clamp64_256(_mm256_add_epi64(rne_shift256(xe, n, hm1), zo), lo, hi);
    xo = clamp64_256(_mm256_add_epi64(rne_shift256(xo, n, hm1), zo), lo, hi);
    return _mm256_blend_epi32(xe, _mm256_slli_epi64(xo, 32), 0xaa);
}

/* 8 int32 lanes, each already within int16 (int8), to 8 int16 (int8). */
static inline T256 __m128i to16_256(__m256i y) {
    return _mm_packs_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
}
static inline T256 void store8_256(int8_t *dst, __m256i y) {
    __m128i v = to16_256(y);
    _mm_storel_epi64((__m128i *)dst, _mm_packs_epi16(v, v));
}

#define RQ_CONSTS_256(q, zo_, lo_, hi_)                                                   \
    const __m256i m = _mm256_set1_epi64x((q).m);                                          \
    const __m128i sh = _mm_cvtsi32_si128((q).shift);                                      \
    const __m256i hm1 = _mm256_set1_epi64x(((int64_t)1 << ((q).shift - 1)) - 1);         \
    const __m256i z = _mm256_set1_epi64x(zo_), l = _mm256_set1_epi64x(lo_),              \
                  h = _mm256_set1_epi64x(hi_)

/* Returns how many leading elements it wrote (a multiple of 8). */
static T256 int qscore_256(const int32_t *S, const int32_t *ksum, int32_t zq, int32_t off, int n,
                           qd_qmul q, int32_t zo, int32_t lo, int32_t hi, int16_t *out) {
    RQ_CONSTS_256(q, zo, lo, hi);
    const __m256i vzq = _mm256_set1_epi32(zq), voff = _mm256_set1_epi32(off);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256i s = _mm256_loadu_si256((const __m256i *)(S + j));
        __m256i ks = _mm256_loadu_si256((const __m256i *)(ksum + j));
        s = _mm256_sub_epi32(_mm256_sub_epi32(s, _mm256_mullo_epi32(vzq, ks)), voff);
        _mm_storeu_si128((__m128i *)(out + j), to16_256(rq8_256(s, m, sh, hm1, z, l, h, 1)));
    }
    return j;
}

static T256 void softmax_tab_256(const qd_qsoftmax *p, const int32_t *tab, int len,
                                 const int16_t *x, int n, int16_t *out, int32_t *work) {
    int32_t mx = x[0];
    int j = 0;
    if (n >= 16) {
        __m256i vmx = _mm256_set1_epi16(INT16_MIN);
        for (; j + 16 <= n; j += 16)
            vmx = _mm256_max_epi16(vmx, _mm256_loadu_si256((const __m256i *)(x + j)));
        int16_t t[16];
        _mm256_storeu_si256((__m256i *)t, vmx);
        for (int i = 0; i < 16; i++) mx = t[i] > mx ? t[i] : mx;
    }
    mx = row_max(x, j, n, mx);
    const __m256i vm = _mm256_set1_epi32(mx), vlen = _mm256_set1_epi32(len);
    __m256i vsum = _mm256_setzero_si256();
    for (j = 0; j + 8 <= n; j += 8) {
        __m256i d = _mm256_sub_epi32(vm, _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(x + j))));
        __m256i g = _mm256_cmpgt_epi32(vlen, d); /* d >= 0: mx is the maximum */
        __m256i e = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), tab, d, g, 4);
        _mm256_storeu_si256((__m256i *)(work + j), e);
        vsum = _mm256_add_epi64(vsum, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(e)));
        vsum = _mm256_add_epi64(vsum, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(e, 1)));
    }
    int64_t sum = tab_exps(tab, len, mx, x, j, n, work);
    int64_t ls[4];
    _mm256_storeu_si256((__m256i *)ls, vsum);
    uint64_t r = softmax_recip((uint64_t)(sum + ls[0] + ls[1] + ls[2] + ls[3]));
    RQ_CONSTS_256(p->out, p->zo, p->lo, p->hi);
    const __m256i vr = _mm256_set1_epi64x((int64_t)r);
    const __m128i c32 = _mm_cvtsi32_si128(32);
    const __m256i h32 = _mm256_set1_epi64x(((int64_t)1 << 31) - 1);
    for (j = 0; j + 8 <= n; j += 8) {
        __m256i e = _mm256_loadu_si256((const __m256i *)(work + j)), pq = e;
        if (r < ((uint64_t)1 << 32)) {
            __m256i xe = rne_shift256(_mm256_mul_epu32(e, vr), c32, h32);
            __m256i xo = rne_shift256(_mm256_mul_epu32(_mm256_srli_epi64(e, 32), vr), c32, h32);
            pq = _mm256_blend_epi32(xe, _mm256_slli_epi64(xo, 32), 0xaa);
        }
        _mm_storeu_si128((__m128i *)(out + j), to16_256(rq8_256(pq, m, sh, hm1, z, l, h, 0)));
    }
    for (; j < n; j++) out[j] = softmax_out(p, work[j], r);
}

static T256 size_t qadd_256(const qd_qadd *p, const int16_t *a, const int16_t *b, int16_t *out,
                            size_t n) {
    const __m256i ma = _mm256_set1_epi64x(p->ma), mb = _mm256_set1_epi64x(p->mb);
    const __m256i za = _mm256_set1_epi32(p->za), zb = _mm256_set1_epi32(p->zb);
    const __m128i sh = _mm_cvtsi32_si128(p->shift);
    const __m256i hm1 = _mm256_set1_epi64x(((int64_t)1 << (p->shift - 1)) - 1);
    const __m256i zo = _mm256_set1_epi64x(p->zo), lo = _mm256_set1_epi64x(p->lo),
                  hi = _mm256_set1_epi64x(p->hi);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i va = _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(a + i))), za);
        __m256i vb = _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(b + i))), zb);
        __m256i xe = _mm256_add_epi64(_mm256_mul_epi32(va, ma), _mm256_mul_epi32(vb, mb));
        __m256i xo = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(va, 32), ma),
                                      _mm256_mul_epi32(_mm256_srli_epi64(vb, 32), mb));
        xe = clamp64_256(_mm256_add_epi64(rne_shift256(xe, sh, hm1), zo), lo, hi);
        xo = clamp64_256(_mm256_add_epi64(rne_shift256(xo, sh, hm1), zo), lo, hi);
        __m256i y = _mm256_blend_epi32(xe, _mm256_slli_epi64(xo, 32), 0xaa);
        _mm_storeu_si128((__m128i *)(out + i), to16_256(y));
    }
    return i;
}

static T256 size_t qmul_i8_256(const int8_t *a, int32_t za, const int8_t *b, int32_t zb,
                               qd_qmul q, int32_t zo, int8_t *out, size_t n) {
    RQ_CONSTS_256(q, zo, -128, 127);
    const __m256i vza = _mm256_set1_epi32(za), vzb = _mm256_set1_epi32(zb);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i va = _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a + i))), vza);
        __m256i vb = _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + i))), vzb);
        store8_256(out + i, rq8_256(_mm256_mullo_epi32(va, vb), m, sh, hm1, z, l, h, 1));
    }
    return i;
}

/* qnorm_512 on 8 lanes: 0 (nothing written) when the row's products might not fit 64 bits. */
static T256 int qnorm_256(const qd_qnorm *p, const int16_t *x, const int16_t *g, void *out) {
    const int n = p->n;
    const __m256i zx = _mm256_set1_epi32(p->zx), zg = _mm256_set1_epi32(p->zg);
    __m256i ss = _mm256_setzero_si256(), amax = _mm256_setzero_si256();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i d = _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(x + i))), zx);
        amax = _mm256_max_epi32(amax, _mm256_abs_epi32(d));
        ss = _mm256_add_epi64(ss, _mm256_mul_epi32(d, d));
        __m256i dodd = _mm256_srli_epi64(d, 32);
        ss = _mm256_add_epi64(ss, _mm256_mul_epi32(dodd, dodd));
    }
    int64_t sst = 0, dmax = 0;
    for (int k = i; k < n; k++) {
        int64_t d = x[k] - p->zx;
        sst += d * d;
        dmax = (d < 0 ? -d : d) > dmax ? (d < 0 ? -d : d) : dmax;
    }
    int64_t ls[4];
    int32_t am[8];
    _mm256_storeu_si256((__m256i *)ls, ss);
    _mm256_storeu_si256((__m256i *)am, amax);
    for (int k = 0; k < 8; k++) dmax = am[k] > dmax ? am[k] : dmax;
    uint64_t v = (uint64_t)(sst + ls[0] + ls[1] + ls[2] + ls[3]) + (uint64_t)p->eps_n;
    int e;
    int64_t r = qd_isqrt_inv(v, &e);
    int64_t mt = qd_rshift_rne((int64_t)p->m.m * r, 31);
    int shift = p->m.shift + e - 31;
    if (shift < 1 || shift > 62 || mt < 0 || mt >= ((int64_t)1 << 31) ||
        (__int128)dmax * p->gmax * mt >= ((__int128)1 << 61))
        return 0;
    const __m256i vm = _mm256_set1_epi64x(mt);
    const __m128i sh = _mm_cvtsi32_si128(shift);
    const __m256i hm1 = _mm256_set1_epi64x(((int64_t)1 << (shift - 1)) - 1);
    const __m256i zy = _mm256_set1_epi64x(p->zy), lo = _mm256_set1_epi64x(p->lo),
                  hi = _mm256_set1_epi64x(p->hi);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256i d = _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(x + i))), zx);
        __m256i gd = _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(g + i))), zg);
        __m256i res[2];
        for (int half = 0; half < 2; half++) {
            __m256i a = half ? _mm256_srli_epi64(d, 32) : d, b = half ? _mm256_srli_epi64(gd, 32) : gd;
            __m256i t = _mm256_mul_epi32(a, b); /* exact int64 */
            /* t * mt exactly (|t * mt| < 2^61): low 32 bits unsigned, high 32 bits signed */
            __m256i x64 = _mm256_add_epi64(
                _mm256_mul_epu32(t, vm),
                _mm256_slli_epi64(_mm256_mul_epi32(_mm256_shuffle_epi32(t, 0xf5), vm), 32));
            res[half] = clamp64_256(_mm256_add_epi64(rne_shift256(x64, sh, hm1), zy), lo, hi);
        }
        __m256i y = _mm256_blend_epi32(res[0], _mm256_slli_epi64(res[1], 32), 0xaa);
        if (p->out_bits == 8) store8_256((int8_t *)out + i, y);
        else _mm_storeu_si128((__m128i *)((int16_t *)out + i), to16_256(y));
    }
    for (; i < n; i++) {
        int64_t t = (int64_t)(x[i] - p->zx) * (g[i] - p->zg);
        int32_t c = qd_clamp32(qd_rshift_rne(t * mt, shift) + p->zy, p->lo, p->hi);
        if (p->out_bits == 8) ((int8_t *)out)[i] = (int8_t)c;
        else ((int16_t *)out)[i] = (int16_t)c;
    }
    return 1;
}

void qd_qscore_row(const int32_t *S, const int32_t *ksum, int32_t zq, int32_t off, int n,
                   qd_qmul m, int32_t zo, int32_t lo, int32_t hi, int16_t *out, qd_isa isa) {
    if (use512(isa)) {
        qscore_512(S, ksum, zq, off, n, m, zo, lo, hi, out);
        return;
    }
    int j0 = use256(isa) ? qscore_256(S, ksum, zq, off, n, m, zo, lo, hi, out) : 0;
    for (int j = j0; j < n; j++) {
        int32_t s = (int32_t)((uint32_t)S[j] - (uint32_t)zq * (uint32_t)ksum[j] - (uint32_t)off);
        out[j] = (int16_t)qd_clamp32(qd_qmul32(s, m) + zo, lo, hi);
    }
}

static T512 void softmax_tab_512(const qd_qsoftmax *p, const int32_t *tab, int len,
                                 const int16_t *x, int n, int16_t *out, int32_t *work) {
    __m512i vmx = _mm512_set1_epi16(INT16_MIN);
    for (int j = 0; j < n; j += 32) {
        __mmask32 k = n - j >= 32 ? 0xffffffffu : (__mmask32)((1u << (n - j)) - 1);
        vmx = _mm512_max_epi16(vmx, _mm512_mask_loadu_epi16(_mm512_set1_epi16(INT16_MIN), k, x + j));
    }
    int32_t mx = _mm512_reduce_max_epi32(_mm512_max_epi32(
        _mm512_cvtepi16_epi32(_mm512_castsi512_si256(vmx)),
        _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(vmx, 1))));
    const __m512i vm = _mm512_set1_epi32(mx), vlen = _mm512_set1_epi32(len);
    __m512i sum = _mm512_setzero_si512();
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m512i d = _mm512_sub_epi32(vm, _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, x + j)));
        __mmask16 g = _mm512_mask_cmplt_epi32_mask(k, d, vlen);
        __m512i e = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), g, d, tab, 4);
        _mm512_mask_storeu_epi32(work + j, k, e);
        sum = _mm512_add_epi64(sum, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(e)));
        sum = _mm512_add_epi64(sum, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(e, 1)));
    }
    uint64_t r = softmax_recip((uint64_t)_mm512_reduce_add_epi64(sum));
    const __m512i vr = _mm512_set1_epi64((int64_t)r), c32 = _mm512_set1_epi64(32);
    const __m512i h32 = _mm512_set1_epi64(((int64_t)1 << 31) - 1);
    const __m512i m = _mm512_set1_epi64(p->out.m), sh = _mm512_set1_epi64(p->out.shift);
    const __m512i hm1 = _mm512_set1_epi64(((int64_t)1 << (p->out.shift - 1)) - 1);
    const __m512i z = _mm512_set1_epi64(p->zo), l = _mm512_set1_epi64(p->lo),
                  h = _mm512_set1_epi64(p->hi);
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m512i e = _mm512_maskz_loadu_epi32(k, work + j), pq = e;
        if (r < ((uint64_t)1 << 32)) {
            /* pq30 = rne(e * r / 2^32), e <= 2^30 and r < 2^32: unsigned 64-bit lanes */
            __m512i xe = rne_shift512(_mm512_mul_epu32(e, vr), c32, h32);
            __m512i xo = rne_shift512(_mm512_mul_epu32(_mm512_srli_epi64(e, 32), vr), c32, h32);
            pq = _mm512_mask_blend_epi32(0xaaaa, xe, _mm512_slli_epi64(xo, 32));
        } /* r == 2^32: e * 2^32 / 2^32 = e exactly */
        _mm512_mask_cvtepi32_storeu_epi16(out + j, k, rq16_512(pq, m, sh, hm1, z, l, h, 0));
    }
}

void qd_qsoftmax_row_tab(const qd_qsoftmax *p, const int32_t *tab, int len, const int16_t *x,
                         int n, int16_t *out, int32_t *work, qd_isa isa) {
    if (use512(isa)) {
        softmax_tab_512(p, tab, len, x, n, out, work);
        return;
    }
    if (use256(isa)) {
        softmax_tab_256(p, tab, len, x, n, out, work);
        return;
    }
    int32_t mx = row_max(x, 1, n, x[0]);
    uint64_t r = softmax_recip((uint64_t)tab_exps(tab, len, mx, x, 0, n, work));
    for (int j = 0; j < n; j++) out[j] = softmax_out(p, work[j], r);
}

/* ---------------------------------------------------------------- elementwise SIMD paths */

static T512 void qadd_512(const qd_qadd *p, const int16_t *a, const int16_t *b, int16_t *out,
                          size_t n) {
    const __m512i ma = _mm512_set1_epi64(p->ma), mb = _mm512_set1_epi64(p->mb);
    const __m512i za = _mm512_set1_epi32(p->za), zb = _mm512_set1_epi32(p->zb);
    const __m512i sh = _mm512_set1_epi64(p->shift);
    const __m512i hm1 = _mm512_set1_epi64(((int64_t)1 << (p->shift - 1)) - 1);
    const __m512i zo = _mm512_set1_epi64(p->zo), lo = _mm512_set1_epi64(p->lo),
                  hi = _mm512_set1_epi64(p->hi);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512i va = _mm512_sub_epi32(_mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, a + i)), za);
        __m512i vb = _mm512_sub_epi32(_mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, b + i)), zb);
        __m512i xe = _mm512_add_epi64(_mm512_mul_epi32(va, ma), _mm512_mul_epi32(vb, mb));
        __m512i xo = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(va, 32), ma),
                                      _mm512_mul_epi32(_mm512_srli_epi64(vb, 32), mb));
        xe = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(rne_shift512(xe, sh, hm1), zo), lo), hi);
        xo = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(rne_shift512(xo, sh, hm1), zo), lo), hi);
        __m512i y = _mm512_mask_blend_epi32(0xaaaa, xe, _mm512_slli_epi64(xo, 32));
        _mm512_mask_cvtepi32_storeu_epi16(out + i, k, y);
    }
}

/* zero points far outside the grid would overflow the 32-bit differences: reference then */
static int small_zp(int64_t z) { return z >= -(1 << 30) && z <= (1 << 30); }

void qd_qadd_i16_isa(const qd_qadd *p, const int16_t *a, const int16_t *b, int16_t *out,
                     size_t n, qd_isa isa) {
    if (use512(isa) && p->shift >= 1 && p->shift <= 62 &&
        small_zp(p->za) && small_zp(p->zb))
        qadd_512(p, a, b, out, n);
    else if (use256(isa) && p->shift >= 1 && p->shift <= 62 && small_zp(p->za) && small_zp(p->zb)) {
        size_t i = qadd_256(p, a, b, out, n);
        qd_qadd_i16(p, a + i, b + i, out + i, n - i);
    } else
        qd_qadd_i16(p, a, b, out, n);
}

static T512 void qmul_i8_512(const int8_t *a, int32_t za, const int8_t *b, int32_t zb,
                             qd_qmul q, int32_t zo, int8_t *out, size_t n) {
    const __m512i m = _mm512_set1_epi64(q.m), sh = _mm512_set1_epi64(q.shift);
    const __m512i hm1 = _mm512_set1_epi64(((int64_t)1 << (q.shift - 1)) - 1);
    const __m512i z = _mm512_set1_epi64(zo), l = _mm512_set1_epi64(-128), h = _mm512_set1_epi64(127);
    const __m512i vza = _mm512_set1_epi32(za), vzb = _mm512_set1_epi32(zb);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512i va = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, a + i)), vza);
        __m512i vb = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, b + i)), vzb);
        __m512i v = _mm512_mullo_epi32(va, vb);
        _mm512_mask_cvtepi32_storeu_epi8(out + i, k, rq16_512(v, m, sh, hm1, z, l, h, 1));
    }
}

void qd_qmul_i8(const int8_t *a, int32_t za, const int8_t *b, int32_t zb, qd_qmul m, int32_t zo,
                int8_t *out, size_t n, qd_isa isa) {
    if (use512(isa) && m.shift >= 1 && m.shift <= 62) {
        qmul_i8_512(a, za, b, zb, m, zo, out, n);
        return;
    }
    size_t i0 = use256(isa) && m.shift >= 1 && m.shift <= 62 ? qmul_i8_256(a, za, b, zb, m, zo, out, n) : 0;
    for (size_t i = i0; i < n; i++) {
        int32_t v = (int32_t)((uint32_t)(a[i] - za) * (uint32_t)(b[i] - zb));
        out[i] = (int8_t)qd_clamp32(qd_qmul32(v, m) + zo, -128, 127);
    }
}

/* One row with AVX-512; returns 0 (nothing written) when the row's products might not fit 64
 * bits, so that the caller runs the reference. */
static T512 int qnorm_512(const qd_qnorm *p, const int16_t *x, const int16_t *g, void *out) {
    const int n = p->n;
    const __m512i zx = _mm512_set1_epi32(p->zx), zg = _mm512_set1_epi32(p->zg);
    __m512i ss = _mm512_setzero_si512(), amax = _mm512_setzero_si512();
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512i d = _mm512_maskz_sub_epi32(k, _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, x + i)), zx);
        amax = _mm512_max_epi32(amax, _mm512_abs_epi32(d));
        ss = _mm512_add_epi64(ss, _mm512_mul_epi32(d, d));
        __m512i dodd = _mm512_srli_epi64(d, 32);
        ss = _mm512_add_epi64(ss, _mm512_mul_epi32(dodd, dodd));
    }
    uint64_t v = (uint64_t)_mm512_reduce_add_epi64(ss) + (uint64_t)p->eps_n;
    int e;
    int64_t r = qd_isqrt_inv(v, &e);
    int64_t mt = qd_rshift_rne((int64_t)p->m.m * r, 31);
    int shift = p->m.shift + e - 31;
    int64_t dmax = (uint32_t)_mm512_reduce_max_epi32(amax);
    if (shift < 1 || shift > 62 || mt < 0 || mt >= ((int64_t)1 << 31) ||
        (__int128)dmax * p->gmax * mt >= ((__int128)1 << 61))
        return 0;
    const __m512i vm = _mm512_set1_epi64(mt), sh = _mm512_set1_epi64(shift);
    const __m512i hm1 = _mm512_set1_epi64(((int64_t)1 << (shift - 1)) - 1);
    const __m512i zy = _mm512_set1_epi64(p->zy), lo = _mm512_set1_epi64(p->lo),
                  hi = _mm512_set1_epi64(p->hi);
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512i d = _mm512_sub_epi32(_mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, x + i)), zx);
        __m512i gd = _mm512_sub_epi32(_mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, g + i)), zg);
        __m512i res[2];
        for (int half = 0; half < 2; half++) {
            __m512i a = half ? _mm512_srli_epi64(d, 32) : d, b = half ? _mm512_srli_epi64(gd, 32) : gd;
            __m512i t = _mm512_mul_epi32(a, b); /* exact int64 */
            /* t * mt exactly (|t * mt| < 2^61): low 32 bits unsigned, high 32 bits signed */
            __m512i x64 = _mm512_add_epi64(
                _mm512_mul_epu32(t, vm),
                _mm512_slli_epi64(_mm512_mul_epi32(_mm512_shuffle_epi32(t, (_MM_PERM_ENUM)0xf5), vm), 32));
            __m512i y = _mm512_add_epi64(rne_shift512(x64, sh, hm1), zy);
            res[half] = _mm512_min_epi64(_mm512_max_epi64(y, lo), hi);
        }
        __m512i y = _mm512_mask_blend_epi32(0xaaaa, res[0], _mm512_slli_epi64(res[1], 32));
        if (p->out_bits == 8) _mm512_mask_cvtepi32_storeu_epi8((int8_t *)out + i, k, y);
        else _mm512_mask_cvtepi32_storeu_epi16((int16_t *)out + i, k, y);
    }
    return 1;
}

void qd_qnorm_row_isa(const qd_qnorm *p, const int16_t *x, const int16_t *g, void *out,
                      qd_isa isa) {
    if (use512(isa) && p->gmax > 0 && small_zp(p->zx) &&
        small_zp(p->zg) && qnorm_512(p, x, g, out))
        return;
    if (use256(isa) && p->gmax > 0 && small_zp(p->zx) && small_zp(p->zg) && qnorm_256(p, x, g, out))
        return;
    qd_qnorm_row(p, x, g, out);
}

/* y[e] = (x[e]-zx) C[e] + (x[partner(e)]-zx) S[e], partner(e) the element h away in the same
 * head: the reference's a*c - b*s and b*c + a*s in one expression. */
static T512 void rope_512(const qd_qrope *p, const int8_t *x, int8_t *out, int n_heads, int pos) {
    const int hd = p->head_dim, h = hd / 2, row = n_heads * hd;
    const int16_t *C = p->cx + (size_t)pos * p->W, *S = p->sx + (size_t)pos * p->W;
    const __m512i m = _mm512_set1_epi64(p->m.m), sh = _mm512_set1_epi64(p->m.shift);
    const __m512i hm1 = _mm512_set1_epi64(((int64_t)1 << (p->m.shift - 1)) - 1);
    const __m512i z = _mm512_set1_epi64(p->zy), l = _mm512_set1_epi64(-128), hi = _mm512_set1_epi64(127);
    const __m512i zx = _mm512_set1_epi32(p->zx);
    if (p->W == 16) { /* whole heads per 16 lanes: the partner is a lane permutation */
        int32_t idx[16];
        for (int e = 0; e < 16; e++) {
            int i = e % hd;
            idx[e] = e - i + (i < h ? i + h : i - h);
        }
        const __m512i vi = _mm512_loadu_si512(idx);
        const __m512i vc = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)C));
        const __m512i vs = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)S));
        for (int e = 0; e < row; e += 16) {
            __mmask16 k = row - e >= 16 ? 0xffff : (__mmask16)((1u << (row - e)) - 1);
            __m512i xv = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, x + e)), zx);
            __m512i xp = _mm512_permutexvar_epi32(vi, xv);
            __m512i y = _mm512_add_epi32(_mm512_mullo_epi32(xv, vc), _mm512_mullo_epi32(xp, vs));
            _mm512_mask_cvtepi32_storeu_epi8(out + e, k, rq16_512(y, m, sh, hm1, z, l, hi, 1));
        }
        return;
    }
    for (int hh = 0; hh < n_heads; hh++) { /* head_dim a multiple of 32: halves of 16-lane blocks */
        const int8_t *xh = x + (size_t)hh * hd;
        int8_t *oh = out + (size_t)hh * hd;
        __m512i y[64];
        int nb = hd / 16;
        for (int b = 0; b < nb && b < 64; b++) {
            int i0 = 16 * b, pi = i0 < h ? i0 + h : i0 - h;
            __m512i xv = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(xh + i0))), zx);
            __m512i xp = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(xh + pi))), zx);
            __m512i vc = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(C + i0)));
            __m512i vs = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(S + i0)));
            y[b] = _mm512_add_epi32(_mm512_mullo_epi32(xv, vc), _mm512_mullo_epi32(xp, vs));
        }
        /* stores after all loads: out may alias x */
        for (int b = 0; b < nb && b < 64; b++)
            _mm_storeu_si128((__m128i *)(oh + 16 * b),
                             _mm512_cvtepi32_epi8(rq16_512(y[b], m, sh, hm1, z, l, hi, 1)));
    }
}

/* rope_512's blocks on 8 lanes: head_dim a multiple of 16, so that every block of 8 and its
 * partner h away lie in the same half of the head. */
static T256 void rope_256(const qd_qrope *p, const int8_t *x, int8_t *out, int n_heads, int pos) {
    const int hd = p->head_dim, half = hd / 2;
    const int16_t *C = p->cx + (size_t)pos * p->W, *S = p->sx + (size_t)pos * p->W;
    RQ_CONSTS_256(p->m, p->zy, -128, 127);
    const __m256i zx = _mm256_set1_epi32(p->zx);
    for (int hh = 0; hh < n_heads; hh++) {
        const int8_t *xh = x + (size_t)hh * hd;
        int8_t *oh = out + (size_t)hh * hd;
        __m256i y[128];
        int nb = hd / 8;
        for (int b = 0; b < nb && b < 128; b++) {
            int i0 = 8 * b, pi = i0 < half ? i0 + half : i0 - half;
            __m256i xv = _mm256_sub_epi32(
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(xh + i0))), zx);
            __m256i xp = _mm256_sub_epi32(
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(xh + pi))), zx);
            __m256i vc = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(C + i0)));
            __m256i vs = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(S + i0)));
            y[b] = _mm256_add_epi32(_mm256_mullo_epi32(xv, vc), _mm256_mullo_epi32(xp, vs));
        }
        /* stores after all loads: out may alias x */
        for (int b = 0; b < nb && b < 128; b++)
            store8_256(oh + 8 * b, rq8_256(y[b], m, sh, hm1, z, l, h, 1));
    }
}

void qd_qrope_apply_isa(const qd_qrope *p, const int8_t *x, int8_t *out, int n_heads, int pos,
                        qd_isa isa) {
    int fits = p->cx && p->head_dim <= 1024 && p->m.shift >= 1 && p->m.shift <= 62 &&
               small_zp(p->zx);
    if (use512(isa) && fits && (p->W == 16 || p->head_dim % 32 == 0))
        rope_512(p, x, out, n_heads, pos);
    else if (use256(isa) && fits && p->W == p->head_dim && p->head_dim % 16 == 0)
        rope_256(p, x, out, n_heads, pos);
    else
        qd_qrope_apply(p, x, out, n_heads, pos);
}
