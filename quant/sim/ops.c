/* Forward/backward pairs of the decoder-block ops and the fake quantizers (see ops.h). Every
 * matmul goes through BLAS gemm, called from the calling thread; everything else is a plain loop
 * over elements or rows. Sums that feed a parameter gradient (quantizer scale/offset, norm
 * weights, LET scales) are accumulated in double: they run over up to millions of elements and
 * float accumulation would make them depend on the order and lose the small terms.
 *
 * Threads: every loop runs on the default pool in chunks of a fixed size with per-chunk sums
 * added in chunk order (base/par.h), so the results are the same bits for any thread count;
 * the norms' and LET's column sums and the quantizers' scale/offset sums are such sums. Attention
 * runs its row loops on the pool between the per-head GEMMs. */
#include "quant/sim/ops.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/par.h"

#ifdef QD_GEMM_PROFILE
/* Benchmarks compile this file with QD_GEMM_PROFILE to split step time into gemm and the rest
 * (bench/bench_optimizer.c); the library never does. */
#include "base/err.h"
#include "base/sys.h"
static double qd_gemm_seconds, qd_gemm_flops;
static void gemm_prof(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M,
                      int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                      float beta, float *C, int ldc) {
    double t = qd_now();
    cblas_sgemm(o, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    qd_gemm_seconds += qd_now() - t;
    qd_gemm_flops += 2.0 * M * N * K;
}
#define GEMM gemm_prof
#define R_RINT rintf
#define R_EXP expf
#define R_SQRT sqrtf
#define R_FABS fabsf
#elif defined(QD_REAL_DOUBLE)
#define GEMM cblas_dgemm
#define R_RINT rint
#define R_EXP exp
#define R_SQRT sqrt
#define R_FABS fabs
#else
#define GEMM cblas_sgemm
#define R_RINT rintf
#define R_EXP expf
#define R_SQRT sqrtf
#define R_FABS fabsf
#endif

/* ---------------------------------------------------------------- SIMD element loops */

/* AVX2 versions of the hottest element loops, for float on x86-64 CPUs that have it (chosen at
 * run time; qd_ops_set_simd(0) turns them off). Each computes exactly what its scalar loop does,
 * operation for operation: division (not a reciprocal), round-to-nearest-even (vroundps: rint),
 * the clamps as compare-and-select in the scalar order (a NaN passes them as in C), products in
 * the same order; the range's maximum and minimum do not depend on the order. So the results are
 * the same bits as the scalar reference, which tests/test_threads checks. */
static int simd_off;

QD_API void qd_ops_set_simd(int on) { simd_off = !on; }

QD_API int qd_ops_simd(void) { return !simd_off; }

#if !defined(QD_REAL_DOUBLE) && defined(__x86_64__)
#include <immintrin.h>

static int simd_ok(size_t n) { return !simd_off && n >= 8 && __builtin_cpu_supports("avx2"); }

/* out = (clamp(rint(x / s) + zr, 0, Q) - zr) * s */
__attribute__((target("avx2"))) static void aq_fwd_avx2(float *out, const float *x, size_t n,
                                                        float s, float zr, float Q) {
    __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zr), vq = _mm256_set1_ps(Q);
    __m256 v0 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 u = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
        __m256 t = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        t = _mm256_add_ps(t, vz);
        t = _mm256_blendv_ps(t, v0, _mm256_cmp_ps(t, v0, _CMP_LT_OQ));
        t = _mm256_blendv_ps(t, vq, _mm256_cmp_ps(t, vq, _CMP_GT_OQ));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_sub_ps(t, vz), vs));
    }
    for (; i < n; i++) {
        float t = rintf(x[i] / s) + zr;
        t = t < 0 ? 0 : (t > Q ? Q : t);
        out[i] = (t - zr) * s;
    }
}

/* max (of |w| when sym) and min over w, both starting at 0 */
__attribute__((target("avx2"))) static void range_avx2(const float *w, size_t n, int sym,
                                                       float *mx, float *mn) {
    __m256 hi = _mm256_setzero_ps(), lo = _mm256_setzero_ps();
    __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(w + i);
        if (sym) v = _mm256_and_ps(v, abs);
        hi = _mm256_max_ps(v, hi); /* v > hi ? v : hi, as the scalar loop */
        lo = _mm256_min_ps(v, lo);
    }
    float h[8], l[8], H = 0, L = 0;
    _mm256_storeu_ps(h, hi);
    _mm256_storeu_ps(l, lo);
    for (int k = 0; k < 8; k++) {
        if (h[k] > H) H = h[k];
        if (l[k] < L) L = l[k];
    }
    for (; i < n; i++) {
        float v = sym ? fabsf(w[i]) : w[i];
        if (v > H) H = v;
        if (v < L) L = v;
    }
    *mx = H, *mn = sym ? 0 : L;
}

/* oi = wi * ce * ri per row, ce the effective column scales (NULL: none) */
__attribute__((target("avx2"))) static void let_row_avx2(float *oi, const float *wi,
                                                         const float *ce, float ri, int cols) {
    __m256 vr = _mm256_set1_ps(ri);
    int j = 0;
    for (; j + 8 <= cols; j += 8) {
        __m256 v = _mm256_loadu_ps(wi + j);
        if (ce) v = _mm256_mul_ps(v, _mm256_loadu_ps(ce + j));
        _mm256_storeu_ps(oi + j, _mm256_mul_ps(v, vr));
    }
    for (; j < cols; j++) oi[j] = ce ? wi[j] * ce[j] * ri : wi[j] * ri;
}

/* The backward of a clamped grid t = clamp(rint(x / s) + zr, lo, hi) (aq_fwd_avx2's with lo 0,
 * hi Q; the symmetric weight grid's with zr 0, lo qn, hi qp): dx = 0 + dout inside the grid and
 * 0 outside (dx may be NULL); the sums of dL/ds and dL/dzr (dz may be NULL) in QLANES double
 * lanes, element i in lane i % QLANES, as fq_bwd_range's scalar loop keeps them. */
__attribute__((target("avx2"))) static void fq_bwd_avx2(float *dx, const float *dout,
                                                        const float *x, size_t n, float s,
                                                        float zr, float lo, float hi,
                                                        double *as, double *az) {
    __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zr), vlo = _mm256_set1_ps(lo);
    __m256 vhi = _mm256_set1_ps(hi), v0 = _mm256_setzero_ps();
    __m256d cl = _mm256_set1_pd((double)lo - zr), cg = _mm256_set1_pd((double)hi - zr);
    __m256d sd = _mm256_set1_pd((double)s);
    __m256d a[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()}, z[2] = {a[0], a[0]};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 u = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
        __m256 r = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 t = _mm256_add_ps(r, vz);
        __m256 lt = _mm256_cmp_ps(t, vlo, _CMP_LT_OQ), gt = _mm256_cmp_ps(t, vhi, _CMP_GT_OQ);
        __m256 d = _mm256_loadu_ps(dout + i);
        if (dx) _mm256_storeu_ps(dx + i, _mm256_blendv_ps(_mm256_add_ps(v0, d), v0,
                                                          _mm256_or_ps(lt, gt)));
        for (int h = 0; h < 2; h++) { /* lanes 4h .. 4h + 3 */
            __m128 dh = h ? _mm256_extractf128_ps(d, 1) : _mm256_castps256_ps128(d);
            __m128 rh = h ? _mm256_extractf128_ps(r, 1) : _mm256_castps256_ps128(r);
            __m128 uh = h ? _mm256_extractf128_ps(u, 1) : _mm256_castps256_ps128(u);
            __m128 lh = h ? _mm256_extractf128_ps(lt, 1) : _mm256_castps256_ps128(lt);
            __m128 gh = h ? _mm256_extractf128_ps(gt, 1) : _mm256_castps256_ps128(gt);
            __m256d dd = _mm256_cvtps_pd(dh);
            __m256d ml = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(lh)));
            __m256d mg = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(gh)));
            __m256d term = _mm256_sub_pd(_mm256_cvtps_pd(rh), _mm256_cvtps_pd(uh));
            term = _mm256_blendv_pd(_mm256_blendv_pd(term, cg, mg), cl, ml);
            a[h] = _mm256_add_pd(a[h], _mm256_mul_pd(dd, term));
            __m256d ds = _mm256_and_pd(_mm256_mul_pd(dd, sd), _mm256_or_pd(ml, mg));
            z[h] = _mm256_sub_pd(z[h], ds);
        }
    }
    _mm256_storeu_pd(as, a[0]), _mm256_storeu_pd(as + 4, a[1]);
    _mm256_storeu_pd(az, z[0]), _mm256_storeu_pd(az + 4, z[1]);
    for (size_t k = 0; i < n; i++, k++) { /* the tail: element i in lane k = i % 8 */
        double d = dout[i];
        float u = x[i] / s, r = rintf(u), t = r + zr;
        if (t < lo) {
            as[k] += d * ((double)lo - zr);
            az[k] -= d * s;
            if (dx) dx[i] = 0;
        } else if (t > hi) {
            as[k] += d * ((double)hi - zr);
            az[k] -= d * s;
            if (dx) dx[i] = 0;
        } else {
            if (dx) dx[i] = 0.0f + dout[i];
            as[k] += d * ((double)r - (double)u);
        }
    }
}

