/* The layer kernels both forwards share, so that the norms, activations, softmax and RoPE have one
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

/* LayerNorm of N rows of C (StableLM): out = (x - mean) * rstd * w + b, rstd = 1/sqrt(var +
 * eps) with the biased variance, both moments accumulated in double. mean and rstd (N) receive
 * each row's values (NULL: not kept). out may equal x. */
static inline void qd_layernorm_rows(qd_real *out, qd_real *mean, qd_real *rstd,
                                     const qd_real *x, const qd_real *w, const qd_real *b,
                                     size_t N, int C, float eps) {
    for (size_t n = 0; n < N; n++) {
        const qd_real *xr = x + n * C;
        qd_real *o = out + n * C;
        double s = 0, ss = 0;
        for (int i = 0; i < C; i++) s += xr[i];
        double mu = s / C;
        for (int i = 0; i < C; i++) ss += ((double)xr[i] - mu) * ((double)xr[i] - mu);
        qd_real r = (qd_real)(1.0 / sqrt(ss / C + eps)), m = (qd_real)mu;
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
        for (int i = 0; i < C; i++) o[i] = (xr[i] - m) * r * w[i] + b[i];
    }
}

/* The model's norm (cfg.norm: 0 RMSNorm, 1 LayerNorm with bias b) of N rows of C; mean (kept
 * by LayerNorm only) and rstd may be NULL. */
static inline void qd_norm_rows(int kind, qd_real *out, qd_real *mean, qd_real *rstd,
                                const qd_real *x, const qd_real *w, const qd_real *b, size_t N,
                                int C, float eps) {
    if (kind == 1) qd_layernorm_rows(out, mean, rstd, x, w, b, N, C, eps);
    else qd_rmsnorm_rows(out, rstd, x, w, N, C, eps);
}

/* silu(g) = g * sigmoid(g) in qd_real (the integer runtime builds its table from a double one) */
static inline qd_real qd_silu_real(qd_real g) { return g / (1 + QD_REAL_EXP(-g)); }

/* GELU, tanh approximation (PyTorch's gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh):
 * 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), tanh in double. */
static inline qd_real qd_gelu_tanh_real(qd_real g) {
    double x = g;
    return (qd_real)(0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
}

/* The gated MLP's activation (cfg.act: 0 SiLU, 1 tanh GELU). */
static inline qd_real qd_act_real(int act, qd_real g) {
    return act == 1 ? qd_gelu_tanh_real(g) : qd_silu_real(g);
}

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
 * angle t * inv_freq (in double); hd is the rotated width (head_dim, or the partial rotary
 * dims). The frequencies come from qd_rope_inv_freq (theta and RoPE scaling), or
 * theta^(-2i/hd) unscaled. */
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
 * over the first rot dims of each head (element i pairs with i + rot/2; tables (T, rot/2));
 * dims rot..hd-1 pass unrotated (StableLM's partial rotary). out may equal x. */
static inline void qd_rope_rotate(qd_real *out, const qd_real *x, const qd_real *cos_t,
                                  const qd_real *sin_t, size_t pos, int nh, int hd, int rot) {
    int h2 = rot / 2;
    const qd_real *c = cos_t + pos * h2, *s = sin_t + pos * h2;
    for (int h = 0; h < nh; h++) {
        const qd_real *xi = x + (size_t)h * hd;
        qd_real *o = out + (size_t)h * hd;
        for (int i = 0; i < h2; i++) {
            qd_real a = xi[i], b = xi[i + h2];
            o[i] = a * c[i] - b * s[i];
            o[i + h2] = b * c[i] + a * s[i];
        }
        if (o != xi)
            for (int i = rot; i < hd; i++) o[i] = xi[i];
    }
}

#endif
