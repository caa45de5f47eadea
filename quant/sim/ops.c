/* Forward/backward pairs of the decoder-block ops and the fake quantizers (see ops.h). Every
 * matmul goes through BLAS gemm; everything else is a plain loop. Sums that feed a parameter
 * gradient (quantizer scale/offset, norm weights, LET scales) are accumulated in double: they
 * run over up to millions of elements and float accumulation would make them depend on the
 * order and lose the small terms. */
#include "quant/sim/ops.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

QD_API void qd_rmsnorm_forward(qd_real *out, qd_real *rstd, const qd_real *x, const qd_real *w,
                               int N, int C, float eps) {
    qd_rmsnorm_rows(out, rstd, x, w, (size_t)N, C, eps);
}

QD_API void qd_rmsnorm_backward(qd_real *dx, qd_real *dw, const qd_real *dout, const qd_real *x,
                                const qd_real *w, const qd_real *rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const qd_real *xr = x + (size_t)n * C, *d = dout + (size_t)n * C;
        qd_real r = rstd[n];
        if (dw)
            for (int i = 0; i < C; i++) dw[i] += d[i] * xr[i] * r;
        if (dx) {
            /* out_i = x_i r w_i with r = (mean x^2 + eps)^-1/2: dr/dx_j = -r^3 x_j / C */
            double dot = 0;
            for (int i = 0; i < C; i++) dot += (double)d[i] * w[i] * xr[i];
            qd_real k = (qd_real)(dot * r * r * r / C);
            qd_real *dxr = dx + (size_t)n * C;
            for (int i = 0; i < C; i++) dxr[i] += d[i] * w[i] * r - xr[i] * k;
        }
    }
}

/* ---------------------------------------------------------------- LayerNorm */

QD_API void qd_layernorm_forward(qd_real *out, qd_real *mean, qd_real *rstd, const qd_real *x,
                                 const qd_real *w, const qd_real *b, int N, int C, float eps) {
    qd_layernorm_rows(out, mean, rstd, x, w, b, (size_t)N, C, eps);
}

QD_API void qd_layernorm_backward(qd_real *dx, qd_real *dw, qd_real *db, const qd_real *dout,
                                  const qd_real *x, const qd_real *w, const qd_real *mean,
                                  const qd_real *rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const qd_real *xr = x + (size_t)n * C, *d = dout + (size_t)n * C;
        qd_real mu = mean[n], r = rstd[n];
        if (dw)
            for (int i = 0; i < C; i++) dw[i] += d[i] * (xr[i] - mu) * r;
        if (db)
            for (int i = 0; i < C; i++) db[i] += d[i];
        if (dx) {
            /* x̂ = (x - μ) r: dx = r (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)) with dx̂ = dout w */
            double s1 = 0, s2 = 0;
            for (int i = 0; i < C; i++) {
                double g = (double)d[i] * w[i];
                s1 += g;
                s2 += g * ((double)xr[i] - mu) * r;
            }
            qd_real m1 = (qd_real)(s1 / C), m2 = (qd_real)(s2 / C);
            qd_real *dxr = dx + (size_t)n * C;
            for (int i = 0; i < C; i++)
                dxr[i] += r * (d[i] * w[i] - m1 - (xr[i] - mu) * r * m2);
        }
    }
}

/* ---------------------------------------------------------------- linear */

QD_API void qd_linear_forward(qd_real *out, const qd_real *x, const qd_real *W, const qd_real *b,
                              int N, int C, int OC) {
    GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1, x, C, W, C, 0, out, OC);
    if (b)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += b[o];
}

QD_API void qd_linear_backward(qd_real *dx, qd_real *dW, qd_real *db, const qd_real *dout,
                               const qd_real *x, const qd_real *W, int N, int C, int OC) {
    if (dx) GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1, dout, OC, W, C, 1, dx, C);
    if (dW) GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1, dout, OC, x, C, 1, dW, C);
    if (db)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
            db[o] += (qd_real)s;
        }
}

/* ---------------------------------------------------------------- RoPE */