/* dacc[j] += ((double)di[j] * wi[j]) * ri: one row of LET's column sums, in double */
__attribute__((target("avx2"))) static void let_dacc_avx2(double *dacc, const float *di,
                                                          const float *wi, float ri, int cols) {
    __m256d vr = _mm256_set1_pd((double)ri);
    int j = 0;
    for (; j + 4 <= cols; j += 4) {
        __m256d g = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(di + j)),
                                  _mm256_cvtps_pd(_mm_loadu_ps(wi + j)));
        __m256d a = _mm256_add_pd(_mm256_loadu_pd(dacc + j), _mm256_mul_pd(g, vr));
        _mm256_storeu_pd(dacc + j, a);
    }
    for (; j < cols; j++) dacc[j] += (double)di[j] * wi[j] * ri;
}

/* out = clamp(rint(w / s), qn, qp) * s: the symmetric weight grid */
__attribute__((target("avx2"))) static void wq_sym_avx2(float *out, const float *w, size_t n,
                                                        float s, float qn, float qp) {
    __m256 vs = _mm256_set1_ps(s), vn = _mm256_set1_ps(qn), vp = _mm256_set1_ps(qp);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 t = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + i), vs),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        t = _mm256_blendv_ps(t, vn, _mm256_cmp_ps(t, vn, _CMP_LT_OQ));
        t = _mm256_blendv_ps(t, vp, _mm256_cmp_ps(t, vp, _CMP_GT_OQ));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(t, vs));
    }
    for (; i < n; i++) {
        float t = rintf(w[i] / s);
        out[i] = (t < qn ? qn : (t > qp ? qp : t)) * s;
    }
}

static int simd_wq_sym(qd_real *out, const qd_real *w, size_t n, qd_real s, qd_real qn,
                       qd_real qp) {
    if (!simd_ok(n)) return 0;
    wq_sym_avx2(out, w, n, s, qn, qp);
    return 1;
}

static int simd_aq_fwd(qd_real *out, const qd_real *x, size_t n, qd_real s, qd_real zr,
                       qd_real Q) {
    if (!simd_ok(n)) return 0;
    aq_fwd_avx2(out, x, n, s, zr, Q);
    return 1;
}

static int simd_fq_bwd(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n,
                       qd_real s, qd_real zr, qd_real lo, qd_real hi, double *as, double *az) {
    if (!simd_ok(n)) return 0;
    fq_bwd_avx2(dx, dout, x, n, s, zr, lo, hi, as, az);
    return 1;
}

static int simd_range(const qd_real *w, size_t n, int sym, qd_real *mx, qd_real *mn) {
    if (!simd_ok(n)) return 0;
    range_avx2(w, n, sym, mx, mn);
    return 1;
}

static int simd_let_dacc(double *dacc, const qd_real *di, const qd_real *wi, qd_real ri,
                         int cols) {
    if (!simd_ok((size_t)cols)) return 0;
    let_dacc_avx2(dacc, di, wi, ri, cols);
    return 1;
}

static int simd_let_row(qd_real *oi, const qd_real *wi, const qd_real *ce, qd_real ri,
                        int cols) {
    if (!simd_ok((size_t)cols)) return 0;
    let_row_avx2(oi, wi, ce, ri, cols);
    return 1;
}
#else
static int simd_wq_sym(qd_real *out, const qd_real *w, size_t n, qd_real s, qd_real qn,
                       qd_real qp) {
    (void)out, (void)w, (void)n, (void)s, (void)qn, (void)qp;
    return 0;
}

static int simd_let_dacc(double *dacc, const qd_real *di, const qd_real *wi, qd_real ri,
                         int cols) {
    (void)dacc, (void)di, (void)wi, (void)ri, (void)cols;
    return 0;
}

static int simd_fq_bwd(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n,
                       qd_real s, qd_real zr, qd_real lo, qd_real hi, double *as, double *az) {
    (void)dx, (void)dout, (void)x, (void)n, (void)s, (void)zr, (void)lo, (void)hi, (void)as;
    (void)az;
    return 0;
}

static int simd_aq_fwd(qd_real *out, const qd_real *x, size_t n, qd_real s, qd_real zr,
                       qd_real Q) {
    (void)out, (void)x, (void)n, (void)s, (void)zr, (void)Q;
    return 0;
}

static int simd_range(const qd_real *w, size_t n, int sym, qd_real *mx, qd_real *mn) {
    (void)w, (void)n, (void)sym, (void)mx, (void)mn;
    return 0;
}

static int simd_let_row(qd_real *oi, const qd_real *wi, const qd_real *ce, qd_real ri,
                        int cols) {
    (void)oi, (void)wi, (void)ce, (void)ri, (void)cols;
    return 0;
}
#endif

/* The arguments of the elementwise ops: outputs o, o2; inputs a, b, c; a scalar s. */
typedef struct ew_args {
    qd_real *o, *o2;
    const qd_real *a, *b, *c;
    qd_real s;
    size_t C;        /* row ops: elements per row */
    size_t N;        /* column ops: rows */
    float eps;
    qd_real *r1, *r2; /* row ops: per-row outputs (mean, rstd) */
} ew_args;

#define LET_MIN ((qd_real)1e-2)
#define SCALE_MIN ((qd_real)1e-8)

QD_API size_t qd_rctx_take(qd_rctx *rc, size_t n) {
    if (!rc || rc->mode == QD_ROUND_OFF) return 0;
    size_t p = rc->cursor;
    assert(p + n <= rc->cap && "qd_rctx: residual buffer too small");
    rc->cursor += n;
    return p;
}

/* round(u) in the forward pass: plain rint, or record/replay the residual (ops.h). */
static inline qd_real rnd_fwd(qd_rctx *rc, size_t pos, qd_real u) {
    if (!rc || rc->mode == QD_ROUND_OFF) return R_RINT(u);
    if (rc->mode == QD_ROUND_RECORD) {
        qd_real r = R_RINT(u);
        rc->res[pos] = (double)r - (double)u;
        return r;
    }
    return (qd_real)((double)u + rc->res[pos]);
}

/* round(u) - u as the backward sees it: the same residual the forward used. */
static inline double rnd_res(const qd_rctx *rc, size_t pos, qd_real u) {
    if (!rc || rc->mode == QD_ROUND_OFF) return (double)R_RINT(u) - (double)u;
    return rc->res[pos];
}

static inline qd_real sigm(qd_real x) { return (qd_real)(1.0 / (1.0 + exp(-(double)x))); }

/* ---------------------------------------------------------------- RMSNorm */

static void rms_fwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    qd_rmsnorm_rows(A->o + lo * A->C, A->r1 ? A->r1 + lo : NULL, A->a + lo * A->C, A->b, hi - lo,
                    (int)A->C, A->eps);
}

QD_API void qd_rmsnorm_forward(qd_real *out, qd_real *rstd, const qd_real *x, const qd_real *w,
                               int N, int C, float eps) {
    ew_args A = {.o = out, .r1 = rstd, .a = x, .b = w, .C = (size_t)C, .eps = eps};
    par_for((size_t)N, par_rows((size_t)C), rms_fwd_r, &A);
}

/* The norms' backward: rows [lo, hi) of dx, and their column sums for dw, db into the chunk's
 * partials (C doubles each: dw's, then db's). */
typedef struct norm_bjob {
    qd_real *dx;
    const qd_real *dout, *x, *w, *mean, *rstd;
    int C, want_dw, want_db;
    double *part;  /* per chunk: C (dw) + C (db) */
    size_t chunk;
} norm_bjob;

static void rms_bwd_r(const void *p, size_t lo, size_t hi) {
    const norm_bjob *J = p;
    int C = J->C;
    double *pw = J->part ? J->part + (lo / J->chunk) * 2 * (size_t)C : NULL;
    for (size_t n = lo; n < hi; n++) {
        const qd_real *xr = J->x + n * C, *d = J->dout + n * C, *w = J->w;
        qd_real r = J->rstd[n];
        if (pw)
            for (int i = 0; i < C; i++) pw[i] += (double)(d[i] * xr[i] * r);
        if (J->dx) {
            /* out_i = x_i r w_i with r = (mean x^2 + eps)^-1/2: dr/dx_j = -r^3 x_j / C */
            double dot = 0;
            for (int i = 0; i < C; i++) dot += (double)d[i] * w[i] * xr[i];
            qd_real k = (qd_real)(dot * r * r * r / C);
            qd_real *dxr = J->dx + n * C;
            for (int i = 0; i < C; i++) dxr[i] += d[i] * w[i] * r - xr[i] * k;
        }
    }
}

/* Runs a norm backward over N rows and adds the column sums to dw, db (each may be NULL). */
static void norm_bwd_run(norm_bjob *J, par_fn fn, size_t N, qd_real *dw, qd_real *db) {
    size_t C = (size_t)J->C, chunk = par_rows(C);
    double small[2 * 1024];
    J->chunk = chunk;
    J->part = dw || db ? par_part(N, chunk, 2 * C, small, sizeof small / sizeof *small) : NULL;
    par_for(N, chunk, fn, J);
    if (!J->part) return;
    size_t nc = qd_pool_nchunks(N, chunk);
    for (size_t i = 0; i < C; i++) {
        double sw = 0, sb = 0;
        for (size_t c = 0; c < nc; c++) {
            sw += J->part[c * 2 * C + i];
            sb += J->part[c * 2 * C + C + i];
        }
        if (dw) dw[i] += (qd_real)sw;
        if (db) db[i] += (qd_real)sb;
    }
    par_part_free(J->part, small);
}

