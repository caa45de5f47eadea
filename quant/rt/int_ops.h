/* Integer primitives of the integer-only runtime: fixed-point requantization, int16 residual
 * add, RMSNorm and LayerNorm with an integer inverse square root, softmax with an integer exp,
 * SiLU and GELU by table, RoPE (full or partial) with fixed-point tables. Floats appear only in the *_init / *_table builders, which run
 * once at load time; every per-token function is integer arithmetic.
 *
 * THE rounding rule, used everywhere (requantization, shifts, table entries): round half to
 * EVEN, the rule of rint() and of the fake-quant simulation (ops.h), so that the runtime lands
 * on the simulation's grid points whenever the real values agree.
 *
 * Quantized values: real = scale * (q - zp). Buffers hold q in the "stored" signed form of the
 * bit width (int8 for 8 bits, int16 for 16 bits): stored = q_unsigned - 2^(bits-1), and zero
 * points are kept in the same stored form (int32, so that trained zero points outside the grid
 * still work). */
#ifndef QD_INTOPS_H
#define QD_INTOPS_H

#include <stddef.h>
#include <stdint.h>

#include "quant/rt/igemm.h"
#include "base/err.h"

/* x / 2^n rounded half to even (n <= 0: x * 2^-n). */
static inline int64_t qd_rshift_rne(int64_t x, int n) {
    if (n <= 0) return (int64_t)((uint64_t)x << -n);
    if (n > 62) return 0; /* |x| <= 2^63 <= 2^(n-1): rounds to 0 (the lone tie rounds to even 0) */
    int64_t q = x >> n;   /* floor (gcc: arithmetic shift) */
    int64_t r = x & (((int64_t)1 << n) - 1);
    int64_t half = (int64_t)1 << (n - 1);
    return q + (r > half || (r == half && (q & 1)));
}

static inline __int128 qd_rshift_rne128(__int128 x, int n) {
    if (n <= 0) return x * ((__int128)1 << -n);
    if (n > 125) return 0;
    __int128 q = x >> n;
    __int128 r = x & ((((__int128)1) << n) - 1);
    __int128 half = (__int128)1 << (n - 1);
    return q + (r > half || (r == half && (q & 1)));
}

/* A real multiplier M >= 0 as m * 2^-shift with m in [2^30, 2^31) (Q31 mantissa), or m = 0. */
typedef struct qd_qmul {
    int32_t m;
    int shift;
} qd_qmul;

/* Load time: M -> (m, shift). QD_ERR when M is negative, not finite, or >= 2^30 (the
 * product with an int32 would not fit the fast path). */
int qd_qmul_make(double M, qd_qmul *out, qd_err *err);

/* round(x * M) for |x| < 2^31: the product fits int64. */
static inline int64_t qd_qmul32(int32_t x, qd_qmul q) {
    return qd_rshift_rne((int64_t)x * q.m, q.shift);
}
/* round(x * M) for any int64 x (128-bit product). */
static inline int64_t qd_qmul64(int64_t x, qd_qmul q) {
    return (int64_t)qd_rshift_rne128((__int128)x * q.m, q.shift);
}

static inline int32_t qd_clamp32(int64_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : v > hi ? hi : (int32_t)v;
}

/* Range of stored values for a bit width: [-2^(b-1), 2^(b-1)-1]. */
static inline int32_t qd_qmin(int bits) { return -(1 << (bits - 1)); }
static inline int32_t qd_qmax(int bits) { return (1 << (bits - 1)) - 1; }

/* ---- residual add: out = a + b in a third encoding, one rounding ----
 * out = round(((a - za) * Ma + (b - zb) * Mb)) + zo, Ma = sa/so, Mb = sb/so, sharing a shift. */
typedef struct qd_qadd {
    int32_t ma, mb;
    int shift;
    int32_t za, zb, zo;
    int32_t lo, hi;
} qd_qadd;
int qd_qadd_init(qd_qadd *p, double sa, int32_t za, double sb, int32_t zb, double so, int32_t zo,
                 int out_bits, qd_err *err);
void qd_qadd_i16(const qd_qadd *p, const int16_t *a, const int16_t *b, int16_t *out, size_t n);
/* The same integers with the SIMD path for isa (AVX-512 when QD_ISA_AVX512_VNNI and the shift
 * allows; otherwise qd_qadd_i16). */
void qd_qadd_i16_isa(const qd_qadd *p, const int16_t *a, const int16_t *b, int16_t *out,
                     size_t n, qd_isa isa);

/* ---- product of two 8-bit tensors into an 8-bit one (SwiGLU's silu(gate) * up) ----
 * out[i] = clamp(qmul32((a[i]-za)*(b[i]-zb), m) + zo, -128, 127); isa as qd_qadd_i16_isa. */