QD_API void qd_rope_forward(qd_real *out, const qd_real *x, const qd_real *cos_t,
                            const qd_real *sin_t, int B, int T, int nh, int hd, int rot) {
    size_t W = (size_t)nh * hd;
    for (size_t r = 0; r < (size_t)B * T; r++)
        qd_rope_rotate(out + r * W, x + r * W, cos_t, sin_t, r % T, nh, hd, rot);
}

QD_API void qd_rope_backward(qd_real *dx, const qd_real *dout, const qd_real *cos_t,
                             const qd_real *sin_t, int B, int T, int nh, int hd, int rot) {
    int h2 = rot / 2;
    size_t W = (size_t)nh * hd;
    for (size_t r = 0; r < (size_t)B * T; r++) {
        const qd_real *c = cos_t + (r % T) * h2, *s = sin_t + (r % T) * h2;
        for (int h = 0; h < nh; h++) {
            const qd_real *d = dout + r * W + (size_t)h * hd;
            qd_real *o = dx + r * W + (size_t)h * hd;
            for (int i = 0; i < h2; i++) {
                o[i] += d[i] * c[i] + d[i + h2] * s[i];
                o[i + h2] += d[i + h2] * c[i] - d[i] * s[i];
            }
            for (int i = rot; i < hd; i++) o[i] += d[i]; /* the unrotated dims pass */
        }
    }
}

/* ---------------------------------------------------------------- gated MLP, residual */

QD_API void qd_silu_forward(qd_real *out, const qd_real *g, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = qd_silu_real(g[i]);
}

QD_API void qd_silu_backward(qd_real *dg, const qd_real *dout, const qd_real *g, size_t n) {
    for (size_t i = 0; i < n; i++) {
        qd_real sg = 1 / (1 + R_EXP(-g[i]));
        dg[i] += dout[i] * sg * (1 + g[i] * (1 - sg));
    }
}

QD_API void qd_gelu_forward(qd_real *out, const qd_real *g, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = qd_gelu_tanh_real(g[i]);
}

QD_API void qd_gelu_backward(qd_real *dg, const qd_real *dout, const qd_real *g, size_t n) {
    const double k = 0.7978845608028654, a = 0.044715;
    for (size_t i = 0; i < n; i++) {
        double x = g[i], t = tanh(k * (x + a * x * x * x));
        /* d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2) */
        double d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * a * x * x);
        dg[i] += dout[i] * (qd_real)d;
    }
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

QD_API void qd_scale_forward(qd_real *out, const qd_real *x, qd_real s, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = x[i] * s;
}

QD_API void qd_scale_backward(qd_real *dx, const qd_real *dout, qd_real s, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dout[i] * s;
}