QD_API void qd_rmsnorm_backward(qd_real *dx, qd_real *dw, const qd_real *dout, const qd_real *x,
                                const qd_real *w, const qd_real *rstd, int N, int C) {
    norm_bjob J = {.dx = dx, .dout = dout, .x = x, .w = w, .rstd = rstd, .C = C};
    norm_bwd_run(&J, rms_bwd_r, (size_t)N, dw, NULL);
}

/* ---------------------------------------------------------------- LayerNorm */

typedef struct ln_args {
    qd_real *out, *mean, *rstd;
    const qd_real *x, *w, *b;
    int C;
    float eps;
} ln_args;

static void ln_fwd_r(const void *p, size_t lo, size_t hi) {
    const ln_args *A = p;
    size_t C = (size_t)A->C;
    qd_layernorm_rows(A->out + lo * C, A->mean ? A->mean + lo : NULL, A->rstd ? A->rstd + lo : NULL,
                      A->x + lo * C, A->w, A->b, hi - lo, A->C, A->eps);
}

QD_API void qd_layernorm_forward(qd_real *out, qd_real *mean, qd_real *rstd, const qd_real *x,
                                 const qd_real *w, const qd_real *b, int N, int C, float eps) {
    ln_args A = {out, mean, rstd, x, w, b, C, eps};
    par_for((size_t)N, par_rows((size_t)C), ln_fwd_r, &A);
}

static void ln_bwd_r(const void *p, size_t lo, size_t hi) {
    const norm_bjob *J = p;
    int C = J->C;
    double *pw = J->part ? J->part + (lo / J->chunk) * 2 * (size_t)C : NULL;
    for (size_t n = lo; n < hi; n++) {
        const qd_real *xr = J->x + n * C, *d = J->dout + n * C, *w = J->w;
        qd_real mu = J->mean[n], r = J->rstd[n];
        if (pw)
            for (int i = 0; i < C; i++) {
                pw[i] += (double)(d[i] * (xr[i] - mu) * r);
                pw[C + i] += (double)d[i];
            }
        if (J->dx) {
            /* x̂ = (x - μ) r: dx = r (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)) with dx̂ = dout w */
            double s1 = 0, s2 = 0;
            for (int i = 0; i < C; i++) {
                double g = (double)d[i] * w[i];
                s1 += g;
                s2 += g * ((double)xr[i] - mu) * r;
            }
            qd_real m1 = (qd_real)(s1 / C), m2 = (qd_real)(s2 / C);
            qd_real *dxr = J->dx + n * C;
            for (int i = 0; i < C; i++)
                dxr[i] += r * (d[i] * w[i] - m1 - (xr[i] - mu) * r * m2);
        }
    }
}

QD_API void qd_layernorm_backward(qd_real *dx, qd_real *dw, qd_real *db, const qd_real *dout,
                                  const qd_real *x, const qd_real *w, const qd_real *mean,
                                  const qd_real *rstd, int N, int C) {
    norm_bjob J = {.dx = dx, .dout = dout, .x = x, .w = w, .mean = mean, .rstd = rstd, .C = C};
    norm_bwd_run(&J, ln_bwd_r, (size_t)N, dw, db);
}

/* ---------------------------------------------------------------- linear */

static void bias_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t n = lo; n < hi; n++)
        for (size_t o = 0; o < A->C; o++) A->o[n * A->C + o] += A->b[o];
}

/* db[o] += Σ_n dout[n, o] for columns [lo, hi): each column summed in row order. */
static void bias_bwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    size_t N = A->N;
    for (size_t o = lo; o < hi; o++) {
        double s = 0;
        for (size_t n = 0; n < N; n++) s += A->a[n * A->C + o];
        A->o[o] += (qd_real)s;
    }
}

QD_API void qd_linear_forward(qd_real *out, const qd_real *x, const qd_real *W, const qd_real *b,
                              int N, int C, int OC) {
    GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1, x, C, W, C, 0, out, OC);
    if (b) {
        ew_args A = {.o = out, .b = b, .C = (size_t)OC};
        par_for((size_t)N, par_rows((size_t)OC), bias_r, &A);
    }
}

QD_API void qd_linear_backward(qd_real *dx, qd_real *dW, qd_real *db, const qd_real *dout,
                               const qd_real *x, const qd_real *W, int N, int C, int OC) {
    if (dx) GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1, dout, OC, W, C, 1, dx, C);
    if (dW) GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1, dout, OC, x, C, 1, dW, C);
    if (db) {
        ew_args A = {.o = db, .a = dout, .C = (size_t)OC, .N = (size_t)N};
        par_for((size_t)OC, par_rows((size_t)N), bias_bwd_r, &A);
    }
}

/* ---------------------------------------------------------------- RoPE */

typedef struct rope_args {
    qd_real *out;
    const qd_real *x, *cos_t, *sin_t;
    int T, nh, hd, rot;
} rope_args;

static void rope_fwd_r(const void *p, size_t lo, size_t hi) {
    const rope_args *A = p;
    size_t W = (size_t)A->nh * A->hd;
    for (size_t r = lo; r < hi; r++)
        qd_rope_rotate(A->out + r * W, A->x + r * W, A->cos_t, A->sin_t, r % A->T, A->nh, A->hd,
                       A->rot);
}

QD_API void qd_rope_forward(qd_real *out, const qd_real *x, const qd_real *cos_t,
                            const qd_real *sin_t, int B, int T, int nh, int hd, int rot) {
    rope_args A = {out, x, cos_t, sin_t, T, nh, hd, rot};
    par_for((size_t)B * T, par_rows((size_t)nh * hd), rope_fwd_r, &A);
}

static void rope_bwd_r(const void *p, size_t lo, size_t hi) {
    const rope_args *A = p;
    int h2 = A->rot / 2, nh = A->nh, hd = A->hd, rot = A->rot;
    size_t W = (size_t)nh * hd;
    for (size_t r = lo; r < hi; r++) {
        const qd_real *c = A->cos_t + (r % A->T) * h2, *s = A->sin_t + (r % A->T) * h2;
        for (int h = 0; h < nh; h++) {
            const qd_real *d = A->x + r * W + (size_t)h * hd;
            qd_real *o = A->out + r * W + (size_t)h * hd;
            for (int i = 0; i < h2; i++) {
                o[i] += d[i] * c[i] + d[i + h2] * s[i];
                o[i + h2] += d[i + h2] * c[i] - d[i] * s[i];
            }
            for (int i = rot; i < hd; i++) o[i] += d[i]; /* the unrotated dims pass */
        }
    }
}

QD_API void qd_rope_backward(qd_real *dx, const qd_real *dout, const qd_real *cos_t,
                             const qd_real *sin_t, int B, int T, int nh, int hd, int rot) {
    rope_args A = {dx, dout, cos_t, sin_t, T, nh, hd, rot};
    par_for((size_t)B * T, par_rows((size_t)nh * hd), rope_bwd_r, &A);
}

/* ---------------------------------------------------------------- gated MLP, residual */

static void silu_fwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) A->o[i] = qd_silu_real(A->a[i]);
}

QD_API void qd_silu_forward(qd_real *out, const qd_real *g, size_t n) {
    ew_args A = {.o = out, .a = g};
    par_for(n, PAR_ELEMS, silu_fwd_r, &A);
}

static void silu_bwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) {
        qd_real g = A->b[i], sg = 1 / (1 + R_EXP(-g));
        A->o[i] += A->a[i] * sg * (1 + g * (1 - sg));
    }
}

QD_API void qd_silu_backward(qd_real *dg, const qd_real *dout, const qd_real *g, size_t n) {
    ew_args A = {.o = dg, .a = dout, .b = g};
    par_for(n, PAR_ELEMS, silu_bwd_r, &A);
}

static void gelu_fwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) A->o[i] = qd_gelu_tanh_real(A->a[i]);
}

QD_API void qd_gelu_forward(qd_real *out, const qd_real *g, size_t n) {
    ew_args A = {.o = out, .a = g};
    par_for(n, PAR_ELEMS, gelu_fwd_r, &A);
}

static void gelu_bwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    const double k = 0.7978845608028654, a = 0.044715;
    for (size_t i = lo; i < hi; i++) {
        double x = A->b[i], t = tanh(k * (x + a * x * x * x));
        /* d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2) */
        double d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * a * x * x);
        A->o[i] += A->a[i] * (qd_real)d;
    }
}

QD_API void qd_gelu_backward(qd_real *dg, const qd_real *dout, const qd_real *g, size_t n) {
    ew_args A = {.o = dg, .a = dout, .b = g};
    par_for(n, PAR_ELEMS, gelu_bwd_r, &A);
}

QD_API void qd_act_forward(int act, qd_real *out, const qd_real *g, size_t n) {
    if (act == 1) qd_gelu_forward(out, g, n);
    else qd_silu_forward(out, g, n);
}

QD_API void qd_act_backward(int act, qd_real *dg, const qd_real *dout, const qd_real *g,
                            size_t n) {
    if (act == 1) qd_gelu_backward(dg, dout, g, n);
    else qd_silu_backward(dg, dout, g, n);
}

static void scale_fwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) A->o[i] = A->a[i] * A->s;
}