void qd_qmul_i8(const int8_t *a, int32_t za, const int8_t *b, int32_t zb, qd_qmul m, int32_t zo,
                int8_t *out, size_t n, qd_isa isa);

/* ---- integer inverse square root ----
 * For v >= 1: returns r and sets *e with 1/sqrt(v) ~= r * 2^-e, r in [2^30, 2^31]. Integer
 * square root by Newton's method on a normalised value; relative error < 2^-29. */
int32_t qd_isqrt_inv(uint64_t v, int *e);
/* floor(sqrt(v)) exactly. */
uint64_t qd_isqrt64(uint64_t v);

/* ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * g, all sides quantized ----
 * x int16 (scale sx, zp zx); g int16 per-tensor (sg, zg); y of out_bits (8 or 16). The scale of x
 * cancels except in eps, which becomes the integer eps_n = round(n * eps / sx^2). */
typedef struct qd_qnorm {
    int n;
    int32_t zx, zg, zy;
    int64_t eps_n;
    qd_qmul m;          /* sg * sqrt(n) / sy */
    int32_t lo, hi;
    int out_bits;
    int64_t gmax;       /* max |g - zg| of the weights the caller passes, 0: unknown (the SIMD
                         * path needs it to prove a row's products fit 64 bits) */
} qd_qnorm;
int qd_qnorm_init(qd_qnorm *p, int n, double sx, int32_t zx, double sg, int32_t zg, double sy,
                  int32_t zy, int out_bits, float eps, qd_err *err);
/* One row: x (n), g (n), out int8 or int16 per out_bits. */
void qd_qnorm_row(const qd_qnorm *p, const int16_t *x, const int16_t *g, void *out);
/* The same integers; with QD_ISA_AVX512_VNNI, rows whose products provably fit 64 bits
 * (p->gmax set) take an AVX-512 path, the others qd_qnorm_row. */
void qd_qnorm_row_isa(const qd_qnorm *p, const int16_t *x, const int16_t *g, void *out,
                      qd_isa isa);

/* ---- LayerNorm with bias (StableLM): y = (x - mean) / sqrt(var + eps) * g + b ----
 * The RMSNorm above applied to the centred row, in exact integers: with d = x - zx and
 * S = Σd, c_i = n d_i - S = n (x_i - mean) and n² var = n Σd² - S², so
 * y = c (g - zg) sg / sqrt(n² var + eps_nn) with eps_nn = round(n² eps / sx²): the per-row
 * multiplier is built as qd_qnorm's, and the bias (16-bit, in output units at load, Q16) joins
 * the product before its one round-half-to-even. */
#define QD_QLNORM_MAX_N 32768 /* n Σd² - S² stays exact in 64 bits */
typedef struct qd_qlnorm {
    int n;
    int32_t zx, zg, zy;
    int64_t eps_nn;
    qd_qmul m;          /* sg / sy */
    int64_t *b;         /* n: round((b - zb) sb / sy * 2^16), owned */
    int32_t lo, hi;
    int out_bits;
} qd_qlnorm;
/* b (n) is the 16-bit bias with scale sb and zero point zb. Free with qd_qlnorm_free. */
int qd_qlnorm_init(qd_qlnorm *p, int n, double sx, int32_t zx, double sg, int32_t zg,
                   double sb, int32_t zb, const int16_t *b, double sy, int32_t zy, int out_bits,
                   float eps, qd_err *err);
void qd_qlnorm_free(qd_qlnorm *p);
/* One row: x (n), g (n), out int8 or int16 per out_bits. Scalar only (no SIMD path). */
void qd_qlnorm_row(const qd_qlnorm *p, const int16_t *x, const int16_t *g, void *out);

/* ---- softmax over a row of 16-bit scores -> 16-bit probabilities ----
 * exp by base 2: x*log2(e) in Q16 fixed point, 2^-int by shift, 2^-frac by two 256-entry Q30
 * tables (high and low byte of the fraction). Normalised with one integer reciprocal per row. */
typedef struct qd_qsoftmax {
    qd_qmul to_log2;     /* s_in * log2(e) * 2^16 */
    qd_qmul out;         /* 1 / (s_out * 2^30) */
    int32_t zo, lo, hi;
    int32_t exp_hi[256]; /* round(2^30 * 2^(-i/256)) */
    int32_t exp_lo[256]; /* round(2^30 * 2^(-i/65536)) */
} qd_qsoftmax;
int qd_qsoftmax_init(qd_qsoftmax *p, double s_in, double s_out, int32_t z_out, int out_bits,
                     qd_err *err);
/* out[j] for j < n from scores x[j] (stored int16; the input zero point cancels). work: n
 * int64. */
void qd_qsoftmax_row(const qd_qsoftmax *p, const int16_t *x, int n, int16_t *out, int64_t *work);
/* e^(-d * s_in) in Q30 for an integer distance d >= 0 from the row maximum (exposed for tests). */
int64_t qd_qexp_q30(const qd_qsoftmax *p, int32_t d);

