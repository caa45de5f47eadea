/* Gradient checks of every hand-written backward, in double precision: this file compiles
 * quant/sim/ops.c and quant/sim/fakequant.c a second time with QD_REAL_DOUBLE (qd_real = double, every
 * public function file-local), and compares the analytic gradients with central differences.
 *
 * Quantizers round; the straight-through estimator's gradient is the exact gradient of the
 * function whose rounding residuals are frozen at the base point (ops.h). So the analytic pass
 * records the residuals and clamp decisions (QD_ROUND_RECORD) and every finite-difference
 * evaluation replays them (QD_ROUND_REPLAY): the checked function is then smooth except where a
 * max/min switches element, which a step of 1e-6 (relative) essentially never crosses.
 *
 * Tolerance, per element: |analytic - numeric| <= RTOL*|numeric| + ATOL*max|numeric of its
 * tensor|, RTOL = 1e-5, ATOL = 1e-6. Central differences in double with h = 1e-6*max(|x|,1e-3)
 * have truncation error ~h^2 and cancellation error ~1e-16/h ~ 1e-10 relative, so these bounds
 * leave four orders of magnitude of headroom while any missing or wrong term (the fault cases
 * below: gradients of O(1e-3..1) relative size) fails them.
 *
 * Threads: PAR_ELEMS (base/par.h) is made tiny here so that these small tensors span many
 * chunks, and the default pool has three threads: every check runs the chunked loops and their
 * per-chunk sums on the pool; model_threads_same_bits compares a whole model's gradients (and
 * the recorded rounding residuals) at 1, 2 and 3 threads bit for bit. */
#define PAR_ELEMS 8
#define QD_REAL_DOUBLE
#define QD_TEST_HOOKS /* the fault cases below: compiled into this test only (ops.h) */
#include "quant/sim/ops.c"
#include "quant/sim/fakequant.c"

#include <stdio.h>

#include "tests/check.h"
#include "tests/synth.h"

#define RTOL 1e-5
#define ATOL 1e-6

typedef struct {
    double *p, *g;   /* parameter and its analytic gradient */
    size_t n;
    const char *name;
} gparam;

typedef double (*loss_fn)(void *ctx);   /* forward with the current parameters -> loss */
typedef void (*grad_fn)(void *ctx);     /* zero grads, forward, backward */

static qd_rctx g_rc;                    /* the rounding context of the current check */
static uint64_t g_seed = 12345;

static double urand(void) { return synth_u(&g_seed); }
static void fill(double *p, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * 0.5 * (urand() + 1);
}

/* Returns the worst error ratio (<= 1 passes) and prints the worst element when verbose. */
static double gradcheck(void *ctx, loss_fn L, grad_fn G, gparam *ps, int np, int verbose) {
    g_rc.mode = QD_ROUND_RECORD;
    g_rc.cursor = 0;
    for (int k = 0; k < np; k++) memset(ps[k].g, 0, ps[k].n * sizeof(double));
    G(ctx);
    g_rc.mode = QD_ROUND_REPLAY;
    double worst = 0;
    for (int k = 0; k < np; k++) {
        double *num = malloc(ps[k].n * sizeof(double));
        double nmax = 0;
        for (size_t i = 0; i < ps[k].n; i++) {
            double x = ps[k].p[i], h = 1e-6 * fmax(fabs(x), 1e-3);
            ps[k].p[i] = x + h;
            g_rc.cursor = 0;
            double lp = L(ctx);
            ps[k].p[i] = x - h;
            g_rc.cursor = 0;
            double lm = L(ctx);
            ps[k].p[i] = x;
            num[i] = (lp - lm) / (2 * h);
            nmax = fmax(nmax, fabs(num[i]));
        }
        double tw = 0;
        size_t wi = 0;
        for (size_t i = 0; i < ps[k].n; i++) {
            double e = fabs(ps[k].g[i] - num[i]) / (RTOL * fabs(num[i]) + ATOL * nmax + 1e-300);
            if (e > tw) tw = e, wi = i;
        }
        if (verbose && tw > 1)
            fprintf(stderr, "    %-14s worst [%zu] analytic %.10g numeric %.10g (ratio %.3g)\n",
                    ps[k].name, wi, ps[k].g[wi], num[wi], tw);
        if (tw > worst) worst = tw;
        free(num);
    }
    g_rc.mode = QD_ROUND_OFF;
    return worst;
}

/* ------------------------------------------------------------------ per-op checks */

