/* Error-compensating rounding (gptq.h) and the clipping search (qd_qsim_search_lwc):
 *  - on random correlated inputs GPTQ's layer output error is well below round-to-nearest's on
 *    the same grid, and every result is a grid point (integers in range, ŵ = (q - z)·s);
 *  - the lazy block update (gemm) gives the same integers as the plain column loop (block 1);
 *  - act-order is not worse than the plain column order, stays on the grid, is deterministic;
 *  - the FP-target weight W' fits the FP outputs from the quantized inputs (exactly without
 *    ridge, W' = W when the inputs agree), and GPTQ on W' beats GPTQ on W on that error;
 *  - on a simulation, qd_gptq_qsim lowers the last block's error against FP, is deterministic,
 *    and the encodings reproduce its integers exactly (the runtime gets the same weights);
 *  - the inverse Hessian's factor from LAPACK equals the plain reference's, and the BLAS
 *    Hessian accumulations the plain loops' within the summation-order bound;
 *  - the clipping search never does worse than no clipping on its own objective, and its
 *    row-wise fast path chooses exactly the brute-force reference's logits;
 *  - both GPTQ and the search give the same bits on 1 and 3 threads. */
#include <math.h>

#include "base/pool.h"
#include "quant/sim/encodings.h"
#include "quant/opt/gptq.h"
#include "quant/sim/fakequant.h"
#include "quant/sim/ops.h"
#include "tests/check.h"
#include "tests/synth.h"

/* X (n, cols): a few shared factors plus noise, so that the input channels are correlated (the
 * case where compensation pays); one channel is always zero (a dead input). */
static float *corr_inputs(int n, int cols, uint64_t seed) {
    float *X = malloc(sizeof(float) * (size_t)n * cols);
    int k = 4;
    double *M = malloc(sizeof(double) * (size_t)k * cols);
    for (int i = 0; i < k * cols; i++) M[i] = synth_u(&seed);
    for (int r = 0; r < n; r++) {
        double f[4];
        for (int j = 0; j < k; j++) f[j] = 2 * synth_u(&seed);
        for (int c = 0; c < cols; c++) {
            double v = 0.3 * synth_u(&seed);
            for (int j = 0; j < k; j++) v += f[j] * M[(size_t)j * cols + c];
            X[(size_t)r * cols + c] = c == 3 ? 0 : (float)v;
        }
    }
    free(M);
    return X;
}

static double out_err(const float *X, const float *W, const float *Wh, int n, int rows, int cols) {
    double e = 0;
    for (int r = 0; r < n; r++)
        for (int o = 0; o < rows; o++) {
            double d = 0;
            for (int c = 0; c < cols; c++)
                d += (double)X[(size_t)r * cols + c] *
                     ((double)W[(size_t)o * cols + c] - Wh[(size_t)o * cols + c]);
            e += d * d;
        }
    return e;
}

/* The LAPACK factor of H⁻¹ equals the plain reference's, and Uᵀ U H = I, on Hessians of
 * correlated inputs (damped as GPTQ does) of several sizes; a matrix that is not positive
 * definite is refused by both. Tolerance 1e-8 relative to max|U|: both are backward-stable
 * factorisations in double of matrices with condition numbers below ~1e6. */
static void inv_chol_lapack_matches_reference(void) {
    int sizes[] = {1, 7, 48, 130};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        int n = sizes[t], rows = 4 * n + 8;
        float *X = corr_inputs(rows, n > 3 ? n : 4, 11 + (uint64_t)t);
        double *H = calloc((size_t)n * n, sizeof(double));
        double *U = malloc(sizeof(double) * (size_t)n * n);
        double *R = malloc(sizeof(double) * (size_t)n * n);
        /* the first n columns of a (rows, max(n,4)) input: copy so the row stride is n */
        int cs = n > 3 ? n : 4;
        float *Xn = malloc(sizeof(float) * (size_t)rows * n);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < n; c++) Xn[(size_t)r * n + c] = X[(size_t)r * cs + c];
        qd_gptq_accum(H, Xn, rows, n, NULL);
        double mean = 0;
        for (int i = 0; i < n; i++) mean += H[(size_t)i * n + i] / n;
        for (int i = 0; i < n; i++) {
            double *h = &H[(size_t)i * n + i];
            *h += (*h > 0 ? 0 : 1) + 0.01 * mean; /* dead inputs and damping, as GPTQ does */
        }
        CHECK(qd_gptq_inv_chol(H, U, n) == QD_OK, "n %d: LAPACK refused", n);
        CHECK(qd_gptq_inv_chol_ref(H, R, n) == QD_OK, "n %d: reference refused", n);
        double mx = 0, d = 0, id = 0;
        for (size_t i = 0; i < (size_t)n * n; i++) {
            mx = fmax(mx, fabs(R[i]));
            d = fmax(d, fabs(U[i] - R[i]));
        }
        for (int i = 0; i < n; i++) /* (Uᵀ U H)_ij */
            for (int j = 0; j < n; j++) {
                double v = 0;
                for (int k = 0; k < n; k++) {
                    double hinv = 0;
                    for (int m = 0; m <= (k < i ? k : i); m++)
                        hinv += U[(size_t)m * n + i] * U[(size_t)m * n + k];
                    v += hinv * H[(size_t)k * n + j];
                }
                id = fmax(id, fabs(v - (i == j)));
            }
        CHECK(d <= 1e-8 * mx, "n %d: LAPACK vs reference max diff %.3g (max|U| %.3g)", n, d, mx);
        CHECK(id < 1e-6, "n %d: |Uᵀ U H - I| = %.3g", n, id);
        for (int i = 1; i < n; i++)
            for (int j = 0; j < i; j++) CHECK(U[(size_t)i * n + j] == 0, "n %d: U not upper", n);
        H[0] = -1; /* not positive definite */
        CHECK(qd_gptq_inv_chol(H, U, n) == QD_ERR && qd_gptq_inv_chol_ref(H, R, n) == QD_ERR,
              "n %d: indefinite H accepted", n);
        free(X), free(Xn), free(H), free(U), free(R);
    }
}