QD_API void qd_scale_forward(qd_real *out, const qd_real *x, qd_real s, size_t n) {
    ew_args A = {.o = out, .a = x, .s = s};
    par_for(n, PAR_ELEMS, scale_fwd_r, &A);
}

static void scale_bwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) A->o[i] += A->a[i] * A->s;
}

QD_API void qd_scale_backward(qd_real *dx, const qd_real *dout, qd_real s, size_t n) {
    ew_args A = {.o = dx, .a = dout, .s = s};
    par_for(n, PAR_ELEMS, scale_bwd_r, &A);
}

static void mul_fwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) A->o[i] = A->a[i] * A->b[i];
}

QD_API void qd_mul_forward(qd_real *out, const qd_real *a, const qd_real *b, size_t n) {
    ew_args A = {.o = out, .a = a, .b = b};
    par_for(n, PAR_ELEMS, mul_fwd_r, &A);
}

static void mul_bwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    if (A->o)
        for (size_t i = lo; i < hi; i++) A->o[i] += A->a[i] * A->c[i];
    if (A->o2)
        for (size_t i = lo; i < hi; i++) A->o2[i] += A->a[i] * A->b[i];
}

QD_API void qd_mul_backward(qd_real *da, qd_real *db, const qd_real *dout, const qd_real *a,
                            const qd_real *b, size_t n) {
    ew_args A = {.o = da, .o2 = db, .a = dout, .b = a, .c = b};
    par_for(n, PAR_ELEMS, mul_bwd_r, &A);
}

static void add_fwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    for (size_t i = lo; i < hi; i++) A->o[i] = A->a[i] + A->b[i];
}

QD_API void qd_add_forward(qd_real *out, const qd_real *a, const qd_real *b, size_t n) {
    ew_args A = {.o = out, .a = a, .b = b};
    par_for(n, PAR_ELEMS, add_fwd_r, &A);
}

static void add_bwd_r(const void *p, size_t lo, size_t hi) {
    const ew_args *A = p;
    if (A->o)
        for (size_t i = lo; i < hi; i++) A->o[i] += A->a[i];
    if (A->o2)
        for (size_t i = lo; i < hi; i++) A->o2[i] += A->a[i];
}

QD_API void qd_add_backward(qd_real *da, qd_real *db, const qd_real *dout, size_t n) {
    ew_args A = {.o = da, .o2 = db, .a = dout};
    par_for(n, PAR_ELEMS, add_bwd_r, &A);
}

/* ---------------------------------------------------------------- activation quantizer */

QD_API qd_real qd_aq_scale(const qd_aq *q) { return *q->s < SCALE_MIN ? SCALE_MIN : *q->s; }

static inline qd_real aq_levels(int bits) { return (qd_real)((1u << bits) - 1); }

QD_API qd_real qd_aq_zero(const qd_aq *q) {
    qd_real z = *q->z, Q = aq_levels(q->bits);
    return z > 0 ? (z < Q ? z : Q) : 0; /* NaN -> 0 */
}

/* The offset's gradient flows while z is inside its range (the ends included, so that a z
 * the optimizer projected onto an end can move back in). */
static inline int aq_zero_free(const qd_aq *q) {
    return *q->z >= 0 && *q->z <= aq_levels(q->bits);
}

/* One element of a clamped grid: t = clamp(round(u) + zr, lo, hi), with the rounding residual
 * and the clamp decision recorded or replayed (ops.h). */
static inline qd_real fq_elem(qd_rctx *rc, size_t pos, qd_real u, qd_real zr, qd_real lo,
                              qd_real hi) {
    if (!rc || rc->mode == QD_ROUND_OFF) {
        qd_real t = R_RINT(u) + zr;
        return t < lo ? lo : (t > hi ? hi : t);
    }
    if (rc->mode == QD_ROUND_RECORD) {
        qd_real r = R_RINT(u);
        rc->res[pos] = (double)r - (double)u;
        qd_real t = r + zr;
        rc->reg[pos] = t < lo ? -1 : (t > hi ? 1 : 0);
        return t < lo ? lo : (t > hi ? hi : t);
    }
    signed char g = rc->reg[pos];
    return g < 0 ? lo : (g > 0 ? hi : (qd_real)((double)u + rc->res[pos]) + zr);
}

/* The backward's view of one element: the residual round(u)-u and the clamp decision. */
static inline int fq_region(const qd_rctx *rc, size_t pos, qd_real u, qd_real zr, qd_real lo,
                            qd_real hi, double *res) {
    if (!rc || rc->mode == QD_ROUND_OFF) {
        qd_real r = R_RINT(u);
        *res = (double)r - (double)u;
        qd_real t = r + zr;
        return t < lo ? -1 : (t > hi ? 1 : 0);
    }
    *res = rc->res[pos];
    return rc->reg[pos];
}

/* The element loop shared by qd_aq_forward and the quantizers inside attention: zr is the
 * already-rounded offset, pos the rounding slot of x[0]. */