/* ---- the fast softmax: the same integers from a table ----
 * qd_qexp_q30 depends only on the distance d from the row maximum, d in [0, 2^in_bits), and
 * is zero from some d on: the fast paths read it from a table built with qd_qexp_q30 itself,
 * so the table cannot disagree with the reference. */
/* Length of the table (1 + the largest d with a nonzero value); fills tab when not NULL. */
int qd_qsoftmax_tab(const qd_qsoftmax *p, int in_bits, int32_t *tab);
/* 1 when the output multiplier's shift is in [1, 62], which the fast row needs. */
int qd_qsoftmax_fast_ok(const qd_qsoftmax *p);
/* qd_qsoftmax_row's integers, bit for bit, from the table (len entries); isa QD_ISA_AVX512_VNNI
 * uses AVX-512 (gathers), anything else plain C. work: n int32. */
void qd_qsoftmax_row_tab(const qd_qsoftmax *p, const int32_t *tab, int len, const int16_t *x,
                         int n, int16_t *out, int32_t *work, qd_isa isa);

/* ---- attention scores ----
 * out[j] = clamp(qmul32(S[j] - zq*ksum[j] - off, m) + zo, lo, hi) for j < n (int32 wrap-around
 * arithmetic before the multiply, as the reference's int32 dot product). Needs m.shift in
 * [1, 62]; isa as above. */
void qd_qscore_row(const int32_t *S, const int32_t *ksum, int32_t zq, int32_t off, int n,
                   qd_qmul m, int32_t zo, int32_t lo, int32_t hi, int16_t *out, qd_isa isa);

/* ---- lookup table of an 8-bit -> 8-bit elementwise function (SiLU) ----
 * table[q + 128] = clamp(round(f(si * (q - zi)) / so) + zo), built in double at load. */
void qd_lut8_build(int8_t table[256], double (*f)(double), double si, int32_t zi, double so,
                   int32_t zo);
double qd_silu(double x);
double qd_gelu_tanh(double x); /* Gemma's GeGLU activation (the same formula as layers.h) */
static inline void qd_lut8_apply(const int8_t table[256], const int8_t *x, int8_t *out,
                                 size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = table[x[i] + 128];
}

/* ---- RoPE (rotate-half), fixed point ----
 * cos/sin tables in Q14 (int16) for positions 0..max_T-1; rotation of one head of 8-bit values
 * into another 8-bit encoding: y = round(((x-zx) cos -/+ (x'-zx) sin) * sx/sy * 2^-14) + zy. */
#define QD_ROPE_FRAC 14
typedef struct qd_qrope {
    int head_dim, max_T;
    int rot;                /* rotated dims per head (partial rotary: < head_dim; the rest are
                             * requantized as with cos 1, sin 0) */
    int16_t *cos_t, *sin_t; /* (max_T, rot/2) */
    /* for the SIMD path: per position, W lanes of cos and of +-sin laid out along a head
     * (W = 16 when head_dim divides 16, head_dim when it is a multiple of 16; else NULL) */
    int16_t *cx, *sx;
    int W;
    qd_qmul m;              /* sx / sy * 2^-14 */
    int32_t zx, zy;
} qd_qrope;
int qd_qrope_init(qd_qrope *p, int max_T, int head_dim, float theta, double sx, int32_t zx,
                  double sy, int32_t zy, qd_err *err);
/* The same over the first rot dims of a head at given inverse frequencies inv_freq[rot/2]
 * (RoPE scaling and partial rotary: qd_rope_inv_freq); qd_qrope_init is this with rot =
 * head_dim and theta^(-2i/head_dim). Partial rotary has no SIMD path (cx = NULL). */
int qd_qrope_init_freq(qd_qrope *p, int max_T, int head_dim, int rot, const double *inv_freq,
                       double sx, int32_t zx, double sy, int32_t zy, qd_err *err);
void qd_qrope_free(qd_qrope *p);
/* n_heads heads of head_dim values at position pos: x -> out (may alias). */
void qd_qrope_apply(const qd_qrope *p, const int8_t *x, int8_t *out, int n_heads, int pos);
/* The same integers; AVX-512 (QD_ISA_AVX512_VNNI, AMX) where head_dim is a multiple of 32 or
 * divides 16, AVX2 (QD_ISA_AVX2, AVX-VNNI) where it is a multiple of 16; else the scalar loop. */
void qd_qrope_apply_isa(const qd_qrope *p, const int8_t *x, int8_t *out, int n_heads, int pos,
                        qd_isa isa);

/* ---- quantization helpers (load time, float) ---- */
/* q = clamp(rint(x / s) + zp) in stored form for bits. */
int32_t qd_quantize_val(double x, double s, int32_t zp, int bits);

#endif