typedef struct {
    int N, C, OC;
    double *x, *w, *b, *r, *y, *rstd, *dx, *dw, *db;
} opctx;

static double dotr(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static double rms_L(void *c_) {
    opctx *c = c_;
    qd_rmsnorm_forward(c->y, c->rstd, c->x, c->w, c->N, c->C, 1e-5f);
    return dotr(c->y, c->r, (size_t)c->N * c->C);
}
static void rms_G(void *c_) {
    opctx *c = c_;
    rms_L(c);
    qd_rmsnorm_backward(c->dx, c->dw, c->r, c->x, c->w, c->rstd, c->N, c->C);
}

static void op_rmsnorm(void) {
    opctx c = {.N = 3, .C = 7};
    size_t n = 21;
    double x[21], w[7], r[21], y[21], rstd[3], dx[21], dw[7];
    c.x = x, c.w = w, c.r = r, c.y = y, c.rstd = rstd, c.dx = dx, c.dw = dw;
    fill(x, n, -2, 2), fill(w, 7, 0.5, 1.5), fill(r, n, -1, 1);
    gparam ps[] = {{x, dx, n, "x"}, {w, dw, 7, "w"}};
    double e = gradcheck(&c, rms_L, rms_G, ps, 2, 1);
    CHECK(e <= 1, "rmsnorm error ratio %g", e);
}

typedef struct {
    int N, C;
    double *x, *w, *b, *r, *y, *mean, *rstd, *dx, *dw, *db;
} lnctx;

static double ln_L(void *c_) {
    lnctx *c = c_;
    qd_layernorm_forward(c->y, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->C, 1e-5f);
    return dotr(c->y, c->r, (size_t)c->N * c->C);
}
static void ln_G(void *c_) {
    lnctx *c = c_;
    ln_L(c);
    qd_layernorm_backward(c->dx, c->dw, c->db, c->r, c->x, c->w, c->mean, c->rstd, c->N, c->C);
}

static void op_layernorm(void) {
    enum { N = 3, C = 7 };
    double x[N * C], w[C], b[C], r[N * C], y[N * C], mean[N], rstd[N], dx[N * C], dw[C], db[C];
    lnctx c = {N, C, x, w, b, r, y, mean, rstd, dx, dw, db};
    fill(x, N * C, -2, 3), fill(w, C, 0.5, 1.5), fill(b, C, -0.5, 0.5), fill(r, N * C, -1, 1);
    gparam ps[] = {{x, dx, N * C, "x"}, {w, dw, C, "w"}, {b, db, C, "b"}};
    double e = gradcheck(&c, ln_L, ln_G, ps, 3, 1);
    CHECK(e <= 1, "layernorm error ratio %g", e);
}

static double lin_L(void *c_) {
    opctx *c = c_;
    qd_linear_forward(c->y, c->x, c->w, c->b, c->N, c->C, c->OC);
    return dotr(c->y, c->r, (size_t)c->N * c->OC);
}
static void lin_G(void *c_) {
    opctx *c = c_;
    lin_L(c);
    qd_linear_backward(c->dx, c->dw, c->db, c->r, c->x, c->w, c->N, c->C, c->OC);
}

static void op_linear(void) {
    enum { N = 4, C = 5, OC = 6 };
    double x[N * C], w[OC * C], b[OC], r[N * OC], y[N * OC], dx[N * C], dw[OC * C], db[OC];
    opctx c = {.N = N, .C = C, .OC = OC, .x = x, .w = w, .b = b, .r = r, .y = y, .dx = dx,
               .dw = dw, .db = db};
    fill(x, N * C, -1, 1), fill(w, OC * C, -1, 1), fill(b, OC, -1, 1), fill(r, N * OC, -1, 1);
    gparam ps[] = {{x, dx, N * C, "x"}, {w, dw, OC * C, "W"}, {b, db, OC, "b"}};
    double e = gradcheck(&c, lin_L, lin_G, ps, 3, 1);
    CHECK(e <= 1, "linear error ratio %g", e);
}

/* RoPE (full and partial), SiLU, mul, add, tanh GELU, scale: one elementwise ctx */
typedef struct {
    int B, T, nh, hd;
    double *x, *x2, *r, *y, *dx, *dx2, *cs, *sn, *cs2, *sn2;
    int which, rot2;
} ewctx;

static double ew_L(void *c_) {
    ewctx *c = c_;
    size_t n = (size_t)c->B * c->T * c->nh * c->hd;
    switch (c->which) {
    case 0: qd_rope_forward(c->y, c->x, c->cs, c->sn, c->B, c->T, c->nh, c->hd, c->hd); break;
    case 1: qd_silu_forward(c->y, c->x, n); break;
    case 2: qd_mul_forward(c->y, c->x, c->x2, n); break;
    case 3: qd_add_forward(c->y, c->x, c->x2, n); break;
    case 4: qd_rope_forward(c->y, c->x, c->cs2, c->sn2, c->B, c->T, c->nh, c->hd, c->rot2); break;
    case 5: qd_gelu_forward(c->y, c->x, n); break;
    case 6: qd_scale_forward(c->y, c->x, 45.25, n); break;
    }
    return dotr(c->y, c->r, n);
}
static void ew_G(void *c_) {
    ewctx *c = c_;
    size_t n = (size_t)c->B * c->T * c->nh * c->hd;
    ew_L(c);
    switch (c->which) {
    case 0: qd_rope_backward(c->dx, c->r, c->cs, c->sn, c->B, c->T, c->nh, c->hd, c->hd); break;
    case 1: qd_silu_backward(c->dx, c->r, c->x, n); break;
    case 2: qd_mul_backward(c->dx, c->dx2, c->r, c->x, c->x2, n); break;
    case 3: qd_add_backward(c->dx, c->dx2, c->r, n); break;
    case 4: qd_rope_backward(c->dx, c->r, c->cs2, c->sn2, c->B, c->T, c->nh, c->hd, c->rot2); break;
    case 5: qd_gelu_backward(c->dx, c->r, c->x, n); break;
    case 6: qd_scale_backward(c->dx, c->r, 45.25, n); break;
    }
}

static void op_elementwise(void) {
    enum { B = 2, T = 5, NH = 3, HD = 6, N = B * T * NH * HD };
    enum { ROT2 = 4 }; /* partial rotary: 4 of the 6 dims of a head */
    static double x[N], x2[N], r[N], y[N], dx[N], dx2[N], cs[T * HD / 2], sn[T * HD / 2];
    static double cs2[T * ROT2 / 2], sn2[T * ROT2 / 2];
    qd_rope_table(cs, sn, T, HD, 10000.0f);
    qd_rope_table(cs2, sn2, T, ROT2, 10000.0f);
    ewctx c = {B, T, NH, HD, x, x2, r, y, dx, dx2, cs, sn, cs2, sn2, 0, ROT2};
    const char *names[] = {"rope", "silu", "mul", "add", "partial rope", "gelu_tanh", "scale"};
    for (int k = 0; k < 7; k++) {
        c.which = k;
        fill(x, N, -3, 3), fill(x2, N, -2, 2), fill(r, N, -1, 1);
        gparam ps[] = {{x, dx, N, "x"}, {x2, dx2, N, "x2"}};
        double e = gradcheck(&c, ew_L, ew_G, ps, k == 2 || k == 3 ? 2 : 1, 1);
        CHECK(e <= 1, "%s error ratio %g", names[k], e);
    }
    /* the partial rotation leaves dims ROT2.. of every head as they were */
    qd_rope_forward(y, x, cs2, sn2, B, T, NH, HD, ROT2);
    int kept = 1;
    for (int i = 0; i < N; i++)
        if (i % HD >= ROT2 && y[i] != x[i]) kept = 0;
    CHECK(kept, "partial rope changed an unrotated dim");
}

/* attention with GQA, with and without the score/prob quantizers */
typedef struct {
    int B, T, nh, nkv, hd, quant, fault;
    double *q, *k, *v, *r, *o, *S, *P, *dq, *dk, *dv, *scr;
    qd_aq sq, pq;
} atctx;

static double at_L(void *c_) {
    atctx *c = c_;
    size_t TT = (size_t)c->B * c->nh * c->T * c->T;
    size_t ps = qd_rctx_take(&g_rc, TT + 1), pp = qd_rctx_take(&g_rc, TT + 1);
    qd_attn_forward(c->o, c->S, c->P, c->q, c->k, c->v, c->B, c->T, c->nh, c->nkv, c->hd,
                    c->quant ? &c->sq : NULL, c->quant ? &c->pq : NULL, &g_rc, ps, pp, c->scr);
    return dotr(c->o, c->r, (size_t)c->B * c->T * c->nh * c->hd);
}
static void at_G(void *c_) {
    atctx *c = c_;
    size_t TT = (size_t)c->B * c->nh * c->T * c->T;
    at_L(c);
    qd_attn_backward(c->dq, c->dk, c->dv, c->r, c->S, c->P, c->q, c->k, c->v, c->B, c->T, c->nh,
                     c->nkv, c->hd, c->quant ? &c->sq : NULL, c->quant ? &c->pq : NULL, &g_rc,
                     0, TT + 1, c->scr, c->fault);
}

static double run_attn(int quant, int fault, int verbose) {
    enum { B = 2, T = 6, NH = 4, NKV = 2, HD = 4 };
    static double q[B * T * NH * HD], k[B * T * NKV * HD], v[B * T * NKV * HD], r[B * T * NH * HD];
    static double o[B * T * NH * HD], S[B * NH * T * T], P[B * NH * T * T];
    static double dq[B * T * NH * HD], dk[B * T * NKV * HD], dv[B * T * NKV * HD], scr[2 * T * T];
    double sp[4], gs[4];
    atctx c = {B, T, NH, NKV, HD, quant, fault, q, k, v, r, o, S, P, dq, dk, dv, scr,
               {0}, {0}};
    c.sq = (qd_aq){&sp[0], &sp[1], &gs[0], &gs[1], 8};
    c.pq = (qd_aq){&sp[2], &sp[3], &gs[2], &gs[3], 8};
    g_seed = 777;
    fill(q, sizeof q / sizeof *q, -2, 2), fill(k, sizeof k / sizeof *k, -2, 2);
    fill(v, sizeof v / sizeof *v, -1, 1), fill(r, sizeof r / sizeof *r, -1, 1);
    /* score range narrower than the data so some scores clamp; prob range [0, 0.9] */
    sp[0] = 3.0 / 255, sp[1] = 140.3, sp[2] = 0.9 / 255, sp[3] = 0.2;
    gparam ps[] = {{q, dq, sizeof q / sizeof *q, "q"}, {k, dk, sizeof k / sizeof *k, "k"},
                   {v, dv, sizeof v / sizeof *v, "v"}, {sp, gs, 4, "s/z score,prob"}};
    return gradcheck(&c, at_L, at_G, ps, quant ? 4 : 3, verbose);
}

static void op_attention(void) {
    double e = run_attn(0, 0, 1);
    CHECK(e <= 1, "attention error ratio %g", e);
    e = run_attn(1, 0, 1);
    CHECK(e <= 1, "attention with quantizers error ratio %g", e);
    e = run_attn(1, 3, 0);
    CHECK(e > 100, "broken softmax backward not detected (ratio %g)", e);
}

/* activation quantizer */
typedef struct {
    size_t n;
    double *x, *r, *y, *dx;
    qd_aq a;
    int fault;
} aqctx;

static double aq_L(void *c_) {
    aqctx *c = c_;
    size_t pos = qd_rctx_take(&g_rc, c->n + 1);
    qd_aq_forward(c->y, c->x, c->n, &c->a, &g_rc, pos);
    return dotr(c->y, c->r, c->n);
}
static void aq_G(void *c_) {
    aqctx *c = c_;
    aq_L(c);
    qd_aq_backward(c->dx, c->r, c->x, c->n, &c->a, &g_rc, 0, c->fault);
}

static void op_act_quant(void) {
    enum { N = 200 };
    double x[N], r[N], y[N], dx[N], sz[2], gsz[2];
    for (int bits = 8; bits <= 16; bits += 8) {
        for (int fault = 0; fault <= 2; fault += 2) {
            aqctx c = {N, x, r, y, dx, {&sz[0], &sz[1], &gsz[0], &gsz[1], bits}, fault};
            g_seed = 99 + bits;
            fill(x, N, -1.5, 2.5), fill(r, N, -1, 1);
            /* range [-1.2, 2.0]: some elements clamp at each end */
            double Q = (1 << bits) - 1;
            sz[0] = 3.2 / Q, sz[1] = 1.2 / sz[0] + 0.3;
            gparam ps[] = {{x, dx, N, "x"}, {sz, gsz, 2, "s,z"}};
            double e = gradcheck(&c, aq_L, aq_G, ps, 2, !fault);
            if (!fault)
                CHECK(e <= 1, "act quant %d-bit error ratio %g", bits, e);
            else
                CHECK(e > 100, "ignored STE clamp mask not detected (%d-bit, ratio %g)", bits, e);
        }
        /* an offset parameter past either end of [0, 2^b - 1]: the forward uses the clamped
         * offset (zero stays on the grid), so the raw offset's gradient is exactly 0 (its own
         * group, so that any nonzero analytic value fails) while x keeps its own (s is checked
         * in range above: here most elements clamp and its difference quotient is noise) */
        for (int side = 0; side < 2; side++) {
            aqctx c = {N, x, r, y, dx, {&sz[0], &sz[1], &gsz[0], &gsz[1], bits}, 0};
            g_seed = 7 + bits + side;
            fill(x, N, -1.5, 2.5), fill(r, N, -1, 1);
            double Q = (1 << bits) - 1;
            sz[0] = 3.2 / Q, sz[1] = side ? Q + 3.4 : -2.6;
            gparam ps[] = {{x, dx, N, "x"}, {&sz[1], &gsz[1], 1, "z"}};
            double e = gradcheck(&c, aq_L, aq_G, ps, 2, 1);
            CHECK(e <= 1 && gsz[1] == 0, "act quant %d-bit, offset %g outside: ratio %g, dz %g",
                  bits, sz[1], e, gsz[1]);
            double zero = 0, yz = 1;
            qd_aq_forward(&yz, &zero, 1, &c.a, NULL, 0);
            CHECK(yz == 0, "act quant %d-bit, offset %g: 0 -> %g", bits, sz[1], yz);
        }
    }
}

/* weight quantizer with LWC; LET weight transforms feeding it */
typedef struct {
    int rows, cols, fault, let;
    qd_wq_spec sp;
    double *w, *wt, *r, *y, *dw, *dwt, *gam, *bet, *dgam, *dbet, *c, *rr, *dc, *drr;
} wqctx;

static double wq_L(void *c_) {
    wqctx *c = c_;
    const double *w = c->w;
    if (c->let) {
        qd_let_weight_forward(c->wt, c->w, c->rows, c->cols, c->c, c->rr);
        w = c->wt;
    }
    size_t pos = qd_rctx_take(&g_rc, (size_t)c->rows * c->cols + c->rows);
    qd_wq_forward(c->y, w, c->rows, c->cols, c->sp, c->gam, c->bet, NULL, NULL, &g_rc, pos);
    return dotr(c->y, c->r, (size_t)c->rows * c->cols);
}
static void wq_G(void *c_) {
    wqctx *c = c_;
    wq_L(c);
    size_t n = (size_t)c->rows * c->cols;
    if (!c->let) {
        qd_wq_backward(c->dw, c->dgam, c->dbet, c->r, c->w, c->rows, c->cols, c->sp, c->gam,
                       c->bet, &g_rc, 0, c->fault);
        return;
    }
    memset(c->dwt, 0, n * sizeof(double));
    qd_wq_backward(c->dwt, c->dgam, c->dbet, c->r, c->wt, c->rows, c->cols, c->sp, c->gam,
                   c->bet, &g_rc, 0, c->fault);
    qd_let_weight_backward(c->dc, c->drr, c->dwt, c->w, c->rows, c->cols, c->c, c->rr);
}

static double run_wq(qd_wq_spec sp, int lwc, int let, int fault, int verbose) {
    enum { R = 6, C = 9, N = R * C };
    double w[N], wt[N], r[N], y[N], dw[N], dwt[N], gam[R], bet[R], dgam[R], dbet[R];
    double cc[C], rr[R], dc[C], drr[R];
    wqctx c = {R, C, fault, let, sp, w, wt, r, y, dw, dwt, lwc ? gam : NULL, lwc ? bet : NULL,
               dgam, dbet, cc, rr, dc, drr};
    g_seed = 4242 + sp.bits * 10 + sp.sym * 3 + sp.per_channel;
    fill(w, N, -1, 1), fill(r, N, -1, 1), fill(gam, R, 0.5, 3), fill(bet, R, 0.5, 3);
    fill(cc, C, 0.5, 2), fill(rr, R, 0.5, 2);
    gparam ps[4];
    int np = 0;
    if (let) {
        ps[np++] = (gparam){cc, dc, C, "LET cols"};
        ps[np++] = (gparam){rr, drr, R, "LET rows"};
    } else {
        ps[np++] = (gparam){w, dw, N, "W"};
    }
    int ng = sp.per_channel ? R : 1;
    if (lwc) {
        ps[np++] = (gparam){gam, dgam, (size_t)ng, "gamma"};
        if (!sp.sym) ps[np++] = (gparam){bet, dbet, (size_t)ng, "beta"};
    }
    return gradcheck(&c, wq_L, wq_G, ps, np, verbose);
}

static void op_weight_quant(void) {
    qd_wq_spec specs[] = {{8, 0, 0}, {8, 0, 1}, {4, 1, 1}, {4, 1, 0}, {16, 0, 0}};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++)
        for (int lwc = 0; lwc <= 1; lwc++)
            for (int let = 0; let <= 1; let++) {
                double e = run_wq(specs[i], lwc, let, 0, 1);
                CHECK(e <= 1, "wq %d-bit sym %d per_channel %d lwc %d let %d: ratio %g",
                      specs[i].bits, specs[i].sym, specs[i].per_channel, lwc, let, e);
            }
    /* dropping the gradient through max/min must be caught when it matters: LET */
    double e = run_wq((qd_wq_spec){8, 0, 0}, 1, 1, 1, 0);
    CHECK(e > 100, "dropped range gradient not detected (ratio %g)", e);
}