static void aq_fwd_range(qd_real *out, const qd_real *x, size_t n, qd_real s, qd_real zr,
                         qd_real Q, qd_rctx *rc, size_t pos) {
    if (!rc || rc->mode == QD_ROUND_OFF) {
        if (simd_aq_fwd(out, x, n, s, zr, Q)) return;
        for (size_t i = 0; i < n; i++) {
            qd_real t = R_RINT(x[i] / s) + zr;
            t = t < 0 ? 0 : (t > Q ? Q : t);
            out[i] = (t - zr) * s;
        }
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = (fq_elem(rc, pos + i, x[i] / s, zr, 0, Q) - zr) * s;
}

/* The backward of a clamped grid t = clamp(round(x / s) + zr, lo, hi) over n elements: dx = dout
 * inside the grid and 0 outside (dx may be NULL; written as 0 + dout, the bits of a zeroed dx
 * accumulated), and the sums of dL/ds and dL/dzr added into *ds, *dz (dz may be NULL). The sums
 * are kept in QLANES double lanes, element i in lane i % QLANES, and the lanes are added in
 * order at the end: the SIMD loop's order (fq_bwd_avx2), so both give the same bits, and four
 * times shorter dependency chains than one running sum. fault 2 (test hook): the STE mask
 * ignored. */
#define QLANES 8
static void fq_bwd_range(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n,
                         qd_real s, qd_real zr, qd_real lo, qd_real hi, const qd_rctx *rc,
                         size_t pos, double *ds, double *dz, int fault) {
    double as[QLANES] = {0}, az[QLANES] = {0};
    if (!((!rc || rc->mode == QD_ROUND_OFF) && !QD_FAULT(fault, 2) &&
          simd_fq_bwd(dx, dout, x, n, s, zr, lo, hi, as, az))) {
        for (size_t i = 0; i < n; i++) {
            double res, d = dout[i];
            int k = (int)(i % QLANES);
            int g = fq_region(rc, pos + i, x[i] / s, zr, lo, hi, &res);
            if (g < 0) {
                as[k] += d * ((double)lo - zr);
                az[k] -= d * s;
            } else if (g > 0) {
                as[k] += d * ((double)hi - zr);
                az[k] -= d * s;
            } else {
                as[k] += d * res;
            }
            if (dx) dx[i] = g == 0 || QD_FAULT(fault, 2) ? (qd_real)0 + dout[i] : 0;
        }
    }
    double ts = 0, tz = 0;
    for (int k = 0; k < QLANES; k++) ts += as[k], tz += az[k];
    *ds += ts;
    if (dz) *dz += tz;
}

/* Backward of aq_fwd_range (the grid [0, Q]): fq_bwd_range. */
static void aq_bwd_range(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n, qd_real s,
                         qd_real zr, qd_real Q, const qd_rctx *rc, size_t pos, double *ds,
                         double *dz, int fault) {
    fq_bwd_range(dx, dout, x, n, s, zr, 0, Q, rc, pos, ds, dz, fault);
}

/* A quantizer's element loop on chunks: forward (out, x), or backward (dx, dout, x) with each
 * chunk's sums of dL/ds and dL/dzr at part[2 k], part[2 k + 1]. rc: the forward's (may record);
 * crc: the backward's. pos: the slot of element 0. */
typedef struct aq_job {
    qd_real *out;
    const qd_real *x, *dout;
    qd_real s, zr, Q;
    qd_rctx *rc;
    const qd_rctx *crc;
    size_t pos;
    int fault;
    double *part;
    size_t chunk;
} aq_job;

static void aq_fwd_r(const void *p, size_t lo, size_t hi) {
    const aq_job *J = p;
    aq_fwd_range(J->out + lo, J->x + lo, hi - lo, J->s, J->zr, J->Q, J->rc, J->pos + lo);
}

QD_API void qd_aq_forward(qd_real *out, const qd_real *x, size_t n, const qd_aq *q, qd_rctx *rc,
                          size_t pos) {
    qd_real s = qd_aq_scale(q), zr = rnd_fwd(rc, pos, qd_aq_zero(q));
    aq_job J = {.out = out, .x = x, .s = s, .zr = zr, .Q = aq_levels(q->bits), .rc = rc,
                .pos = pos + 1};
    par_for(n, PAR_ELEMS, aq_fwd_r, &J);
}

/* One attention row's gradient through its quantizer (on) or straight (off): dst (T) = the
 * first n entries' gradient from src, zeros after them (the causal mask's columns). */
static void row_bwd(qd_real *dst, const qd_real *src, const qd_real *x, int T, int n, int on,
                    qd_real s, qd_real zr, qd_real Q, const qd_rctx *rc, size_t pos, double *ds,
                    double *dz) {
    memset(dst + n, 0, sizeof(qd_real) * (size_t)(T - n));
    if (on) aq_bwd_range(dst, src, x, (size_t)n, s, zr, Q, rc, pos, ds, dz, 0);
    else memcpy(dst, src, sizeof(qd_real) * (size_t)n);
}

static void aq_bwd_r(const void *p, size_t lo, size_t hi) {
    const aq_job *J = p;
    double *pt = J->part + 2 * (lo / J->chunk);
    aq_bwd_range(J->out ? J->out + lo : NULL, J->dout + lo, J->x + lo, hi - lo, J->s, J->zr,
                 J->Q, J->crc, J->pos + lo, &pt[0], &pt[1], J->fault);
}

QD_API void qd_aq_backward(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n,
                           const qd_aq *q, const qd_rctx *rc, size_t pos, int fault) {
    qd_real s = qd_aq_scale(q), zc = qd_aq_zero(q);
    qd_real zr = (qd_real)((double)zc + rnd_res(rc, pos, zc));
    double sums[2] = {0, 0}, small[512];
    aq_job J = {.out = dx, .dout = dout, .x = x, .s = s, .zr = zr, .Q = aq_levels(q->bits),
                .crc = rc, .pos = pos + 1, .fault = fault, .chunk = PAR_ELEMS};
    J.part = par_part(n, PAR_ELEMS, 2, small, 512);
    par_for(n, PAR_ELEMS, aq_bwd_r, &J);
    par_part_add(J.part, n, PAR_ELEMS, 2, sums);
    par_part_free(J.part, small);
    double ds = sums[0], dz = sums[1];
    if (q->ds && *q->s >= SCALE_MIN) *q->ds += (qd_real)ds;
    if (q->dz && aq_zero_free(q)) *q->dz += (qd_real)dz;
}

/* ---------------------------------------------------------------- weight quantizer */

/* Range of one group: max and min including 0 (so the grid always represents zero exactly), or
 * max|w| for symmetric; arg indices (-1 when the bound is the included 0). The reference. */
static void group_range_ref(const qd_real *w, size_t n, int sym, qd_real *mx, qd_real *mn,
                            long *amx, long *amn) {
    qd_real hi = 0, lo = 0;
    long ah = -1, al = -1;
    for (size_t i = 0; i < n; i++) {
        qd_real v = sym ? R_FABS(w[i]) : w[i];
        if (v > hi) hi = v, ah = (long)i;
        if (!sym && v < lo) lo = v, al = (long)i;
    }
    *mx = hi, *mn = lo;
    if (amx) *amx = ah, *amn = al;
}

/* The arg indices of the bounds mx, mn of w: the first element equal to each (-1 when the
 * bound is the included 0): where group_range_ref's strict comparisons stop moving. */
static void group_args(const qd_real *w, size_t n, int sym, qd_real mx, qd_real mn, long *amx,
                       long *amn) {
    *amx = *amn = -1;
    if (mx > 0)
        for (size_t i = 0; i < n; i++)
            if ((sym ? R_FABS(w[i]) : w[i]) == mx) {
                *amx = (long)i;
                break;
            }
    if (!sym && mn < 0)
        for (size_t i = 0; i < n; i++)
            if (w[i] == mn) {
                *amn = (long)i;
                break;
            }
}

/* group_range_ref's result: the bounds from simd_range where it runs (the maximum and minimum
 * do not depend on the order), then, when asked for (amx not NULL), group_args. */
static void group_range(const qd_real *w, size_t n, int sym, qd_real *mx, qd_real *mn,
                        long *amx, long *amn) {
    if (!simd_range(w, n, sym, mx, mn)) {
        group_range_ref(w, n, sym, mx, mn, amx, amn);
        return;
    }
    if (amx) group_args(w, n, sym, *mx, *mn, amx, amn);
}

/* One weight quantizer call: a tensor's groups on the pool (one range per row), or a single
 * range with its elements on the pool in chunks. The quantized tensor is t = LET(W) when ce or
 * rr is set (t_ij = w_ij · ce_j / eff(rr_i), qd_let_weight_forward's values), made row by row
 * or chunk by chunk where it is read (tbuf) and never stored; else t = W. */
typedef struct wq_job {
    qd_real *out, *dw, *scale, *zero, *dgam, *dbet;
    const qd_real *w, *dout, *gam, *bet;
    const qd_real *c, *rr;  /* LET: column scales, row scales (NULL: none) */
    const qd_real *ce;      /* qd_let_eff(c), when made (let_ce) */
    int rows, cols, fault;
    qd_wq_spec sp;
    qd_rctx *rc;        /* forward */
    const qd_rctx *crc; /* backward */
    size_t pos;
    qd_real s, zr;      /* per tensor: the grid */
    double *part;       /* per tensor backward: (ds, dz) per chunk */
    qd_real *cmx, *cmn; /* per tensor range: per chunk */
} wq_job;

static int wq_let(const wq_job *J) { return J->c || J->rr; }

/* The effective LET column scales qd_let_eff(c) (cols), or NULL when c is NULL or they cannot
 * be allocated (then let_seg takes qd_let_eff per element). Free with free. */
static qd_real *let_ce(const qd_real *c, int cols) {
    qd_real *ce = c ? malloc(sizeof(qd_real) * (size_t)cols) : NULL;
    if (ce)
        for (int j = 0; j < cols; j++) ce[j] = qd_let_eff(c[j]);
    return ce;
}

/* m elements of a LET row from column j0 on: o = w · eff(c) · ri, with the effective column
 * scales ce (from column j0) when made, else qd_let_eff(c) per element (c from column j0; both
 * NULL: no column scales). The one loop of qd_let_weight_forward and the weight quantizer. */
static void let_seg(qd_real *o, const qd_real *wi, const qd_real *ce, const qd_real *c,
                    qd_real ri, int m) {
    if ((ce || !c) && simd_let_row(o, wi, ce, ri, m)) return;
    if (ce)
        for (int j = 0; j < m; j++) o[j] = wi[j] * ce[j] * ri;
    else if (c)
        for (int j = 0; j < m; j++) o[j] = wi[j] * qd_let_eff(c[j]) * ri;
    else
        for (int j = 0; j < m; j++) o[j] = wi[j] * ri;
}

/* t over the flat elements [e0, e0 + n): W itself, or LET's values made into buf (n). */
static const qd_real *wq_src(const wq_job *J, size_t e0, size_t n, qd_real *buf) {
    if (!wq_let(J)) return J->w + e0;
    size_t cols = (size_t)J->cols;
    for (size_t e = e0; e < e0 + n;) {
        size_t i = e / cols, j = e % cols, m = cols - j;
        if (m > e0 + n - e) m = e0 + n - e;
        qd_real ri = J->rr ? 1 / qd_let_eff(J->rr[i]) : 1;
        let_seg(buf + (e - e0), J->w + i * cols + j, J->ce ? J->ce + j : NULL,
                J->c ? J->c + j : NULL, ri, (int)m);
        e += m;
    }
    return buf;
}

/* A chunk's scratch for t: n values, in sb (PAR_ELEMS, on the caller's stack) when they fit,
 * else allocated; NULL when t is W itself. A malloc per chunk was a fresh page of heap per
 * chunk (the freed top is trimmed): 3% of an optimizer step in the kernel's page clearing. */
static qd_real *wq_buf(const wq_job *J, size_t n, qd_real *sb) {
    if (!wq_let(J)) return NULL;
    if (n <= PAR_ELEMS) return sb;
    qd_real *b = malloc(sizeof(qd_real) * n);
    assert(b && "qd_wq: out of memory");
    return b;
}

static void wq_buf_free(qd_real *b, const qd_real *sb) {
    if (b != sb) free(b);
}

/* Range of a whole tensor on chunks of PAR_ELEMS: each chunk's bounds, combined in chunk order
 * with the strict comparisons of one pass; the arg indices (amx not NULL) as the first element
 * equal to each bound, searched in the first chunk that holds it. group_range's result. */
static void range_r(const void *p, size_t lo, size_t hi) {
    const wq_job *J = p;
    qd_real sb[PAR_ELEMS], *buf = wq_buf(J, hi - lo, sb);
    size_t k = lo / PAR_ELEMS;
    group_range(wq_src(J, lo, hi - lo, buf), hi - lo, J->sp.sym, &J->cmx[k], &J->cmn[k], NULL,
                NULL);
    wq_buf_free(buf, sb);
}

/* The arg index of bound b (max: mx 1) in chunk k, as a flat index, with t there (*tv; tv may
 * be NULL). */
static long range_arg(const wq_job *J, size_t n, size_t k, int mx, qd_real b, qd_real *tv) {
    size_t lo = k * PAR_ELEMS, m = n - lo < PAR_ELEMS ? n - lo : PAR_ELEMS;
    qd_real sb[PAR_ELEMS], *buf = wq_buf(J, m, sb);
    const qd_real *t = wq_src(J, lo, m, buf);
    long amx, amn;
    group_args(t, m, J->sp.sym, mx ? b : 0, mx ? 0 : b, &amx, &amn);
    long a = mx ? amx : amn;
    if (tv) *tv = a >= 0 ? t[a] : 0;
    wq_buf_free(buf, sb);
    return a >= 0 ? (long)lo + a : -1;
}

static void range_par(wq_job *J, qd_wrange *rg) {
    size_t n = (size_t)J->rows * J->cols, nc = qd_pool_nchunks(n, PAR_ELEMS);
    qd_real v[2 * 64], *vp = nc <= 64 ? v : malloc(sizeof(qd_real) * 2 * nc);
    assert(vp && "qd_wq: out of memory");
    J->cmx = vp, J->cmn = vp + nc;
    par_for(n, PAR_ELEMS, range_r, J);
    qd_real hi = 0, lo = 0;
    size_t kh = 0, kl = 0;
    for (size_t k = 0; k < nc; k++) {
        if (J->cmx[k] > hi) hi = J->cmx[k], kh = k;
        if (!J->sp.sym && J->cmn[k] < lo) lo = J->cmn[k], kl = k;
    }
    if (vp != v) free(vp);
    J->cmx = J->cmn = NULL;
    rg->mx = hi, rg->mn = J->sp.sym ? 0 : lo;
    rg->amx = hi > 0 ? range_arg(J, n, kh, 1, hi, &rg->tmx) : -1;
    rg->amn = !J->sp.sym && lo < 0 ? range_arg(J, n, kl, 0, lo, NULL) : -1;
    if (rg->amx < 0) rg->tmx = 0;
}

/* The forward grid of group g from its range: scale s and the rounded offset zr (asymmetric:
 * -lo/s rounded in slot pos + g). */
static void wq_grid_fwd(const wq_job *J, int g, qd_real mx, qd_real mn, qd_real *s, qd_real *zr) {
    qd_real fh = J->gam ? sigm(J->gam[g]) : 1, fl = J->bet ? sigm(J->bet[g]) : 1;
    if (J->sp.sym) {
        qd_real qp = (qd_real)((1 << (J->sp.bits - 1)) - 1);
        *s = fh * mx / qp;
        if (*s < SCALE_MIN) *s = SCALE_MIN;
        *zr = 0;
    } else {
        qd_real Q = aq_levels(J->sp.bits);
        qd_real hi = fh * mx, lo = fl * mn;
        *s = (hi - lo) / Q;
        if (*s < SCALE_MIN) *s = SCALE_MIN;
        *zr = rnd_fwd(J->rc, J->pos + g, -lo / *s);
    }
}

/* Ŵ of the flat elements [e0, e0 + n) (their t in wg) on the grid (s, zr); their slots follow
 * the rows z slots. */
static void wq_elems_fwd(const wq_job *J, const qd_real *wg, size_t e0, size_t n, qd_real s,
                         qd_real zr) {
    qd_real *og = J->out + e0;
    size_t pe = J->pos + (size_t)J->rows + e0;
    if (J->sp.sym) {
        qd_real qp = (qd_real)((1 << (J->sp.bits - 1)) - 1), qn = -qp - 1;
        if (!J->rc || J->rc->mode == QD_ROUND_OFF) {
            if (simd_wq_sym(og, wg, n, s, qn, qp)) return;
            for (size_t i = 0; i < n; i++) {
                qd_real t = R_RINT(wg[i] / s);
                og[i] = (t < qn ? qn : (t > qp ? qp : t)) * s;
            }
        } else {
            for (size_t i = 0; i < n; i++) og[i] = fq_elem(J->rc, pe + i, wg[i] / s, 0, qn, qp) * s;
        }
    } else {
        aq_fwd_range(og, wg, n, s, zr, aq_levels(J->sp.bits), J->rc, pe);
    }
}

static void wq_fwd_rows_r(const void *p, size_t lo, size_t hi) {
    const wq_job *J = p;
    size_t cols = (size_t)J->cols;
    qd_real sb[PAR_ELEMS], *buf = wq_buf(J, cols, sb);
    for (size_t g = lo; g < hi; g++) {
        qd_real mx, mn, s, zr;
        const qd_real *t = wq_src(J, g * cols, cols, buf);
        group_range(t, cols, J->sp.sym, &mx, &mn, NULL, NULL);
        wq_grid_fwd(J, (int)g, mx, mn, &s, &zr);
        wq_elems_fwd(J, t, g * cols, cols, s, zr);
        if (J->scale) J->scale[g] = s;
        if (J->zero) J->zero[g] = zr;
    }
    wq_buf_free(buf, sb);
}

static void wq_fwd_elems_r(const void *p, size_t lo, size_t hi) {
    const wq_job *J = p;
    qd_real sb[PAR_ELEMS], *buf = wq_buf(J, hi - lo, sb);
    wq_elems_fwd(J, wq_src(J, lo, hi - lo, buf), lo, hi - lo, J->s, J->zr);
    wq_buf_free(buf, sb);
}

QD_API void qd_wq_let_forward(qd_real *out, const qd_real *w, int rows, int cols,
                              const qd_real *c, const qd_real *r, qd_wq_spec sp,
                              const qd_real *gam, const qd_real *bet, qd_real *scale,
                              qd_real *zero, qd_rctx *rc, size_t pos, qd_wrange *rg) {
    qd_real *ce = let_ce(c, cols);
    wq_job J = {.out = out, .w = w, .c = c, .ce = ce, .rr = r, .rows = rows, .cols = cols,
                .sp = sp, .gam = gam, .bet = bet, .scale = scale, .zero = zero, .rc = rc,
                .pos = pos};
    if (sp.per_channel) {
        par_for((size_t)rows, par_rows((size_t)cols), wq_fwd_rows_r, &J);
    } else {
        qd_wrange own = {0};
        if (!rg) rg = &own;
        if (!rg->known) range_par(&J, rg), rg->known = 1;
        wq_grid_fwd(&J, 0, rg->mx, rg->mn, &J.s, &J.zr);
        par_for((size_t)rows * cols, PAR_ELEMS, wq_fwd_elems_r, &J);
        if (scale) scale[0] = J.s;
        if (zero) zero[0] = J.zr;
    }
    free(ce);
}

QD_API void qd_wq_forward(qd_real *out, const qd_real *w, int rows, int cols, qd_wq_spec sp,
                          const qd_real *gam, const qd_real *bet, qd_real *scale, qd_real *zero,
                          qd_rctx *rc, size_t pos) {
    qd_wq_let_forward(out, w, rows, cols, NULL, NULL, sp, gam, bet, scale, zero, rc, pos, NULL);
}

/* The backward grid of group g: s, zr as the forward had them, whether s sits on its clamp. */
static void wq_grid_bwd(const wq_job *J, int g, qd_real mx, qd_real mn, qd_real *s, qd_real *zr,
                        int *s_clamped) {
    qd_real fh = J->gam ? sigm(J->gam[g]) : 1, fl = J->bet ? sigm(J->bet[g]) : 1;
    if (J->sp.sym) {
        qd_real qp = (qd_real)((1 << (J->sp.bits - 1)) - 1);
        *s = fh * mx / qp;
        *zr = 0;
    } else {
        qd_real Q = aq_levels(J->sp.bits);
        qd_real hi = fh * mx, lo = fl * mn;
        *s = (hi - lo) / Q;
    }
    *s_clamped = *s < SCALE_MIN;
    if (*s_clamped) *s = SCALE_MIN;
    if (!J->sp.sym) {
        qd_real zc = -(fl * mn) / *s;
        *zr = (qd_real)((double)zc + rnd_res(J->crc, J->pos + g, zc));
    }
}

/* dw = the STE part over the flat elements [e0, e0 + n) (their t in wg); their sums of dL/ds
 * (and dL/dzr) into *ds, *dz. */
static void wq_elems_bwd(const wq_job *J, const qd_real *wg, size_t e0, size_t n, qd_real s,
                         qd_real zr, double *ds, double *dz) {
    const qd_real *dg = J->dout + e0;
    qd_real *dwg = J->dw ? J->dw + e0 : NULL;
    size_t pe = J->pos + (size_t)J->rows + e0;
    if (J->sp.sym) {
        qd_real qp = (qd_real)((1 << (J->sp.bits - 1)) - 1), qn = -qp - 1;
        fq_bwd_range(dwg, dg, wg, n, s, 0, qn, qp, J->crc, pe, ds, NULL, 0);
    } else {
        aq_bwd_range(dwg, dg, wg, n, s, zr, aq_levels(J->sp.bits), J->crc, pe, ds, dz, 0);
    }
}

/* The range's share of group g's gradient from the element sums: dgam, dbet, and dw at the
 * arg-max/min (flat indices, -1: the included 0; neg: t at the arg-max is negative). */
static void wq_finish_bwd(const wq_job *J, int g, qd_real mx, qd_real mn, long amx, long amn,
                          int neg, qd_real s, int s_clamped, double ds, double dz) {
    qd_real fh = J->gam ? sigm(J->gam[g]) : 1, fl = J->bet ? sigm(J->bet[g]) : 1;
    double dhi = 0, dlo = 0;
    if (J->sp.sym) {
        qd_real qp = (qd_real)((1 << (J->sp.bits - 1)) - 1);
        if (!s_clamped) dhi = ds / qp;
    } else {
        qd_real Q = aq_levels(J->sp.bits);
        qd_real lo = fl * mn;
        /* zr = round(-lo/s) with the STE: dz/dlo = -1/s, dz/ds = lo/s^2 */
        double dst = ds + dz * (double)lo / ((double)s * s);
        dlo = -dz / s;
        if (!s_clamped) {
            dhi += dst / Q;
            dlo -= dst / Q;
        }
    }
    /* hi = sigmoid(γ)·max, lo = sigmoid(β)·min */
    if (J->gam && J->dgam) J->dgam[g] += (qd_real)(dhi * mx * fh * (1 - fh));
    if (J->bet && J->dbet && !J->sp.sym) J->dbet[g] += (qd_real)(dlo * mn * fl * (1 - fl));
    if (J->dw && !QD_FAULT(J->fault, 1)) {
        if (amx >= 0) J->dw[amx] += (qd_real)(dhi * fh) * (J->sp.sym && neg ? -1 : 1);
        if (amn >= 0) J->dw[amn] += (qd_real)(dlo * fl);
    }
}

static void wq_bwd_rows_r(const void *p, size_t lo, size_t hi) {
    const wq_job *J = p;
    size_t cols = (size_t)J->cols;
    qd_real sb[PAR_ELEMS], *buf = wq_buf(J, cols, sb);
    for (size_t g = lo; g < hi; g++) {
        qd_real mx, mn, s, zr;
        long amx, amn;
        int s_clamped;
        const qd_real *t = wq_src(J, g * cols, cols, buf);
        group_range(t, cols, J->sp.sym, &mx, &mn, &amx, &amn);
        wq_grid_bwd(J, (int)g, mx, mn, &s, &zr, &s_clamped);
        double ds = 0, dz = 0;
        wq_elems_bwd(J, t, g * cols, cols, s, zr, &ds, &dz);
        wq_finish_bwd(J, (int)g, mx, mn, amx >= 0 ? (long)(g * cols) + amx : -1,
                      amn >= 0 ? (long)(g * cols) + amn : -1, amx >= 0 && t[amx] < 0, s,
                      s_clamped, ds, dz);
    }
    wq_buf_free(buf, sb);
}

static void wq_bwd_elems_r(const void *p, size_t lo, size_t hi) {
    const wq_job *J = p;
    double *pt = J->part + 2 * (lo / PAR_ELEMS);
    qd_real sb[PAR_ELEMS], *buf = wq_buf(J, hi - lo, sb);
    wq_elems_bwd(J, wq_src(J, lo, hi - lo, buf), lo, hi - lo, J->s, J->zr, &pt[0], &pt[1]);
    wq_buf_free(buf, sb);
}

QD_API void qd_wq_let_backward(qd_real *dw, qd_real *dgam, qd_real *dbet, const qd_real *dout,
                               const qd_real *w, int rows, int cols, const qd_real *c,
                               const qd_real *r, qd_wq_spec sp, const qd_real *gam,
                               const qd_real *bet, const qd_rctx *rc, size_t pos,
                               const qd_wrange *rg, int fault) {
    qd_real *ce = let_ce(c, cols);
    wq_job J = {.dw = dw, .dgam = dgam, .dbet = dbet, .dout = dout, .w = w, .c = c, .ce = ce,
                .rr = r,
                .rows = rows, .cols = cols, .sp = sp, .gam = gam, .bet = bet, .crc = rc,
                .pos = pos, .fault = fault};
    if (sp.per_channel) {
        par_for((size_t)rows, par_rows((size_t)cols), wq_bwd_rows_r, &J);
        free(ce);
        return;
    }
    size_t n = (size_t)rows * cols;
    qd_wrange own = {0};
    if (!rg || !rg->known) {
        range_par(&J, &own);
        rg = &own;
    }
    int s_clamped;
    wq_grid_bwd(&J, 0, rg->mx, rg->mn, &J.s, &J.zr, &s_clamped);
    double sums[2] = {0, 0}, small[512];
    J.part = par_part(n, PAR_ELEMS, 2, small, 512);
    par_for(n, PAR_ELEMS, wq_bwd_elems_r, &J);
    par_part_add(J.part, n, PAR_ELEMS, 2, sums);
    par_part_free(J.part, small);
    wq_finish_bwd(&J, 0, rg->mx, rg->mn, rg->amx, rg->amn, rg->tmx < 0, J.s, s_clamped,
                  sums[0], sums[1]);
    free(ce);
}

QD_API void qd_wq_backward(qd_real *dw, qd_real *dgam, qd_real *dbet, const qd_real *dout,
                           const qd_real *w, int rows, int cols, qd_wq_spec sp,
                           const qd_real *gam, const qd_real *bet, const qd_rctx *rc, size_t pos,
                           int fault) {
    qd_wq_let_backward(dw, dgam, dbet, dout, w, rows, cols, NULL, NULL, sp, gam, bet, rc, pos,
                       NULL, fault);
}

/* ---------------------------------------------------------------- attention */

/* A quantizer inside attention on n elements (scale s, rounded offset zr, top level Q), or a
 * plain copy where there is none (q NULL). */
static void attn_fq(qd_real *out, const qd_real *x, size_t n, const qd_aq *q, qd_real s,
                    qd_real zr, qd_real Q, qd_rctx *rc, size_t pos) {
    if (q)
        aq_fwd_range(out, x, n, s, zr, Q, rc, pos);
    else
        memcpy(out, x, sizeof(qd_real) * n);
}

/* Rows of a (T, T) score matrix per chunk: about PAR_ELEMS causal entries (T/2 a row). */
static size_t attn_rows(int T) { return par_rows((size_t)(T + 1) / 2); }

/* The row loops of one (window, head) of the attention: the forward's quantizer-softmax-
 * quantizer per row, the backward's recomputation of P̂ and its gradient through them. */
typedef struct attn_job {
    qd_real *Sb, *Pb, *scr, *dP;   /* forward: S, P, P̂ (scratch); backward: P̂, dP */
    const qd_real *cSb, *cPb;
    int T;
    const qd_aq *sq, *pq;
    qd_real ss, zs, sp, zp, Qs, Qp;
    qd_rctx *rc;
    const qd_rctx *crc;
    size_t ps, pp;                /* the slots of this head's row 0, entry 0 */
    int fault;
    double *part;                 /* backward: (dss, dzs, dsp, dzp) per chunk */
} attn_job;

static void attn_fwd_r(const void *p, size_t lo, size_t hi) {
    const attn_job *J = p;
    int T = J->T;
    for (size_t i = lo; i < hi; i++) {
        qd_real *srow = J->Sb + i * T, *prow = J->Pb + i * T, *tmp = J->scr + i * T;
        memset(srow + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - (int)i));
        attn_fq(tmp, srow, i + 1, J->sq, J->ss, J->zs, J->Qs, J->rc, J->ps + i * T);
        qd_softmax_row(prow, tmp, (int)i + 1);
        memset(prow + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - (int)i));
        /* P̂ goes into the scratch row (zeros above the diagonal) */
        attn_fq(tmp, prow, i + 1, J->pq, J->sp, J->zp, J->Qp, J->rc, J->pp + i * T);
        memset(tmp + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - (int)i));
    }
}