QD_API void qd_mul_forward(qd_real *out, const qd_real *a, const qd_real *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

QD_API void qd_mul_backward(qd_real *da, qd_real *db, const qd_real *dout, const qd_real *a,
                            const qd_real *b, size_t n) {
    if (da)
        for (size_t i = 0; i < n; i++) da[i] += dout[i] * b[i];
    if (db)
        for (size_t i = 0; i < n; i++) db[i] += dout[i] * a[i];
}

QD_API void qd_add_forward(qd_real *out, const qd_real *a, const qd_real *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

QD_API void qd_add_backward(qd_real *da, qd_real *db, const qd_real *dout, size_t n) {
    if (da)
        for (size_t i = 0; i < n; i++) da[i] += dout[i];
    if (db)
        for (size_t i = 0; i < n; i++) db[i] += dout[i];
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
        for (size_t i = 0; i < n; i++) {
            qd_real t = R_RINT(x[i] / s) + zr;
            t = t < 0 ? 0 : (t > Q ? Q : t);
            out[i] = (t - zr) * s;
        }
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = (fq_elem(rc, pos + i, x[i] / s, zr, 0, Q) - zr) * s;
}

/* Backward of aq_fwd_range: dx +=, and the sums of dL/ds and dL/dzr into *ds, *dz. */
static void aq_bwd_range(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n, qd_real s,
                         qd_real zr, qd_real Q, const qd_rctx *rc, size_t pos, double *ds,
                         double *dz, int fault) {
    double as = 0, az = 0;
    for (size_t i = 0; i < n; i++) {
        double res, d = dout[i];
        int g = fq_region(rc, pos + i, x[i] / s, zr, 0, Q, &res);
        if (g < 0) {
            as += d * -(double)zr;
            az -= d * s;
            if (QD_FAULT(fault, 2) && dx) dx[i] += dout[i]; /* test hook: STE mask ignored */
        } else if (g > 0) {
            as += d * ((double)Q - zr);
            az -= d * s;
            if (QD_FAULT(fault, 2) && dx) dx[i] += dout[i];
        } else {
            if (dx) dx[i] += dout[i];
            as += d * res;
        }
    }
    *ds += as;
    *dz += az;
}

QD_API void qd_aq_forward(qd_real *out, const qd_real *x, size_t n, const qd_aq *q, qd_rctx *rc,
                          size_t pos) {
    qd_real s = qd_aq_scale(q), zr = rnd_fwd(rc, pos, qd_aq_zero(q));
    aq_fwd_range(out, x, n, s, zr, aq_levels(q->bits), rc, pos + 1);
}

/* One attention row's gradient through its quantizer (on) or straight (off): dst (T) = the
 * first n entries' gradient from src, zeros after them (the causal mask's columns). */
static void row_bwd(qd_real *dst, const qd_real *src, const qd_real *x, int T, int n, int on,
                    qd_real s, qd_real zr, qd_real Q, const qd_rctx *rc, size_t pos, double *ds,
                    double *dz) {
    memset(dst, 0, sizeof(qd_real) * (size_t)T);
    if (on) aq_bwd_range(dst, src, x, (size_t)n, s, zr, Q, rc, pos, ds, dz, 0);
    else memcpy(dst, src, sizeof(qd_real) * (size_t)n);
}

QD_API void qd_aq_backward(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n,
                           const qd_aq *q, const qd_rctx *rc, size_t pos, int fault) {
    qd_real s = qd_aq_scale(q), zc = qd_aq_zero(q);
    qd_real zr = (qd_real)((double)zc + rnd_res(rc, pos, zc));
    double ds = 0, dz = 0;
    aq_bwd_range(dx, dout, x, n, s, zr, aq_levels(q->bits), rc, pos + 1, &ds, &dz, fault);
    if (q->ds && *q->s >= SCALE_MIN) *q->ds += (qd_real)ds;
    if (q->dz && aq_zero_free(q)) *q->dz += (qd_real)dz;
}

/* ---------------------------------------------------------------- weight quantizer */

/* Range of one group: max and min including 0 (so the grid always represents zero exactly), or
 * max|w| for symmetric; arg indices (-1 when the bound is the included 0). */
static void group_range(const qd_real *w, size_t n, int sym, qd_real *mx, qd_real *mn,
                        long *amx, long *amn) {
    qd_real hi = 0, lo = 0;
    long ah = -1, al = -1;
    for (size_t i = 0; i < n; i++) {
        qd_real v = sym ? R_FABS(w[i]) : w[i];
        if (v > hi) hi = v, ah = (long)i;
        if (!sym && v < lo) lo = v, al = (long)i;
    }
    *mx = hi, *mn = lo, *amx = ah, *amn = al;
}

QD_API void qd_wq_forward(qd_real *out, const qd_real *w, int rows, int cols, qd_wq_spec sp,
                          const qd_real *gam, const qd_real *bet, qd_real *scale, qd_real *zero,
                          qd_rctx *rc, size_t pos) {
    int groups = sp.per_channel ? rows : 1;
    size_t gsz = sp.per_channel ? (size_t)cols : (size_t)rows * cols;
    for (int g = 0; g < groups; g++) {
        const qd_real *wg = w + (size_t)g * gsz;
        qd_real *og = out + (size_t)g * gsz;
        size_t pe = pos + (size_t)rows + (size_t)g * gsz; /* element slots after the z slots */
        qd_real mx, mn;
        long amx, amn;
        group_range(wg, gsz, sp.sym, &mx, &mn, &amx, &amn);
        qd_real fh = gam ? sigm(gam[g]) : 1, fl = bet ? sigm(bet[g]) : 1;
        if (sp.sym) {
            qd_real qp = (qd_real)((1 << (sp.bits - 1)) - 1), qn = -qp - 1;
            qd_real s = fh * mx / qp;
            if (s < SCALE_MIN) s = SCALE_MIN;
            if (!rc || rc->mode == QD_ROUND_OFF) {
                for (size_t i = 0; i < gsz; i++) {
                    qd_real t = R_RINT(wg[i] / s);
                    og[i] = (t < qn ? qn : (t > qp ? qp : t)) * s;
                }
            } else {
                for (size_t i = 0; i < gsz; i++) og[i] = fq_elem(rc, pe + i, wg[i] / s, 0, qn, qp) * s;
            }
            if (scale) scale[g] = s;
            if (zero) zero[g] = 0;
        } else {
            qd_real Q = aq_levels(sp.bits);
            qd_real hi = fh * mx, lo = fl * mn;
            qd_real s = (hi - lo) / Q;
            if (s < SCALE_MIN) s = SCALE_MIN;
            qd_real zr = rnd_fwd(rc, pos + g, -lo / s);
            aq_fwd_range(og, wg, gsz, s, zr, Q, rc, pe);
            if (scale) scale[g] = s;
            if (zero) zero[g] = zr;
        }
    }
}

QD_API void qd_wq_backward(qd_real *dw, qd_real *dgam, qd_real *dbet, const qd_real *dout,
                           const qd_real *w, int rows, int cols, qd_wq_spec sp,
                           const qd_real *gam, const qd_real *bet, const qd_rctx *rc, size_t pos,
                           int fault) {
    int groups = sp.per_channel ? rows : 1;
    size_t gsz = sp.per_channel ? (size_t)cols : (size_t)rows * cols;
    for (int g = 0; g < groups; g++) {
        const qd_real *wg = w + (size_t)g * gsz, *dg = dout + (size_t)g * gsz;
        qd_real *dwg = dw ? dw + (size_t)g * gsz : NULL;
        size_t pe = pos + (size_t)rows + (size_t)g * gsz;
        qd_real mx, mn;
        long amx, amn;
        group_range(wg, gsz, sp.sym, &mx, &mn, &amx, &amn);
        qd_real fh = gam ? sigm(gam[g]) : 1, fl = bet ? sigm(bet[g]) : 1;
        double dhi = 0, dlo = 0;
        if (sp.sym) {
            qd_real qp = (qd_real)((1 << (sp.bits - 1)) - 1), qn = -qp - 1;
            qd_real s = fh * mx / qp;
            int s_clamped = s < SCALE_MIN;
            if (s_clamped) s = SCALE_MIN;
            double ds = 0;
            for (size_t i = 0; i < gsz; i++) {
                double res, d = dg[i];
                int rg = fq_region(rc, pe + i, wg[i] / s, 0, qn, qp, &res);
                if (rg < 0) ds += d * qn;
                else if (rg > 0) ds += d * qp;
                else {
                    if (dwg) dwg[i] += dg[i];
                    ds += d * res;
                }
            }
            if (!s_clamped) dhi = ds / qp;
        } else {
            qd_real Q = aq_levels(sp.bits);
            qd_real hi = fh * mx, lo = fl * mn;
            qd_real s = (hi - lo) / Q;
            int s_clamped = s < SCALE_MIN;
            if (s_clamped) s = SCALE_MIN;
            qd_real zc = -lo / s;
            qd_real zr = (qd_real)((double)zc + rnd_res(rc, pos + g, zc));
            double ds = 0, dz = 0;
            aq_bwd_range(dwg, dg, wg, gsz, s, zr, Q, rc, pe, &ds, &dz, 0);
            /* zr = round(-lo/s) with the STE: dz/dlo = -1/s, dz/ds = lo/s^2 */
            double dst = ds + dz * (double)lo / ((double)s * s);
            dlo = -dz / s;
            if (!s_clamped) {
                dhi += dst / Q;
                dlo -= dst / Q;
            }
        }
        /* hi = sigmoid(γ)·max, lo = sigmoid(β)·min */
        if (gam && dgam) dgam[g] += (qd_real)(dhi * mx * fh * (1 - fh));
        if (bet && dbet && !sp.sym) dbet[g] += (qd_real)(dlo * mn * fl * (1 - fl));
        if (dwg && !QD_FAULT(fault, 1)) {
            if (amx >= 0) dwg[amx] += (qd_real)(dhi * fh) * (sp.sym && wg[amx] < 0 ? -1 : 1);
            if (amn >= 0) dwg[amn] += (qd_real)(dlo * fl);
        }
    }
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

QD_API void qd_attn_forward(qd_real *out, qd_real *S, qd_real *P, const qd_real *q,
                            const qd_real *k, const qd_real *v, int B, int T, int nh, int nkv,
                            int hd, const qd_aq *sq, const qd_aq *pq, qd_rctx *rc, size_t pos_s,
                            size_t pos_p, qd_real *scratch) {
    size_t QW = (size_t)nh * hd, KW = (size_t)nkv * hd, TT = (size_t)T * T;
    int grp = nh / nkv;
    qd_real scale = (qd_real)(1.0 / sqrt((double)hd));
    qd_real ss = 0, zs = 0, sp = 0, zp = 0, Qs = 0, Qp = 0;
    if (sq) ss = qd_aq_scale(sq), zs = rnd_fwd(rc, pos_s, qd_aq_zero(sq)), Qs = aq_levels(sq->bits);
    if (pq) sp = qd_aq_scale(pq), zp = rnd_fwd(rc, pos_p, qd_aq_zero(pq)), Qp = aq_levels(pq->bits);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            size_t bh = (size_t)b * nh + h;
            const qd_real *qb = q + (size_t)b * T * QW + (size_t)h * hd;
            const qd_real *kb = k + (size_t)b * T * KW + (size_t)(h / grp) * hd;
            const qd_real *vb = v + (size_t)b * T * KW + (size_t)(h / grp) * hd;
            qd_real *Sb = S + bh * TT, *Pb = P + bh * TT;
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qb, (int)QW, kb,
                 (int)KW, 0, Sb, T);
            for (int i = 0; i < T; i++) {
                qd_real *srow = Sb + (size_t)i * T, *prow = Pb + (size_t)i * T;
                qd_real *tmp = scratch + (size_t)i * T;
                memset(srow + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - i));
                attn_fq(tmp, srow, (size_t)i + 1, sq, ss, zs, Qs, rc,
                        pos_s + 1 + bh * TT + (size_t)i * T);
                qd_softmax_row(prow, tmp, i + 1);
                memset(prow + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - i));
                /* P̂ goes into the scratch row (zeros above the diagonal) */
                attn_fq(tmp, prow, (size_t)i + 1, pq, sp, zp, Qp, rc,
                        pos_p + 1 + bh * TT + (size_t)i * T);
                memset(tmp + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - i));
            }
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1, scratch, T, vb,
                 (int)KW, 0, out + (size_t)b * T * QW + (size_t)h * hd, (int)QW);
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
    qd_real ss = 0, zs = 0, sp = 0, zp = 0, Qs = 0, Qp = 0;
    if (sq) {
        ss = qd_aq_scale(sq), Qs = aq_levels(sq->bits);
        qd_real zc = qd_aq_zero(sq);
        zs = (qd_real)((double)zc + rnd_res(rc, pos_s, zc));
    }
    if (pq) {
        sp = qd_aq_scale(pq), Qp = aq_levels(pq->bits);
        qd_real zc = qd_aq_zero(pq);
        zp = (qd_real)((double)zc + rnd_res(rc, pos_p, zc));
    }
    double dss = 0, dzs = 0, dsp = 0, dzp = 0;
    qd_real *phat = scratch, *dP = scratch + TT;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            size_t bh = (size_t)b * nh + h;
            size_t qoff = (size_t)b * T * QW + (size_t)h * hd;
            size_t koff = (size_t)b * T * KW + (size_t)(h / grp) * hd;
            const qd_real *Sb = S + bh * TT, *Pb = P + bh * TT, *dob = dout + qoff;
            for (int i = 0; i < T; i++) {
                qd_real *tmp = phat + (size_t)i * T;
                const qd_real *prow = Pb + (size_t)i * T;
                if (pq) {
                    /* recompute P̂ with the same rounding residuals as the forward */
                    if (!rc || rc->mode == QD_ROUND_OFF) {
                        aq_fwd_range(tmp, prow, (size_t)i + 1, sp, zp, Qp, NULL, 0);
                    } else {
                        /* replay what the forward recorded (rc is const here) */
                        qd_rctx rr = *rc;
                        rr.mode = QD_ROUND_REPLAY;
                        aq_fwd_range(tmp, prow, (size_t)i + 1, sp, zp, Qp, &rr,
                                     pos_p + 1 + bh * TT + (size_t)i * T);
                    }
                } else {
                    memcpy(tmp, prow, sizeof(qd_real) * (size_t)(i + 1));
                }
                memset(tmp + i + 1, 0, sizeof(qd_real) * (size_t)(T - 1 - i));
            }
            /* dP̂ = dO v^T ; dv += P̂^T dO */
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1, dob, (int)QW, v + koff,
                 (int)KW, 0, dP, T);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1, phat, T, dob, (int)QW, 1,
                 dv + koff, (int)KW);
            for (int i = 0; i < T; i++) {
                const qd_real *prow = Pb + (size_t)i * T, *srow = Sb + (size_t)i * T;
                qd_real *drow = dP + (size_t)i * T, *g = phat + (size_t)i * T;
                /* through the P quantizer: g = dL/dP */
                row_bwd(g, drow, prow, T, i + 1, pq != NULL, sp, zp, Qp, rc,
                        pos_p + 1 + bh * TT + (size_t)i * T, &dsp, &dzp);
                /* softmax: dŜ_j = P_j (g_j - Σ_k P_k g_k) */
                double dot = 0;
                for (int j = 0; j <= i; j++) dot += (double)prow[j] * g[j];
                if (QD_FAULT(fault, 3)) dot = 0;
                for (int j = 0; j <= i; j++) g[j] = prow[j] * (g[j] - (qd_real)dot);
                /* through the S quantizer into drow = dL/dS (zeros above the diagonal) */
                row_bwd(drow, g, srow, T, i + 1, sq != NULL, ss, zs, Qs, rc,
                        pos_s + 1 + bh * TT + (size_t)i * T, &dss, &dzs);
            }
            /* S = scale q k^T: dq += scale dS k, dk += scale dS^T q */
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dP, T, k + koff,
                 (int)KW, 1, dq + qoff, (int)QW);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dP, T, q + qoff,
                 (int)QW, 1, dk + koff, (int)KW);
        }
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