typedef struct {
    size_t n;
    double *v, *s, *r, *y, *ds;
} dvctx;
static double dv_L(void *c_) {
    dvctx *c = c_;
    qd_let_div_forward(c->y, c->v, c->s, c->n);
    return dotr(c->y, c->r, c->n);
}
static void dv_G(void *c_) {
    dvctx *c = c_;
    dv_L(c);
    qd_let_div_backward(c->ds, c->r, c->v, c->s, c->n);
}

static void op_let_div(void) {
    enum { N = 10 };
    double v[N], s[N], r[N], y[N], ds[N];
    fill(v, N, -2, 2), fill(s, N, -2, 2), fill(r, N, -1, 1);
    s[3] = 0.005; /* below the 1e-2 floor: gradient 0, function flat */
    dvctx c = {N, v, s, r, y, ds};
    gparam ps[] = {{s, ds, N, "s"}};
    double e = gradcheck(&c, dv_L, dv_G, ps, 1, 1);
    CHECK(e <= 1, "LET div error ratio %g", e);
    CHECK(ds[3] == 0, "clamped LET scale got gradient %g", ds[3]);
}

/* ------------------------------------------------------------------ whole 2-layer model */

typedef struct {
    qd_qsim *q;
    int B, T;
    double *x0, *tgt, *out, *dout;
} mctx;