/* The BLAS accumulations against their plain references in double: qd_gptq_accum sums each
 * chunk of up to 2048 rows in float, so each entry is within that float sum's bound,
 * |Δ| <= 2·k·2⁻²⁴·Σ_r |x_ri·f_rj| with k = 2048 (the textbook γ_k, doubled for the products'
 * own rounding). Two calls accumulate, one with the caller's scratch; the second call's rows span
 * two chunks and are not a multiple of one. */
static void accum_matches_reference(void) {
    int n = 2600, cols = 37;
    size_t nx = (size_t)n * cols, nn = (size_t)cols * cols;
    float *X = corr_inputs(n, cols, 21), *F = corr_inputs(n, cols, 22);
    float *wk = malloc(sizeof(float) * nn);
    float *Xa = malloc(sizeof(float) * nx), *Fa = malloc(sizeof(float) * nx);
    double *H = calloc(nn, sizeof(double)), *Hr = calloc(nn, sizeof(double));
    double *C = calloc(nn, sizeof(double)), *Cr = calloc(nn, sizeof(double));
    double *Bh = calloc(nn, sizeof(double)), *Bc = calloc(nn, sizeof(double));
    for (size_t i = 0; i < nx; i++) Xa[i] = fabsf(X[i]), Fa[i] = fabsf(F[i]);
    int h1 = 400, h2 = n - h1;
    CHECK(qd_gptq_accum(H, X, h1, cols, NULL) == QD_OK, "accum");
    CHECK(qd_gptq_accum(H, X + (size_t)h1 * cols, h2, cols, wk) == QD_OK, "accum");
    CHECK(qd_gptq_accum_cross(C, X, F, h1, cols, NULL) == QD_OK, "accum_cross");
    CHECK(qd_gptq_accum_cross(C, X + (size_t)h1 * cols, F + (size_t)h1 * cols, h2, cols, wk) ==
              QD_OK,
          "accum_cross");
    qd_gptq_accum_ref(Hr, X, n, cols);
    qd_gptq_accum_cross_ref(Cr, X, F, n, cols);
    qd_gptq_accum_ref(Bh, Xa, n, cols);
    qd_gptq_accum_cross_ref(Bc, Xa, Fa, n, cols);
    size_t bad = 0, asym = 0;
    double u = 2 * 2048 * ldexp(1, -24);
    for (size_t i = 0; i < nn; i++) {
        bad += fabs(H[i] - Hr[i]) > u * Bh[i] || fabs(C[i] - Cr[i]) > u * Bc[i];
        asym += H[i] != H[(i % cols) * cols + i / cols];
    }
    CHECK(bad == 0, "%zu entries outside the float sums' bound", bad);
    CHECK(asym == 0, "H not symmetric in %zu entries", asym);
    free(X), free(F), free(Xa), free(Fa), free(H), free(Hr), free(C), free(Cr), free(Bh), free(Bc);
    free(wk);
}