QD_API void qd_let_weight_forward(qd_real *out, const qd_real *w, int rows, int cols,
                                  const qd_real *c, const qd_real *r) {
    for (int i = 0; i < rows; i++) {
        qd_real ri = r ? 1 / qd_let_eff(r[i]) : 1;
        const qd_real *wi = w + (size_t)i * cols;
        qd_real *oi = out + (size_t)i * cols;
        if (c)
            for (int j = 0; j < cols; j++) oi[j] = wi[j] * qd_let_eff(c[j]) * ri;
        else
            for (int j = 0; j < cols; j++) oi[j] = wi[j] * ri;
    }
}

QD_API void qd_let_weight_backward(qd_real *dc, qd_real *dr, const qd_real *dout,
                                   const qd_real *w, int rows, int cols, const qd_real *c,
                                   const qd_real *r) {
    /* Rows are walked once; the column sums for dc go into a double buffer. */
    double dacc_small[256];
    double *dacc = NULL;
    if (dc && c) {
        dacc = cols <= 256 ? dacc_small : malloc(sizeof(double) * (size_t)cols);
        assert(dacc && "qd_let_weight_backward: out of memory");
        memset(dacc, 0, sizeof(double) * (size_t)cols);
    }
    for (int i = 0; i < rows; i++) {
        qd_real re = r ? qd_let_eff(r[i]) : 1;
        qd_real ri = 1 / re;
        const qd_real *wi = w + (size_t)i * cols, *di = dout + (size_t)i * cols;
        double rowdot = 0;
        for (int j = 0; j < cols; j++) {
            qd_real cj = c ? qd_let_eff(c[j]) : 1;
            double g = (double)di[j] * wi[j];
            if (dacc) dacc[j] += g * ri;
            rowdot += g * cj;
        }
        if (dr && r && R_FABS(r[i]) >= LET_MIN) dr[i] += (qd_real)(-rowdot * ri * ri);
    }
    if (dacc) {
        for (int j = 0; j < cols; j++)
            if (R_FABS(c[j]) >= LET_MIN) dc[j] += (qd_real)dacc[j];
        if (dacc != dacc_small) free(dacc);
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