static double m_L(void *c_) {
    mctx *c = c_;
    g_rc.cursor = 0;
    c->q->rc = g_rc;
    qd_qsim_forward_blocks(c->q, c->x0, c->out, c->B, c->T);
    g_rc.cursor = c->q->rc.cursor;
    size_t n = (size_t)c->B * c->T * c->q->cfg.dim;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (c->out[i] - c->tgt[i]) * (c->out[i] - c->tgt[i]);
    return s / n;
}
static void m_G(void *c_) {
    mctx *c = c_;
    qd_qsim_zero_grad(c->q);
    m_L(c);
    size_t n = (size_t)c->B * c->T * c->q->cfg.dim;
    for (size_t i = 0; i < n; i++) c->dout[i] = 2 * (c->out[i] - c->tgt[i]) / n;
    c->q->rc = g_rc;
    qd_qsim_backward_blocks(c->q, c->dout);
}

/* Builds a 2-layer simulation at a generic point: random LET scales and clipping logits,
 * activation ranges from an FP pass then narrowed/shifted so that clamping happens. */
static qd_qsim *model_sim(qd_config cfg, int wbits, qd_model **mout, mctx *c) {
    qd_err err = {{0}};
    qd_model *m = synth_model(&cfg, 5, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return NULL;
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = wbits, o.Bmax = c->B, o.Tmax = c->T;
    qd_qsim *q = qd_qsim_new(m, &o, &err);
    CHECK(q != NULL, "%s", err.msg);
    if (!q) return NULL;
    g_seed = 31337;
    size_t nd = (size_t)c->B * c->T * cfg.dim;
    c->x0 = malloc(nd * sizeof(double)), c->tgt = malloc(nd * sizeof(double));
    c->out = malloc(nd * sizeof(double)), c->dout = malloc(nd * sizeof(double));
    fill(c->x0, nd, -1, 1), fill(c->tgt, nd, -1, 1);
    /* statistics: quantizers off, identity LET */
    qd_qstats *st = qd_qstats_new(&cfg);
    q->stats = st, q->aq_on = q->wq_on = 0;
    qd_qsim_forward_blocks(q, c->x0, c->out, c->B, c->T);
    q->stats = NULL, q->aq_on = q->wq_on = 1;
    qd_qsim_init_ranges(q, st);
    qd_qstats_free(st);
    for (size_t i = q->grp_off[QD_GRP_LET]; i < q->grp_off[QD_GRP_LET + 1]; i++)
        q->p[i] = 0.6 + 0.8 * (urand() + 1) / 2;
    for (size_t i = q->grp_off[QD_GRP_LWC]; i < q->grp_off[QD_GRP_LWC + 1]; i++)
        q->p[i] = 0.5 + 2.5 * (urand() + 1) / 2;
    /* ranges: scale x [0.7, 1.0], offset shifted by up to 2% of the grid */
    for (size_t i = q->grp_off[QD_GRP_LRL]; i < q->grp_off[QD_GRP_LRL + 1]; i += 2) {
        q->p[i] *= 0.7 + 0.3 * (urand() + 1) / 2;
        q->p[i + 1] += 0.37 + 0.02 * q->p[i + 1] * urand();
    }
    c->q = q;
    *mout = m;
    return q;
}

static const char *grp_names[QD_GRP_COUNT] = {"LET", "LWC", "LRL"};

static double model_check(mctx *c, int verbose) {
    qd_qsim *q = c->q;
    gparam ps[QD_GRP_COUNT];
    for (int k = 0; k < QD_GRP_COUNT; k++)
        ps[k] = (gparam){q->p + q->grp_off[k], q->g + q->grp_off[k],
                         q->grp_off[k + 1] - q->grp_off[k], grp_names[k]};
    return gradcheck(c, m_L, m_G, ps, QD_GRP_COUNT, verbose);
}

static void free_mctx(mctx *c, qd_model *m) {
    qd_qsim_free(c->q);
    qd_model_free(m);
    free(c->x0), free(c->tgt), free(c->out), free(c->dout);
}

static void whole_model(qd_config cfg, int wbits, int faults) {
    mctx c = {.B = 2, .T = 5};
    qd_model *m = NULL;
    if (!model_sim(cfg, wbits, &m, &c)) return;
    qd_qsim *q = c.q;
    /* the replayed base point must reproduce the plain forward exactly */
    g_rc.mode = QD_ROUND_OFF;
    double l0 = m_L(&c);
    g_rc.mode = QD_ROUND_RECORD;
    double l1 = m_L(&c);
    g_rc.mode = QD_ROUND_REPLAY;
    double l2 = m_L(&c);
    g_rc.mode = QD_ROUND_OFF;
    CHECK(l0 == l1 && fabs(l2 - l0) <= 1e-12 * fabs(l0), "replay changes the loss: %.17g %.17g %.17g", l0, l1, l2);
    double e = model_check(&c, 1);
    printf("  2-layer model wbits %d kv %d/%d: worst error ratio %.3g (<= 1 passes)\n", wbits,
           cfg.n_kv_heads, cfg.n_heads, e);
    CHECK(e <= 1, "2-layer model (wbits %d, kv %d/%d): error ratio %g", wbits, cfg.n_kv_heads,
          cfg.n_heads, e);
    /* every group must actually receive gradient */
    for (int k = 0; k < QD_GRP_COUNT; k++) {
        double s = 0;
        for (size_t i = q->grp_off[k]; i < q->grp_off[k + 1]; i++) s += fabs(q->g[i]);
        CHECK(s > 0, "group %s got no gradient", grp_names[k]);
    }
    if (faults) {
        for (int f = 1; f <= 4; f++) {
            q->fault = f;
            double ef = model_check(&c, 0);
            printf("  fault %d: ratio %.3g (must be > 10)\n", f, ef);
            CHECK(ef > 10, "fault %d in a backward not detected by the model check (ratio %g)", f,
                  ef);
        }
        q->fault = 0;
    }
    free_mctx(&c, m);
}

static void model_mha_w8_bias(void) {
    /* MHA so v->o LET is on; q/k/v biases so the v->o bias path is checked */
    qd_config cfg = synth_config(16, 40, 2, 4, 4, 32, 16);
    cfg.qkv_bias = 1;
    whole_model(cfg, 8, 1);
}

static void model_gqa_w4(void) {
    qd_config cfg = synth_config(16, 24, 2, 4, 2, 32, 16);
    whole_model(cfg, 4, 0);
}

/* Gemma: tanh-GELU GeGLU, head_dim 6 with 4 heads on dim 16, MQA (v->o LET off) */
static void model_gemma_w8(void) {
    qd_config cfg = synth_config(16, 24, 2, 4, 1, 32, 16);
    synth_family(&cfg, QD_FAMILY_GEMMA);
    cfg.head_dim = 6;
    whole_model(cfg, 8, 0);
}

/* StableLM-2: LayerNorms with biases (their LET path), half of each head rotated, q/k/v
 * biases, MHA so v->o LET is on; with the fault cases */
static void model_stablelm_w8(void) {
    qd_config cfg = synth_config(16, 40, 2, 2, 2, 32, 16);
    synth_family(&cfg, QD_FAMILY_STABLELM);
    cfg.qkv_bias = 1;
    whole_model(cfg, 8, 1);
}

static void model_stablelm_w4_gqa(void) {
    qd_config cfg = synth_config(16, 24, 2, 4, 2, 32, 16);
    synth_family(&cfg, QD_FAMILY_STABLELM);
    whole_model(cfg, 4, 0);
}

/* Gradients, output and recorded rounding of one forward/backward at each thread count. */
static void threads_same_bits(qd_config cfg, int wbits) {
    mctx c = {.B = 2, .T = 5};
    qd_model *m = NULL;
    if (!model_sim(cfg, wbits, &m, &c)) return;
    qd_qsim *q = c.q;
    size_t nd = (size_t)c.B * c.T * cfg.dim;
    double *g1 = malloc(sizeof(double) * q->n_params), *o1 = malloc(sizeof(double) * nd);
    double *r1 = NULL;
    size_t nr = 0;
    qd_err err = {{0}};
    const int threads[] = {1, 2, 3};
    for (int t = 0; t < 3; t++) {
        CHECK(qd_pool_set_default(threads[t], &err) == QD_OK, "%s", err.msg);
        g_rc.mode = QD_ROUND_RECORD;
        m_G(&c);
        g_rc.mode = QD_ROUND_OFF;
        if (t == 0) {
            memcpy(g1, q->g, sizeof(double) * q->n_params);
            memcpy(o1, c.out, sizeof(double) * nd);
            nr = q->rc.cursor;
            r1 = malloc(sizeof(double) * (nr ? nr : 1));
            memcpy(r1, g_rc.res, sizeof(double) * nr);
            continue;
        }
        CHECK(!memcmp(g1, q->g, sizeof(double) * q->n_params),
              "wbits %d: gradients differ at %d threads", wbits, threads[t]);
        CHECK(!memcmp(o1, c.out, sizeof(double) * nd), "wbits %d: output differs at %d threads",
              wbits, threads[t]);
        CHECK(q->rc.cursor == nr && !memcmp(r1, g_rc.res, sizeof(double) * nr),
              "wbits %d: recorded residuals differ at %d threads", wbits, threads[t]);
    }
    CHECK(qd_pool_set_default(3, &err) == QD_OK, "%s", err.msg);
    free(g1), free(o1), free(r1);
    free_mctx(&c, m);
}

static void model_threads_same_bits(void) {
    qd_config cfg = synth_config(16, 40, 2, 4, 4, 32, 16);
    cfg.qkv_bias = 1;
    threads_same_bits(cfg, 8);
    qd_config g = synth_config(16, 24, 2, 4, 2, 32, 16);
    synth_family(&g, QD_FAMILY_STABLELM);
    threads_same_bits(g, 4);
}

int main(void) {
    qd_err perr = {{0}};
    if (qd_pool_set_default(3, &perr)) fprintf(stderr, "%s\n", perr.msg);
    g_rc.cap = 1 << 22;
    g_rc.res = malloc(g_rc.cap * sizeof(double));
    g_rc.reg = malloc(g_rc.cap);
    RUN(op_rmsnorm);
    RUN(op_layernorm);
    RUN(op_linear);
    RUN(op_elementwise);
    RUN(op_attention);
    RUN(op_act_quant);
    RUN(op_weight_quant);
    RUN(op_let_div);
    RUN(model_mha_w8_bias);
    RUN(model_gqa_w4);
    RUN(model_gemma_w8);
    RUN(model_stablelm_w8);
    RUN(model_stablelm_w4_gqa);
    RUN(model_threads_same_bits);
    free(g_rc.res);
    free(g_rc.reg);
    return CHECK_DONE();
}