static void gptq_beats_rtn_on_grid(void) {
    int n = 512, rows = 24, cols = 48;
    float *X = corr_inputs(n, cols, 1);
    float *W = malloc(sizeof(float) * rows * cols), *a = malloc(sizeof(float) * rows * cols);
    float *b = malloc(sizeof(float) * rows * cols), *c1 = malloc(sizeof(float) * rows * cols);
    int32_t *iq = malloc(sizeof(int32_t) * rows * cols), *iq1 = malloc(sizeof(int32_t) * rows * cols);
    double *H = calloc((size_t)cols * cols, sizeof(double));
    uint64_t s = 2;
    for (int i = 0; i < rows * cols; i++) W[i] = (float)(0.1 * synth_u(&s));
    qd_gptq_accum(H, X, n, cols, NULL);
    /* W4 per-channel symmetric and W8 per-tensor asymmetric, grids from min/max */
    qd_wq_spec sps[2] = {{4, 1, 1}, {8, 0, 0}};
    for (int k = 0; k < 2; k++) {
        qd_wq_spec sp = sps[k];
        float sc[24], zp[24];
        qd_wq_forward(a, W, rows, cols, sp, NULL, NULL, sc, zp, NULL, 0);
        qd_gptq_rtn(W, rows, cols, sp, sc, zp, b, NULL);
        double worst = 0; /* the RTN reference is the simulation's own quantizer */
        for (int i = 0; i < rows * cols; i++) worst = fmax(worst, fabs(a[i] - b[i]));
        CHECK(worst == 0, "w%d: qd_gptq_rtn differs from qd_wq_forward by %g", sp.bits, worst);
        qd_gptq_opts o;
        qd_gptq_defaults(&o);
        qd_err err = {{0}};
        CHECK(qd_gptq_round(W, rows, cols, sp, sc, zp, H, &o, a, iq, &err) == QD_OK, "%s",
              err.msg);
        double eg = out_err(X, W, a, n, rows, cols), er = out_err(X, W, b, n, rows, cols);
        /* measured ratios 0.04 (W4) and 0.03 (W8) on these strongly correlated inputs */
        CHECK(eg < 0.5 * er, "w%d: GPTQ output error %g vs RTN %g", sp.bits, eg, er);
        int qmin = sp.sym ? -(1 << (sp.bits - 1)) : 0;
        int qmax = sp.sym ? (1 << (sp.bits - 1)) - 1 : (1 << sp.bits) - 1;
        int off = 0;
        for (int i = 0; i < rows * cols; i++) {
            int g = sp.per_channel ? i / cols : 0;
            float deq = ((float)iq[i] - (sp.sym ? 0 : zp[g])) * sc[g];
            off += iq[i] < qmin || iq[i] > qmax || deq != a[i];
        }
        CHECK(off == 0, "w%d: %d results off the grid", sp.bits, off);
        /* reference: no lazy block update (block of one column) gives the same integers, up to
         * the rare tie flipped by a different summation order */
        o.block = 1;
        CHECK(qd_gptq_round(W, rows, cols, sp, sc, zp, H, &o, c1, iq1, &err) == QD_OK, "%s",
              err.msg);
        int diff = 0;
        for (int i = 0; i < rows * cols; i++) diff += iq[i] != iq1[i];
        CHECK(diff <= rows * cols / 200, "w%d: blocked vs column loop: %d of %d integers differ",
              sp.bits, diff, rows * cols);
    }
    free(X), free(W), free(a), free(b), free(c1), free(iq), free(iq1), free(H);
}

/* Act-order (columns by decreasing H_ii) against the plain column order, on correlated inputs
 * whose channels have very different energies (the case act-order is for): the output error is
 * not worse (measured: 0.19x of the plain order's at W4, 0.18x at W8; the bound only asks for
 * no worse, with 5% slack), every result is on the grid, and two runs agree. */
static void act_order_not_worse(void) {
    int n = 512, rows = 16, cols = 40;
    float *X = corr_inputs(n, cols, 7);
    for (int r = 0; r < n; r++) /* channel energies spread over two decades */
        for (int c = 0; c < cols; c++) X[(size_t)r * cols + c] *= (float)pow(10, (c % 5) / 2.0);
    size_t nw = (size_t)rows * cols;
    float *W = malloc(sizeof(float) * nw), *a = malloc(sizeof(float) * nw);
    float *b = malloc(sizeof(float) * nw), *a2 = malloc(sizeof(float) * nw);
    int32_t *iq = malloc(sizeof(int32_t) * nw), *iq2 = malloc(sizeof(int32_t) * nw);
    double *H = calloc((size_t)cols * cols, sizeof(double));
    uint64_t s = 9;
    for (size_t i = 0; i < nw; i++) W[i] = (float)(0.1 * synth_u(&s));
    qd_gptq_accum(H, X, n, cols, NULL);
    qd_wq_spec sps[2] = {{4, 1, 1}, {8, 0, 0}};
    for (int k = 0; k < 2; k++) {
        qd_wq_spec sp = sps[k];
        float sc[16], zp[16];
        qd_wq_forward(a, W, rows, cols, sp, NULL, NULL, sc, zp, NULL, 0);
        qd_gptq_opts o;
        qd_gptq_defaults(&o);
        qd_err err = {{0}};
        CHECK(o.act_order == 1, "act-order is not the default");
        CHECK(qd_gptq_round(W, rows, cols, sp, sc, zp, H, &o, a, iq, &err) == QD_OK, "%s",
              err.msg);
        CHECK(qd_gptq_round(W, rows, cols, sp, sc, zp, H, &o, a2, iq2, &err) == QD_OK, "%s",
              err.msg);
        CHECK(!memcmp(iq, iq2, sizeof(int32_t) * nw) && !memcmp(a, a2, sizeof(float) * nw),
              "w%d: act-order not deterministic", sp.bits);
        o.act_order = 0;
        CHECK(qd_gptq_round(W, rows, cols, sp, sc, zp, H, &o, b, NULL, &err) == QD_OK, "%s",
              err.msg);
        double ea = out_err(X, W, a, n, rows, cols), ep = out_err(X, W, b, n, rows, cols);
        CHECK(ea <= 1.05 * ep, "w%d: act-order output error %g vs plain order %g", sp.bits, ea,
              ep);
        int qmin = sp.sym ? -(1 << (sp.bits - 1)) : 0;
        int qmax = sp.sym ? (1 << (sp.bits - 1)) - 1 : (1 << sp.bits) - 1, off = 0;
        for (size_t i = 0; i < nw; i++) {
            int g = sp.per_channel ? (int)(i / cols) : 0;
            float deq = ((float)iq[i] - (sp.sym ? 0 : zp[g])) * sc[g];
            off += iq[i] < qmin || iq[i] > qmax || deq != a[i];
        }
        CHECK(off == 0, "w%d: %d act-order results off the grid", sp.bits, off);
    }
    free(X), free(W), free(a), free(b), free(a2), free(iq), free(iq2), free(H);
}