QD_API void qd_attn_forward(qd_real *out, qd_real *S, qd_real *P, const qd_real *q,
                            const qd_real *k, const qd_real *v, int B, int T, int nh, int nkv,
                            int hd, const qd_aq *sq, const qd_aq *pq, qd_rctx *rc, size_t pos_s,
                            size_t pos_p, qd_real *scratch) {
    size_t QW = (size_t)nh * hd, KW = (size_t)nkv * hd, TT = (size_t)T * T;
    int grp = nh / nkv;
    qd_real scale = (qd_real)(1.0 / sqrt((double)hd));
    attn_job J = {.T = T, .sq = sq, .pq = pq, .rc = rc, .scr = scratch};
    if (sq) {
        J.ss = qd_aq_scale(sq), J.Qs = aq_levels(sq->bits);
        J.zs = rnd_fwd(rc, pos_s, qd_aq_zero(sq));
    }
    if (pq) {
        J.sp = qd_aq_scale(pq), J.Qp = aq_levels(pq->bits);
        J.zp = rnd_fwd(rc, pos_p, qd_aq_zero(pq));
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            size_t bh = (size_t)b * nh + h;
            const qd_real *qb = q + (size_t)b * T * QW + (size_t)h * hd;
            const qd_real *kb = k + (size_t)b * T * KW + (size_t)(h / grp) * hd;
            const qd_real *vb = v + (size_t)b * T * KW + (size_t)(h / grp) * hd;
            J.Sb = S + bh * TT, J.Pb = P + bh * TT;
            J.ps = pos_s + 1 + bh * TT, J.pp = pos_p + 1 + bh * TT;
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qb, (int)QW, kb,
                 (int)KW, 0, J.Sb, T);
            par_for((size_t)T, attn_rows(T), attn_fwd_r, &J);
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1, scratch, T, vb,
                 (int)KW, 0, out + (size_t)b * T * QW + (size_t)h * hd, (int)QW);
        }
}

