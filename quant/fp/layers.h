/* The layer kernels both forwards share, so that RMSNorm, SiLU, softmax and RoPE have one
 * definition: the FP32 inference forward (quant/fp/forward.c) and the simulation's
 * forward/backward op pairs (quant/sim/ops.c) call these. They are static inline over qd_real,
 * the element type: float in the library, double in a file compiled with QD_REAL_DOUBLE
 * (tests/test_gradcheck.c compiles ops.c that way, see quant/sim/ops.h), so the gradient checks
 * run this very code too. */
#ifndef QD_FP_LAYERS_H
#define QD_FP_LAYERS_H

#include <math.h>
#include <stddef.h>

#ifdef QD_REAL_DOUBLE
typedef double qd_real;
#define QD_REAL_EXP exp
#else
typedef float qd_real;
#define QD_REAL_EXP expf
#endif

/* RMSNorm of N rows of C: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps), the sum of
 * squares accumulated in double. rstd (N) receives each row's factor (NULL: not kept). out may
 * equal x. */
static inline void qd_rmsnorm_rows(qd_real *out, qd_real *rstd, const qd_real *x,
                                   const qd_real *w, size_t N, int C, float eps) {
    for (size_t n = 0; n < N; n++) {
        const qd_real *xr = x + n * C;
        qd_real *o = out + n * C;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xr[i] * xr[i];
        qd_real r = (qd_real)(1.0 / sqrt(ss / C + eps));
        if (rstd) rstd[n] = r;
        for (int i = 0; i < C; i++) o[i] = xr[i] * r * w[i];
    }
}

/* silu(g) = g * sigmoid(g) in qd_real (the integer runtime builds its table from a double one) */
static inline qd_real qd_silu_real(qd_real g) { return g / (1 + QD_REAL_EXP(-g)); }

/* out (n) = softmax(x): the maximum subtracted first, the sum accumulated in double. out may
 * equal x. */
static inline void qd_softmax_row(qd_real *out, const qd_real *x, int n) {
    qd_real mx = x[0];
    for (int j = 1; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    double sum = 0;
    for (int j = 0; j < n; j++) {
        out[j] = QD_REAL_EXP(x[j] - mx);
        sum += out[j];
    }
    qd_real inv = (qd_real)(1.0 / sum);
    for (int j = 0; j < n; j++) out[j] *= inv;
}

/* Column i of RoPE cos/sin tables (T, hd/2) for positions 0..T-1: entry [t*(hd/2) + i] is the
 * angle t * inv_freq (in double). The frequencies come from qd_rope_inv_freq (theta and RoPE
 * scaling), or theta^(-2i/hd) unscaled. */
static inline void qd_rope_column(qd_real *cos_t, qd_real *sin_t, int T, int hd, int i,
                                  double inv_freq) {
    size_t h2 = (size_t)(hd / 2);
    for (int t = 0; t < T; t++) {
        cos_t[(size_t)t * h2 + i] = (qd_real)cos(t * inv_freq);
        sin_t[(size_t)t * h2 + i] = (qd_real)sin(t * inv_freq);
    }
}

/* Whole tables at the inverse frequencies inv_freq[hd/2]. */
static inline void qd_rope_table_freq(qd_real *cos_t, qd_real *sin_t, int T, int hd,
                                      const double *inv_freq) {
    for (int i = 0; i < hd / 2; i++) qd_rope_column(cos_t, sin_t, T, hd, i, inv_freq[i]);
}

/* Whole tables, unscaled: inv_freq = theta^(-2i/hd). */
static inline void qd_rope_table(qd_real *cos_t, qd_real *sin_t, int T, int hd, float theta) {
    for (int i = 0; i < hd / 2; i++)
        qd_rope_column(cos_t, sin_t, T, hd, i, pow((double)theta, -2.0 * i / hd));
}

/* Rotates the nh heads of one token row x (nh*hd) at position pos into out, rotate-half layout
 * (within a head, element i pairs with i + hd/2). out may equal x. */
static inline void qd_rope_rotate(qd_real *out, const qd_real *x, const qd_real *cos_t,
                                  const qd_real *sin_t, size_t pos, int nh, int hd) {
    int h2 = hd / 2;
    const qd_real *c = cos_t + pos * h2, *s = sin_t + pos * h2;
    for (int h = 0; h < nh; h++) {
        const qd_real *xi = x + (size_t)h * hd;
        qd_real *o = out + (size_t)h * hd;
        for (int i = 0; i < h2; i++) {
            qd_real a = xi[i], b = xi[i + h2];
            o[i] = a * c[i] - b * s[i];
            o[i + h2] = b * c[i] + a * s[i];
        }
    }
}

#endif