/* qd_gptq_target: with Xq = Xf (C = H) W' = W; with a perturbed Xq the exact fit (tiny ridge)
 * lowers ||Xq W'ᵀ - Xf Wᵀ|| well below ||Xq Wᵀ - Xf Wᵀ||, a larger ridge lies in between, and
 * GPTQ rounding of W' beats GPTQ rounding of W on the FP-target error. */
static double cross_err(const float *Xq, const float *Xf, const float *W, const float *Wh,
                        int n, int rows, int cols) {
    double e = 0;
    for (int r = 0; r < n; r++)
        for (int o = 0; o < rows; o++) {
            double d = 0;
            for (int c = 0; c < cols; c++)
                d += (double)Xq[(size_t)r * cols + c] * Wh[(size_t)o * cols + c] -
                     (double)Xf[(size_t)r * cols + c] * W[(size_t)o * cols + c];
            e += d * d;
        }
    return e;
}

static void fp_target_fits(void) {
    int n = 512, rows = 12, cols = 32;
    size_t nx = (size_t)n * cols, nw = (size_t)rows * cols;
    float *Xf = corr_inputs(n, cols, 21), *Xq = malloc(sizeof(float) * nx);
    float *W = malloc(sizeof(float) * nw), *W1 = malloc(sizeof(float) * nw);
    float *W2 = malloc(sizeof(float) * nw), *a = malloc(sizeof(float) * nw);
    float *b = malloc(sizeof(float) * nw);
    double *H = calloc((size_t)cols * cols, sizeof(double));
    double *C = calloc((size_t)cols * cols, sizeof(double));
    double *ws = malloc(sizeof(double) * (size_t)cols * cols); /* caller's scratch, stale */
    for (size_t i = 0; i < (size_t)cols * cols; i++) ws[i] = 1e30;
    uint64_t s = 5;
    for (size_t i = 0; i < nw; i++) W[i] = (float)(0.1 * synth_u(&s));
    /* quantized inputs: a channel-wise gain error plus rounding-like noise, dead channel kept */
    for (size_t i = 0; i < nx; i++) {
        int c = (int)(i % cols);
        Xq[i] = Xf[i] == 0 ? 0 : Xf[i] * (float)(1 + 0.05 * ((c % 3) - 1)) +
                                     (float)(0.02 * synth_u(&s));
    }
    qd_err err = {{0}};
    qd_gptq_accum(H, Xf, n, cols, NULL);
    qd_gptq_accum_cross(C, Xf, Xf, n, cols, NULL);
    double dc = 0;
    for (size_t i = 0; i < (size_t)cols * cols; i++) dc = fmax(dc, fabs(C[i] - H[i]));
    double hmax = 0; /* the largest diagonal bounds every entry of a Gram matrix */
    for (int i = 0; i < cols; i++) hmax = fmax(hmax, H[(size_t)i * cols + i]);
    CHECK(dc <= 2 * n * ldexp(1, -24) * hmax, "XᵀX by accum_cross differs from accum by %g", dc);
    CHECK(qd_gptq_target(W, rows, cols, H, C, 0.2, W1, NULL, &err) == QD_OK, "%s", err.msg);
    double dw = 0;
    for (size_t i = 0; i < nw; i++) dw = fmax(dw, fabs((double)W1[i] - W[i]));
    CHECK(dw < 1e-6, "C = H: W' differs from W by %g", dw);
    memset(H, 0, sizeof(double) * (size_t)cols * cols);
    memset(C, 0, sizeof(double) * (size_t)cols * cols);
    qd_gptq_accum(H, Xq, n, cols, NULL);
    qd_gptq_accum_cross(C, Xq, Xf, n, cols, NULL);
    CHECK(qd_gptq_target(W, rows, cols, H, C, 1e-6, W1, NULL, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_gptq_target(W, rows, cols, H, C, 0.2, W2, ws, &err) == QD_OK, "%s", err.msg);
    /* the caller's scratch, whatever it held, gives what the target's own buffer gives */
    CHECK(qd_gptq_target(W, rows, cols, H, C, 0.2, a, NULL, &err) == QD_OK, "%s", err.msg);
    CHECK(!memcmp(a, W2, sizeof(float) * nw), "W' with the caller's scratch differs");
    double e0 = cross_err(Xq, Xf, W, W, n, rows, cols);
    double e1 = cross_err(Xq, Xf, W, W1, n, rows, cols);
    double e2 = cross_err(Xq, Xf, W, W2, n, rows, cols);
    CHECK(e1 < 0.1 * e0, "exact fit: error %g vs %g unfitted", e1, e0);
    CHECK(e1 <= e2 && e2 < e0, "ridge 0.2: error %g not between %g and %g", e2, e1, e0);
    /* rounded: W4 per channel on W's grid */
    qd_wq_spec sp = {4, 1, 1};
    float sc[12], zp[12];
    qd_wq_forward(a, W, rows, cols, sp, NULL, NULL, sc, zp, NULL, 0);
    qd_gptq_opts o;
    qd_gptq_defaults(&o);
    CHECK(qd_gptq_round(W, rows, cols, sp, sc, zp, H, &o, a, NULL, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_gptq_round(W2, rows, cols, sp, sc, zp, H, &o, b, NULL, &err) == QD_OK, "%s",
          err.msg);
    double ra = cross_err(Xq, Xf, W, a, n, rows, cols), rb = cross_err(Xq, Xf, W, b, n, rows, cols);
    CHECK(rb < ra, "rounded: FP-target error %g with W' vs %g with W", rb, ra);
    free(Xf), free(Xq), free(W), free(W1), free(W2), free(a), free(b), free(H), free(C), free(ws);
}

/* FP outputs of the last block vs the quantized simulation's, summed squared error. */
static double block_err(qd_qsim *q, const int *tok, int nw, int T) {
    int D = q->cfg.dim;
    size_t per = (size_t)T * D;
    float *x0 = malloc(sizeof(float) * per), *fo = malloc(sizeof(float) * per);
    float *qo = malloc(sizeof(float) * per);
    double e = 0;
    for (int w = 0; w < nw; w++) {
        int sl = q->let_on, sa = q->aq_on, sw = q->wq_on;
        q->let_on = q->aq_on = q->wq_on = 0;
        qd_qsim_embed(q, tok + (size_t)w * T, 1, T, x0);
        qd_qsim_forward_blocks(q, x0, fo, 1, T);
        q->let_on = sl, q->aq_on = sa, q->wq_on = sw;
        qd_qsim_embed(q, tok + (size_t)w * T, 1, T, x0);
        qd_qsim_forward_blocks(q, x0, qo, 1, T);
        for (size_t i = 0; i < per; i++) e += ((double)fo[i] - qo[i]) * ((double)fo[i] - qo[i]);
    }
    free(x0), free(fo), free(qo);
    return e;
}

static qd_qsim *ready_sim(const qd_model *m, int wbits, const int *tok, int nw, int T) {
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = wbits, o.Bmax = 2, o.Tmax = T, o.train = 0;
    qd_err err = {{0}};
    qd_qsim *q = qd_qsim_new(m, &o, &err);
    CHECK(q != NULL, "%s", err.msg);
    if (!q) return NULL;
    qd_qstats *st = qd_qstats_new(&m->cfg);
    q->let_on = 0;
    CHECK(qd_qsim_collect(q, tok, nw, T, st, &err) == QD_OK, "%s", err.msg);
    qd_qsim_init_ranges(q, st);
    q->lwc_on = 0;
    qd_qstats_free(st);
    return q;
}

/* GPTQ's progress callback: once per layer, in order, with the layer count */
typedef struct ticks {
    int n, last, bad;
} ticks;
static void tick_layer(void *ctx, int done, int n_layers) {
    ticks *t = ctx;
    t->bad += done != t->last + 1 || n_layers != 2;
    t->last = done, t->n++;
}

static void gptq_on_simulation(void) {
    qd_config c = synth_config(32, 64, 2, 4, 2, 60, 32);
    qd_err err = {{0}};
    qd_model *m = synth_checked(&c, 6);
    if (!m) return;
    int T = 32, nw = 6;
    int *tok = malloc(sizeof(int) * nw * T);
    uint64_t s = 4;
    for (int i = 0; i < nw * T; i++) tok[i] = (int)(synth_next(&s) % (uint64_t)c.vocab_size);
    for (int wbits = 4; wbits <= 8; wbits += 4) {
        qd_qsim *q = ready_sim(m, wbits, tok, nw, T), *r = ready_sim(m, wbits, tok, nw, T);
        if (!q || !r) break;
        double e_rtn = block_err(q, tok, nw, T);
        qd_gptq_opts o;
        qd_gptq_defaults(&o);
        CHECK(o.layer_done == NULL, "the defaults set a progress callback");
        CHECK(qd_gptq_qsim(q, tok, nw, T, &o, &err) == QD_OK, "%s", err.msg);
        ticks tk = {0, 0, 0};
        o.layer_done = tick_layer, o.layer_ctx = &tk;
        CHECK(qd_gptq_qsim(r, tok, nw, T, &o, &err) == QD_OK, "%s", err.msg);
        CHECK(tk.n == c.n_layers && tk.bad == 0, "W%d: %d progress calls (%d out of order)", wbits,
              tk.n, tk.bad);
        double e_gptq = block_err(q, tok, nw, T);
        /* on the calibration windows the compensated rounding must do better */
        CHECK(e_gptq < e_rtn, "W%d: block error GPTQ %g vs RTN %g", wbits, e_gptq, e_rtn);
        qd_encodings *e = qd_encodings_build(q, m, &err);
        CHECK(e != NULL, "%s", err.msg);
        for (int l = 0; e && l < c.n_layers; l++)
            for (int w = 0; w < QD_W_PER_LAYER; w++) {
                const qd_qlayer *L = &q->L[l];
                const qd_wenc *x = qd_enc_weight(e, l, w);
                size_t n = (size_t)L->wrows[w] * L->wcols[w];
                CHECK(L->wfix[w] && r->L[l].wfix[w], "layer %d weight %d not fixed", l, w);
                if (!x || !L->wfix[w] || !r->L[l].wfix[w]) continue;
                CHECK(!memcmp(L->wfix[w], r->L[l].wfix[w], n),
                      "layer %d weight %d: GPTQ not deterministic", l, w);
                int32_t *iq = malloc(sizeof(int32_t) * n);
                float *fix = malloc(sizeof(float) * n);
                qd_wenc_quantize(x, iq);
                CHECK(qd_qsim_get_wfix(q, l, w, fix) == 1, "layer %d weight %d", l, w);
                size_t gsz = x->per_channel ? (size_t)x->cols : n, bad = 0;
                for (size_t i = 0; i < n; i++) {
                    int g = (int)(i / gsz);
                    float deq = ((float)iq[i] - (float)x->zero[g]) * x->scale[g];
                    bad += deq != fix[i];
                }
                CHECK(bad == 0, "%s: %zu encoded integers differ from the simulation's", x->name,
                      bad);
                free(iq), free(fix);
            }
        qd_encodings_free(e);
        qd_qsim_free(q), qd_qsim_free(r);
    }
    free(tok);
    qd_model_free(m);
}

/* The searched clipping is at least as good as none on the weighted weight error. */
static void lwc_search_not_worse(void) {
    qd_config c = synth_config(32, 64, 2, 4, 4, 60, 32);
    qd_err err = {{0}};
    qd_model *m = synth_checked(&c, 8);
    if (!m) return;
    int T = 32, nw = 4;
    int *tok = malloc(sizeof(int) * nw * T);
    for (int i = 0; i < nw * T; i++) tok[i] = (i * 17 + 3) % c.vocab_size;
    qd_qsim *q = ready_sim(m, 4, tok, nw, T);
    qd_qstats *st = qd_qstats_new(&m->cfg);
    if (!q || !st) goto out;
    CHECK(qd_qsim_collect(q, tok, nw, T, st, &err) == QD_OK, "%s", err.msg);
    double r = qd_qsim_search_lwc(q, st, 21, 0.6);
    CHECK(r >= 0.6 && r <= 1, "mean ratio %g outside the grid", r);
    for (int l = 0; l < c.n_layers; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            const qd_qlayer *L = &q->L[l];
            int rows = L->wrows[w], cols = L->wcols[w];
            size_t n = (size_t)rows * cols;
            float *t = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * n);
            float *b = malloc(sizeof(float) * n), *six = malloc(sizeof(float) * rows);
            for (int i = 0; i < rows; i++) six[i] = 6;
            qd_qsim_weight_let(q, l, w, t);
            qd_wq_forward(a, t, rows, cols, L->wspec[w], L->gam[w], L->bet[w], NULL, NULL, NULL, 0);
            qd_wq_forward(b, t, rows, cols, L->wspec[w], six, six, NULL, NULL, NULL, 0);
            const double *sq = w <= QD_W_V ? st->sq_attn + (size_t)l * c.dim
                             : w == QD_W_O ? st->sq_o + (size_t)l * c.dim
                             : w == QD_W_DOWN ? st->sq_down + (size_t)l * c.hidden_dim
                                              : st->sq_ffn + (size_t)l * c.dim;
            double ea = 0, eb = 0;
            for (size_t i = 0; i < n; i++) {
                double wt = sq[i % (size_t)cols];
                ea += wt * (t[i] - a[i]) * (t[i] - a[i]);
                eb += wt * (t[i] - b[i]) * (t[i] - b[i]);
            }
            CHECK(ea <= eb * (1 + 1e-6), "layer %d weight %d: searched %g > unclipped %g", l, w,
                  ea, eb);
            free(t), free(a), free(b), free(six);
        }
out:
    qd_qstats_free(st);
    qd_qsim_free(q);
    free(tok);
    qd_model_free(m);
}

/* The row-wise search chooses exactly the brute force's logits (the reference), for every
 * granularity and symmetry (asymmetric per tensor, per channel and the default mix; symmetric
 * per channel and per tensor), with and without input statistics, on weights where clipping
 * is chosen for some groups. */
static void lwc_search_matches_brute_force(void) {
    qd_config c = synth_config(32, 64, 2, 4, 2, 60, 32);
    qd_err err = {{0}};
    qd_model *m = synth_checked(&c, 9);
    if (!m) return;
    /* heavy tails (every 13th weight ×8) so that clipping pays at W8 too */
    for (int l = 0; l < c.n_layers; l++) {
        qd_layer *L = &m->layers[l];
        float *ws[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        size_t n[7] = {32 * 32, 16 * 32, 16 * 32, 32 * 32, 64 * 32, 64 * 32, 32 * 64};
        for (int w = 0; w < 7; w++)
            for (size_t i = 0; i < n[w]; i += 13) ws[w][i] *= 8;
    }
    int T = 32, nw = 3;
    int *tok = malloc(sizeof(int) * nw * T);
    for (int i = 0; i < nw * T; i++) tok[i] = (i * 29 + 5) % c.vocab_size;
    static const int cases[4][2] = {{8, QD_WGRAN_DEFAULT}, {8, QD_WGRAN_CHANNEL},
                                    {4, QD_WGRAN_DEFAULT}, {4, QD_WGRAN_TENSOR}};
    for (int k = 0; k < 4; k++) {
        qd_qsim_opts o;
        qd_qsim_defaults(&o);
        o.wbits = cases[k][0], o.wgran = cases[k][1], o.Bmax = 1, o.Tmax = T, o.train = 0;
        qd_qsim *q = qd_qsim_new(m, &o, &err);
        qd_qstats *st = qd_qstats_new(&m->cfg);
        CHECK(q && st, "%s", err.msg);
        if (!q || !st) {
            qd_qsim_free(q), qd_qstats_free(st);
            continue;
        }
        /* the W8 grids (asymmetric) at 3 bits: clipping does not pay at 8 bits on 32 columns */
        for (int l = 0; l < c.n_layers && cases[k][0] == 8; l++)
            for (int w = 0; w < QD_W_PER_LAYER; w++) q->L[l].wspec[w].bits = 3;
        CHECK(qd_qsim_collect(q, tok, nw, T, st, &err) == QD_OK, "%s", err.msg);
        for (int use_st = 0; use_st < 2; use_st++) {
            const qd_qstats *s = use_st ? st : NULL;
            qd_qsim_set_lwc(q, 4);
            double rr = qd_qsim_search_lwc_ref(q, s, 17, 0.5);
            size_t np = q->n_params;
            float *ref = malloc(sizeof(float) * np);
            memcpy(ref, q->p, sizeof(float) * np);
            size_t diff = 0, clipped = 0;
            for (int scalar = 0; scalar < 2; scalar++) { /* the vector path, then the scalar one */
                qd_qsim_lwc_scalar(scalar);
                qd_qsim_set_lwc(q, 4);
                double rf = qd_qsim_search_lwc(q, s, 17, 0.5);
                CHECK(rf == rr, "W%d gran %d stats %d scalar %d: mean ratio %.17g vs reference "
                      "%.17g", cases[k][0], cases[k][1], use_st, scalar, rf, rr);
                for (size_t i = 0; i < np; i++) diff += ref[i] != q->p[i];
            }
            qd_qsim_lwc_scalar(0);
            for (int l = 0; l < c.n_layers; l++)
                for (int w = 0; w < QD_W_PER_LAYER; w++) {
                    int g = q->L[l].wspec[w].per_channel ? q->L[l].wrows[w] : 1;
                    for (int i = 0; i < g; i++) clipped += q->L[l].gam[w][i] != 6;
                }
            CHECK(diff == 0, "W%d gran %d stats %d: %zu parameters differ from the brute force",
                  cases[k][0], cases[k][1], use_st, diff);
            CHECK(clipped > 0, "W%d gran %d: no group clipped (the test would not bite)",
                  cases[k][0], cases[k][1]);
            free(ref);
        }
        qd_qstats_free(st);
        qd_qsim_free(q);
    }
    free(tok);
    qd_model_free(m);
}

/* One weight for the bit-identity checks below: inputs X (n, cols), its Hessian, a weight with
 * its 4-bit per-row grid, and two results to compare (a: grid values, iq: integers). */
typedef struct {
    int rows, cols;
    float *W, *sc, *zp, *a[2];
    int32_t *iq[2];
    double *H;
} round_case;

static round_case case_new(int n, int rows, int cols, uint64_t sx, uint64_t sw) {
    round_case c = {rows, cols, malloc(sizeof(float) * rows * cols), malloc(sizeof(float) * rows),
                    malloc(sizeof(float) * rows),
                    {malloc(sizeof(float) * rows * cols), malloc(sizeof(float) * rows * cols)},
                    {malloc(sizeof(int32_t) * rows * cols), malloc(sizeof(int32_t) * rows * cols)},
                    calloc((size_t)cols * cols, sizeof(double))};
    float *X = corr_inputs(n, cols, sx);
    for (int i = 0; i < rows * cols; i++) c.W[i] = (float)(0.1 * synth_u(&sw));
    qd_gptq_accum(c.H, X, n, cols, NULL);
    qd_wq_forward(c.a[0], c.W, rows, cols, (qd_wq_spec){4, 1, 1}, NULL, NULL, c.sc, c.zp, NULL, 0);
    free(X);
    return c;
}

/* result k: GPTQ at block size block */
static void case_round(round_case *c, int k, int block) {
    qd_gptq_opts o;
    qd_gptq_defaults(&o);
    o.block = block;
    qd_err err = {{0}};
    CHECK(qd_gptq_round(c->W, c->rows, c->cols, (qd_wq_spec){4, 1, 1}, c->sc, c->zp, c->H, &o,
                        c->a[k], c->iq[k], &err) == QD_OK, "%s", err.msg);
}

static int case_same(const round_case *c) {
    size_t n = (size_t)c->rows * c->cols;
    return !memcmp(c->a[0], c->a[1], sizeof(float) * n) &&
           !memcmp(c->iq[0], c->iq[1], sizeof(int32_t) * n);
}

static void case_free(round_case *c) {
    free(c->W), free(c->sc), free(c->zp), free(c->H);
    for (int k = 0; k < 2; k++) free(c->a[k]), free(c->iq[k]);
}

/* GPTQ's rows and the clipping search's rows run on the default pool: the same bits on 1 and 3
 * threads (several chunks each). */
static void same_bits_at_any_thread_count(void) {
    round_case rc = case_new(256, 100, 40, 31, 7);
    qd_err err = {{0}};
    qd_config c = synth_config(32, 64, 2, 4, 2, 60, 32);
    qd_model *m = synth_checked(&c, 10);
    int T = 32, nw = 2, *tok = malloc(sizeof(int) * nw * T);
    for (int i = 0; i < nw * T; i++) tok[i] = (i * 13 + 1) % c.vocab_size;
    float *lp[2] = {NULL, NULL};
    size_t np = 0;
    static const int thr[2] = {1, 3};
    for (int k = 0; k < 2; k++) {
        CHECK(qd_pool_set_default(thr[k], &err) == QD_OK, "%s", err.msg);
        case_round(&rc, k, 16);
        qd_qsim *q = m ? ready_sim(m, 4, tok, nw, T) : NULL;
        qd_qstats *st = qd_qstats_new(&c);
        if (q && st && qd_qsim_collect(q, tok, nw, T, st, &err) == QD_OK) {
            qd_qsim_search_lwc(q, st, 21, 0.5);
            np = q->n_params;
            lp[k] = malloc(sizeof(float) * np);
            memcpy(lp[k], q->p, sizeof(float) * np);
        }
        qd_qstats_free(st);
        qd_qsim_free(q);
    }
    CHECK(case_same(&rc), "GPTQ differs on 3 threads");
    CHECK(lp[0] && lp[1] && !memcmp(lp[0], lp[1], sizeof(float) * np),
          "clipping search differs on 3 threads");
    CHECK(qd_pool_set_default(0, &err) == QD_OK, "%s", err.msg);
    case_free(&rc);
    free(lp[0]), free(lp[1]), free(tok);
    qd_model_free(m);
}

/* The column loop's vector versions give the scalar loop's integers and grid values (blocks
 * of 64 with their tails, 150 columns: a wrong index or a dropped tail changes them; a fused
 * multiply-add's last bit in the running weights, seen here, does not). */
static void same_bits_with_and_without_simd(void) {
    round_case rc = case_new(400, 37, 150, 33, 17);
    for (int k = 0; k < 2; k++) {
        qd_ops_set_simd(k);
        case_round(&rc, k, 64);
    }
    qd_ops_set_simd(1);
    CHECK(case_same(&rc), "GPTQ differs with SIMD");
    case_free(&rc);
}

/* The fixed integers saved after one GPTQ run come back bit for bit after a run with another
 * ridge λ (W4, FP target) changed them; a simulation never fixed cannot be restored into. */
static void wfix_save_restore(void) {
    qd_config c = synth_config(32, 64, 2, 4, 2, 60, 32);
    qd_err err = {{0}};
    qd_model *m = synth_checked(&c, 6);
    if (!m) return;
    int T = 32, nw = 6, *tok = malloc(sizeof(int) * nw * T);
    uint64_t s = 8;
    for (int i = 0; i < nw * T; i++) tok[i] = (int)(synth_next(&s) % (uint64_t)c.vocab_size);
    qd_qsim *q = ready_sim(m, 4, tok, nw, T), *fresh = ready_sim(m, 4, tok, nw, T);
    if (!q || !fresh) return;
    size_t nb = qd_qsim_wfix_bytes(q);
    unsigned char *kept = malloc(nb), *again = malloc(nb), *other = malloc(nb);
    CHECK(qd_qsim_wfix_save(q, kept) == QD_ERR, "saved a simulation with no fixed weight");
    CHECK(qd_qsim_wfix_restore(fresh, kept) == QD_ERR, "restored into a simulation never fixed");
    qd_gptq_opts o;
    qd_gptq_defaults(&o);
    o.fp_target = 1, o.target_damp = 0.05;
    CHECK(qd_gptq_qsim(q, tok, nw, T, &o, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qsim_wfix_save(q, kept) == QD_OK, "save");
    o.target_damp = 2;
    CHECK(qd_gptq_qsim(q, tok, nw, T, &o, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qsim_wfix_save(q, other) == QD_OK, "save");
    CHECK(memcmp(kept, other, nb) != 0, "another λ changed no integer: the check cannot fail");
    CHECK(qd_qsim_wfix_restore(q, kept) == QD_OK, "restore");
    CHECK(qd_qsim_wfix_save(q, again) == QD_OK && !memcmp(kept, again, nb),
          "the restored integers differ from those saved");
    free(kept), free(again), free(other), free(tok);
    qd_qsim_free(q), qd_qsim_free(fresh);
    qd_model_free(m);
}

int main(void) {
    RUN(inv_chol_lapack_matches_reference);
    RUN(accum_matches_reference);
    RUN(gptq_beats_rtn_on_grid);
    RUN(act_order_not_worse);
    RUN(fp_target_fits);
    RUN(gptq_on_simulation);
    RUN(wfix_save_restore);
    RUN(lwc_search_not_worse);
    RUN(lwc_search_matches_brute_force);
    RUN(same_bits_at_any_thread_count);
    RUN(same_bits_with_and_without_simd);
    return CHECK_DONE();
}