/* P̂ rows again, with the same rounding residuals as the forward. */
static void attn_phat_r(const void *p, size_t lo, size_t hi) {
    const attn_job *J = p;
    int T = J->T;
    for (size_t i = lo; i < hi; i++) {
        qd_real *tmp = J->scr + i * T;
        const qd_real *prow = J->cPb + i * T;
        if (J->pq) {
            if (!J->crc || J->crc->mode == QD_ROUND_OFF) {
                aq_fwd_range(tmp, prow, i + 1, J->sp, J->zp, J->Qp, NULL, 0);
            } else {
                /* replay what the forward recorded (rc is const here) */
                qd_rctx rr = *J->crc;
                rr.mode = QD_ROUND_REPLAY;
                aq_fwd_range(tmp, prow, i + 1, J->sp, J->zp, J->Qp, &rr, J->pp + i * T);
            }
        } else {
            memcpy(tmp, prow, sizeof(qd_real) * (i + 1));
        }
        memset(tmp + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - (int)i));
    }
}

static void attn_bwd_r(const void *p, size_t lo, size_t hi) {
    const attn_job *J = p;
    int T = J->T;
    double *pt = J->part + 4 * (lo / attn_rows(T));
    for (size_t i = lo; i < hi; i++) {
        const qd_real *prow = J->cPb + i * T, *srow = J->cSb + i * T;
        qd_real *drow = J->dP + i * T, *g = J->scr + i * T;
        int n = (int)i + 1;
        /* through the P quantizer: g = dL/dP */
        row_bwd(g, drow, prow, T, n, J->pq != NULL, J->sp, J->zp, J->Qp, J->crc, J->pp + i * T,
                &pt[2], &pt[3]);
        /* softmax: dŜ_j = P_j (g_j - Σ_k P_k g_k) */
        double dot = 0;
        for (int j = 0; j < n; j++) dot += (double)prow[j] * g[j];
        if (QD_FAULT(J->fault, 3)) dot = 0;
        for (int j = 0; j < n; j++) g[j] = prow[j] * (g[j] - (qd_real)dot);
        /* through the S quantizer into drow = dL/dS (zeros above the diagonal) */
        row_bwd(drow, g, srow, T, n, J->sq != NULL, J->ss, J->zs, J->Qs, J->crc, J->ps + i * T,
                &pt[0], &pt[1]);
    }
}

QD_API void qd_attn_backward(qd_real *dq, qd_real *dk, qd_real *dv, const qd_real *dout,
                             const qd_real *S, const qd_real *P, const qd_real *q,
                             const qd_real *k, const qd_real *v, int B, int T, int nh, int nkv,
                             int hd, const qd_aq *sq, const qd_aq *pq, const qd_rctx *rc,
                             size_t pos_s, size_t pos_p, qd_real *scratch, int fault) {
    size_t QW = (size_t)nh * hd, KW = (size_t)nkv * hd, TT = (size_t)T * T;
    int grp = nh / nkv;
    qd_real scale = (qd_real)(1.0 / sqrt((double)hd));
    attn_job J = {.T = T, .sq = sq, .pq = pq, .crc = rc, .fault = fault};
    if (sq) {
        J.ss = qd_aq_scale(sq), J.Qs = aq_levels(sq->bits);
        qd_real zc = qd_aq_zero(sq);
        J.zs = (qd_real)((double)zc + rnd_res(rc, pos_s, zc));
    }
    if (pq) {
        J.sp = qd_aq_scale(pq), J.Qp = aq_levels(pq->bits);
        qd_real zc = qd_aq_zero(pq);
        J.zp = (qd_real)((double)zc + rnd_res(rc, pos_p, zc));
    }
    double sums[4] = {0, 0, 0, 0}, small[4 * 64];
    size_t rows = attn_rows(T);
    J.part = par_part((size_t)T, rows, 4, small, sizeof small / sizeof *small);
    qd_real *phat = scratch, *dP = scratch + TT;
    J.scr = phat, J.dP = dP;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            size_t bh = (size_t)b * nh + h;
            size_t qoff = (size_t)b * T * QW + (size_t)h * hd;
            size_t koff = (size_t)b * T * KW + (size_t)(h / grp) * hd;
            const qd_real *dob = dout + qoff;
            J.cSb = S + bh * TT, J.cPb = P + bh * TT;
            J.ps = pos_s + 1 + bh * TT, J.pp = pos_p + 1 + bh * TT;
            par_for((size_t)T, rows, attn_phat_r, &J);
            /* dP̂ = dO v^T ; dv += P̂^T dO */
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1, dob, (int)QW, v + koff,
                 (int)KW, 0, dP, T);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1, phat, T, dob, (int)QW, 1,
                 dv + koff, (int)KW);
            memset(J.part, 0, sizeof(double) * 4 * qd_pool_nchunks((size_t)T, rows));
            par_for((size_t)T, rows, attn_bwd_r, &J);
            par_part_add(J.part, (size_t)T, rows, 4, sums);
            /* S = scale q k^T: dq += scale dS k, dk += scale dS^T q */
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dP, T, k + koff,
                 (int)KW, 1, dq + qoff, (int)QW);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dP, T, q + qoff,
                 (int)QW, 1, dk + koff, (int)KW);
        }
    par_part_free(J.part, small);
    double dss = sums[0], dzs = sums[1], dsp = sums[2], dzp = sums[3];
    if (sq) {
        if (sq->ds && *sq->s >= SCALE_MIN) *sq->ds += (qd_real)dss;
        if (sq->dz && aq_zero_free(sq)) *sq->dz += (qd_real)dzs;
    }
    if (pq) {
        if (pq->ds && *pq->s >= SCALE_MIN) *pq->ds += (qd_real)dsp;
        if (pq->dz && aq_zero_free(pq)) *pq->dz += (qd_real)dzp;
    }
}

/* ---------------------------------------------------------------- LET scales */

QD_API qd_real qd_let_eff(qd_real s) {
    if (R_FABS(s) >= LET_MIN) return s;
    return s < 0 ? -LET_MIN : LET_MIN;
}

typedef struct let_job {
    qd_real *out, *dr;
    const qd_real *w, *dout, *c, *r;
    const qd_real *ce;  /* forward: qd_let_eff(c), when made */
    int cols;
    double *part;  /* backward: cols column sums per chunk of rows */
    size_t chunk;
} let_job;

static void let_fwd_r(const void *p, size_t lo, size_t hi) {
    const let_job *J = p;
    int cols = J->cols;
    for (size_t i = lo; i < hi; i++) {
        qd_real ri = J->r ? 1 / qd_let_eff(J->r[i]) : 1;
        const qd_real *wi = J->w + i * cols;
        let_seg(J->out + i * cols, wi, J->ce, J->c, ri, cols);
    }
}

QD_API void qd_let_weight_forward(qd_real *out, const qd_real *w, int rows, int cols,
                                  const qd_real *c, const qd_real *r) {
    qd_real *ce = let_ce(c, cols);
    let_job J = {.out = out, .w = w, .c = c, .r = r, .cols = cols, .ce = ce};
    par_for((size_t)rows, par_rows((size_t)cols), let_fwd_r, &J);
    free(ce);
}

/* Rows [lo, hi): dr per row; the chunk's column sums for dc into its partials. */
static void let_bwd_r(const void *p, size_t lo, size_t hi) {
    const let_job *J = p;
    int cols = J->cols;
    double *dacc = J->part ? J->part + (lo / J->chunk) * (size_t)cols : NULL;
    int want_dr = J->dr && J->r;
    for (size_t i = lo; i < hi; i++) {
        qd_real re = J->r ? qd_let_eff(J->r[i]) : 1;
        qd_real ri = 1 / re;
        const qd_real *wi = J->w + i * cols, *di = J->dout + i * cols;
        if (!want_dr) { /* the column sums alone (the row sum feeds dr only) */
            if (dacc && !simd_let_dacc(dacc, di, wi, ri, cols))
                for (int j = 0; j < cols; j++) dacc[j] += (double)di[j] * wi[j] * ri;
            continue;
        }
        double rowdot = 0;
        for (int j = 0; j < cols; j++) {
            qd_real cj = J->c ? qd_let_eff(J->c[j]) : 1;
            double g = (double)di[j] * wi[j];
            if (dacc) dacc[j] += g * ri;
            rowdot += g * cj;
        }
        if (J->dr && J->r && R_FABS(J->r[i]) >= LET_MIN) J->dr[i] += (qd_real)(-rowdot * ri * ri);
    }
}

QD_API void qd_let_weight_backward(qd_real *dc, qd_real *dr, const qd_real *dout,
                                   const qd_real *w, int rows, int cols, const qd_real *c,
                                   const qd_real *r) {
    /* Rows are walked once; each chunk of rows keeps its column sums for dc in double, added in
     * chunk order. */
    size_t chunk = par_rows((size_t)cols) * 4;
    double small[1024];
    let_job J = {.dr = dr, .w = w, .dout = dout, .c = c, .r = r, .cols = cols, .chunk = chunk};
    if (dc && c) J.part = par_part((size_t)rows, chunk, (size_t)cols, small, 1024);
    par_for((size_t)rows, chunk, let_bwd_r, &J);
    if (J.part) {
        size_t nc = qd_pool_nchunks((size_t)rows, chunk);
        for (int j = 0; j < cols; j++) {
            double s = 0;
            for (size_t k = 0; k < nc; k++) s += J.part[k * (size_t)cols + j];
            if (R_FABS(c[j]) >= LET_MIN) dc[j] += (qd_real)s;
        }
        par_part_free(J.part, small);
    }
}

QD_API void qd_let_div_forward(qd_real *out, const qd_real *v, const qd_real *s, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = v[i] / qd_let_eff(s[i]);
}

QD_API void qd_let_div_backward(qd_real *ds, const qd_real *dout, const qd_real *v,
                                const qd_real *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (R_FABS(s[i]) < LET_MIN) continue;
        ds[i] += -dout[i] * v[i] / (s[i] * s[i]);
    }
}
